#!/usr/bin/env python3
"""Write pre-encoded latents in meanflow's `imagenet_latents` layout.

The VAE is outside meanflow. Encode the images with any encoder, then hand its raw output
(NOT multiplied by the scale factor: meanflow applies (latent - shift) * scale_factor when
it loads the set) to `LatentWriter`, or save it as two .npy files and run this script.

Layout written to OUT:
    manifest.json          {"format": "meanflow-latents/1", "vae", "scale_factor", "shift",
                            "posterior", "latent_shape", "image_size", "num_classes", "flip",
                            "count", "shards": [{"file", "count"} or {"latents", "labels", "count"}]}
    train_00000.safetensors  tensors "latents" [n, C, H, W] (float16/float32) and "labels" [n] (int64)
    ... or train_00000_latents.npy + train_00000_labels.npy with --format npy

ImageNet 256 with the SD VAE ft-mse, as the MeanFlow reference does it (ADM center crop,
no flip, scale factor 0.18215, no shift), on a machine with diffusers and torchvision:

    import numpy as np, torch
    from diffusers.models import AutoencoderKL
    from torchvision import datasets, transforms
    from PIL import Image

    def center_crop_arr(img, size):                       # ADM / DiT / MeanFlow preprocessing
        while min(*img.size) >= 2 * size:
            img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
        scale = size / min(*img.size)
        img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
        a = np.array(img); y, x = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
        return Image.fromarray(a[y:y + size, x:x + size])

    tf = transforms.Compose([transforms.Lambda(lambda im: center_crop_arr(im.convert("RGB"), 256)),
                             transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)])
    ds = datasets.ImageFolder("ILSVRC2012/train", transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=128, num_workers=8)
    vae = AutoencoderKL.from_pretrained("stabilityai/sd-vae-ft-mse").cuda().eval()
    with LatentWriter("imagenet256-sd-vae-ft-mse", vae="stabilityai/sd-vae-ft-mse",
                      scale_factor=0.18215, latent_shape=(4, 32, 32), image_size=256,
                      num_classes=1000, posterior="mean") as w:
        for x, y in loader:
            with torch.no_grad():
                w.add(vae.encode(x.cuda()).latent_dist.mean.cpu().numpy(), y.numpy())

The MeanFlow JAX code caches the posterior's mean and std and draws a fresh sample every
step; to do the same, pass `posterior="moments"` and add
`np.concatenate([dist.mean, dist.std], 1)` (2C channels) for each batch, where
`dist = vae.encode(x).latent_dist`.

From arrays already on disk (any encoder):
    python tools/encode_imagenet_latents.py --latents lat.npy --labels lab.npy --out OUT \\
        --vae stabilityai/sd-vae-ft-mse --scale-factor 0.18215 --image-size 256 --num-classes 1000
Random latents, for tests:
    python tools/encode_imagenet_latents.py --random 100 --out OUT --num-classes 10

Needs numpy, and the safetensors package for the default format.
"""
import argparse
import json
import os

import numpy as np

FORMAT = "meanflow-latents/1"


