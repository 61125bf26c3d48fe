//! Datasets. Held in memory as tensors (IDX, CIFAR-10, latents): images `[N, C, H, W]`
//! (pixels scaled to [-1, 1], or scaled latents) and labels `[N]` (int64). Read per batch
//! on background threads (an image folder): see `prefetch`.
pub mod cifar10;
pub mod idx;
pub mod image_folder;
pub mod latents;
pub mod npy;
pub mod prefetch;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetKind {
    FashionMnist,
    Mnist,
    /// CIFAR-10 binary batches.
    Cifar10,
    /// Pre-encoded latents with a manifest (`latents`).
    ImagenetLatents,
    /// One sub-folder of PNG images per class (`image_folder`).
    ImageFolder,
}

impl DatasetKind {
    /// Held in memory (else read per batch by the prefetch threads).
    pub fn in_memory(self) -> bool {
        !matches!(self, DatasetKind::ImageFolder)
    }
    /// Has a train and a test split (`data.split`).
    pub fn has_splits(self) -> bool {
        matches!(self, DatasetKind::FashionMnist | DatasetKind::Mnist | DatasetKind::Cifar10)
    }
    /// Classes of the fixed data sets (10); 0 for those that read theirs from the files
    /// (imagenet_latents: the manifest; image_folder: the sub-folders).
    pub fn num_classes(self) -> i64 {
        match self {
            DatasetKind::FashionMnist | DatasetKind::Mnist | DatasetKind::Cifar10 => 10,
            DatasetKind::ImagenetLatents | DatasetKind::ImageFolder => 0,
        }
    }
    /// Class names of the fixed data sets; empty for the others.
    pub fn class_names(self) -> &'static [&'static str] {
        match self {
            DatasetKind::FashionMnist => &[
                "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
            ],
            DatasetKind::Mnist => &["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
            DatasetKind::Cifar10 => &cifar10::CLASS_NAMES,
            DatasetKind::ImagenetLatents | DatasetKind::ImageFolder => &[],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    #[default]
    Train,
    Test,
}

#[derive(Debug)]
pub struct Dataset {
    pub images: Tensor,
    pub labels: Tensor,
    pub num_classes: i64,
}

impl Dataset {
    pub fn len(&self) -> i64 {
        self.labels.size()[0]
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn to_device(self, device: Device) -> Self {
        Dataset { images: self.images.to_device(device), labels: self.labels.to_device(device), num_classes: self.num_classes }
    }
}

/// The file of `stem` under `root`: `stem.gz` or plain `stem`.
fn find(root: &Path, stem: &str) -> Result<PathBuf> {
    for name in [format!("{stem}.gz"), stem.to_string()] {
        let p = root.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::file(
        root.join(format!("{stem}.gz")),
        format!(
            "not found (nor {stem}); set data.root to a folder with the IDX files \
             (Debian: apt-get install dataset-fashion-mnist puts them in /usr/share/datasets/fashion-mnist)"
        ),
    ))
}

/// Loads MNIST or Fashion-MNIST (same IDX layout) from `root`.
pub fn load_mnist_like(kind: DatasetKind, root: &Path, split: Split) -> Result<Dataset> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let img_path = find(root, &format!("{prefix}-images-idx3-ubyte"))?;
    let lbl_path = find(root, &format!("{prefix}-labels-idx1-ubyte"))?;
    let imgs = idx::read_idx(&img_path, 3)?;
    let lbls = idx::read_idx(&lbl_path, 1)?;
    let (n, h, w) = (imgs.dims[0], imgs.dims[1], imgs.dims[2]);
    if lbls.dims[0] != n {
        return Err(Error::file(&lbl_path, format!("{} labels but {} has {n} images", lbls.dims[0], img_path.display())));
    }
    let num_classes = kind.num_classes();
    if let Some((i, l)) = lbls.data.iter().enumerate().find(|(_, l)| **l as i64 >= num_classes) {
        return Err(Error::file(&lbl_path, format!("label {l} at index {i} is outside 0..{num_classes}")));
    }
    let images = Tensor::from_slice(&imgs.data)
        .view([n as i64, 1, h as i64, w as i64])
        .to_kind(Kind::Float)
        / 127.5
        - 1.0;
    let labels = Tensor::from_slice(&lbls.data).to_kind(Kind::Int64);
    Ok(Dataset { images, labels, num_classes })
}
