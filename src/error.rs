//! Typed errors of the library. Each names what it is about: a file, a config key, a shape.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },

    #[error("config {file}: {key}: {msg}")]
    Config { file: String, key: String, msg: String },

    #[error("forward-mode AD: {0}")]
    Jvp(String),

    #[error("libtorch: {0}")]
    Native(String),

    #[error("shape: {0}")]
    Shape(String),

    #[error("training stopped at step {step}: {msg}")]
    NonFinite { step: u64, msg: String },

    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },

    #[error(transparent)]
    Torch(#[from] tch::TchError),

    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn file(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::File { path: path.into(), msg: msg.into() }
    }
    pub fn config(file: impl Into<String>, key: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config { file: file.into(), key: key.into(), msg: msg.into() }
    }
}