class LatentWriter:
    """Collects (latents, labels) batches and writes shards of `shard_size` plus the manifest."""

    def __init__(self, out_dir, vae, scale_factor, latent_shape, image_size, num_classes, shift=0.0,
                 posterior="mean", flip="none", shard_size=10000, fmt="safetensors", dtype="float16",
                 prefix="train"):
        assert fmt in ("safetensors", "npy"), fmt
        assert posterior in ("mean", "sample", "moments"), posterior
        assert flip in ("none", "both"), flip
        self.out_dir, self.fmt, self.prefix = out_dir, fmt, prefix
        self.dtype = np.dtype(dtype)
        self.shard_size = int(shard_size)
        self.meta = dict(format=FORMAT, vae=vae, scale_factor=float(scale_factor), shift=float(shift),
                         posterior=posterior, latent_shape=[int(d) for d in latent_shape],
                         image_size=int(image_size), num_classes=int(num_classes), flip=flip)
        self.shards, self.count = [], 0
        self.buf_x, self.buf_y, self.buffered = [], [], 0
        os.makedirs(out_dir, exist_ok=True)

    def add(self, latents, labels):
        latents, labels = np.asarray(latents), np.asarray(labels).astype(np.int64).reshape(-1)
        c, h, w = self.meta["latent_shape"]
        want = (2 * c if self.meta["posterior"] == "moments" else c, h, w)
        if latents.shape[1:] != want or latents.shape[0] != labels.shape[0]:
            raise ValueError(f"latents {latents.shape} and labels {labels.shape} do not match [n, *{want}] and [n]")
        if labels.size and (labels.min() < 0 or labels.max() >= self.meta["num_classes"]):
            raise ValueError(f"labels outside 0..{self.meta['num_classes']}")
        self.buf_x.append(latents.astype(self.dtype))
        self.buf_y.append(labels)
        self.buffered += labels.shape[0]
        while self.buffered >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, n):
        x, y = np.concatenate(self.buf_x), np.concatenate(self.buf_y)
        self.buf_x, self.buf_y = [x[n:]], [y[n:]]
        self.buffered = x.shape[0] - n
        x, y = np.ascontiguousarray(x[:n]), np.ascontiguousarray(y[:n])
        name = f"{self.prefix}_{len(self.shards):05d}"
        if self.fmt == "safetensors":
            from safetensors.numpy import save_file
            save_file({"latents": x, "labels": y}, os.path.join(self.out_dir, name + ".safetensors"))
            self.shards.append({"file": name + ".safetensors", "count": n})
        else:
            np.save(os.path.join(self.out_dir, name + "_latents.npy"), x)
            np.save(os.path.join(self.out_dir, name + "_labels.npy"), y)
            self.shards.append({"latents": name + "_latents.npy", "labels": name + "_labels.npy", "count": n})
        self.count += n

    def close(self):
        if self.buffered:
            self._flush(self.buffered)
        manifest = dict(self.meta, count=self.count, shards=self.shards)
        with open(os.path.join(self.out_dir, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)
        return manifest

    def __enter__(self):
        return self

    def __exit__(self, kind, *_):
        if kind is None:
            self.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--latents", help=".npy of raw encoder outputs [N, C, H, W] (with --labels)")
    src.add_argument("--random", type=int, metavar="N", help="N random latents (tests)")
    ap.add_argument("--labels", help=".npy of int labels [N]")
    ap.add_argument("--out", required=True)
    ap.add_argument("--vae", default="stabilityai/sd-vae-ft-mse")
    ap.add_argument("--scale-factor", type=float, default=0.18215)
    ap.add_argument("--shift", type=float, default=0.0)
    ap.add_argument("--posterior", choices=["mean", "sample", "moments"], default="mean",
                    help="'moments': the arrays hold [mean, std] along channels (2C), sampled afresh each step")
    ap.add_argument("--flip", choices=["none", "both"], default="none",
                    help="'both': the arrays also hold the latents of the flipped images")
    ap.add_argument("--latent-shape", type=int, nargs=3, default=[4, 32, 32])
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--shard-size", type=int, default=10000)
    ap.add_argument("--format", choices=["safetensors", "npy"], default="safetensors")
    ap.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    w = LatentWriter(a.out, a.vae, a.scale_factor, a.latent_shape, a.image_size, a.num_classes, shift=a.shift,
                     posterior=a.posterior, flip=a.flip, shard_size=a.shard_size, fmt=a.format, dtype=a.dtype)
    if a.random is not None:
        rng = np.random.default_rng(a.seed)
        c = a.latent_shape[0] * (2 if a.posterior == "moments" else 1)
        x = rng.standard_normal((a.random, c, *a.latent_shape[1:]), dtype=np.float32) / a.scale_factor
        if a.posterior == "moments":
            x[:, c // 2:] = np.abs(x[:, c // 2:]) * 0.1  # a positive std
        y = rng.integers(0, a.num_classes, a.random)
        w.add(x, y)
    else:
        if not a.labels:
            ap.error("--latents needs --labels")
        x, y = np.load(a.latents, mmap_mode="r"), np.load(a.labels)
        for i in range(0, x.shape[0], a.shard_size):
            w.add(np.asarray(x[i:i + a.shard_size]), y[i:i + a.shard_size])
    m = w.close()
    print(f"wrote {m['count']} latents in {len(m['shards'])} shard(s) to {a.out}")


if __name__ == "__main__":
    main()
