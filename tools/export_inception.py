#!/usr/bin/env python3
"""Export the standard FID Inception-v3 feature extractor as TorchScript for `meanflow eval --fid`.

Run on a machine that has the FID Inception weights (they are not in this repository and
cannot be downloaded on the development machine, so this script is untested here). Two
sources, both the TensorFlow "2015-12-05" Inception graph used by every published FID:

  EDM / StyleGAN detector (recommended; what EDM's fid.py and the MeanFlow paper's
  numbers use):
    python tools/export_inception.py edm --pkl inception-2015-12-05.pkl --out inception.pt
    # the .pkl is https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/inception-2015-12-05.pkl

  pytorch-fid (pip install pytorch-fid; its port differs from TF FID in the last digits):
    python tools/export_inception.py pytorch-fid [--weights pt_inception-2015-12-05-6726825d.pth] --out inception.pt
    # without --weights, pytorch-fid downloads them from its GitHub release

The saved module's contract (what src/eval/inception.rs relies on):
  input   torch.uint8 [B, 3, H, W], values 0..255, RGB, any H and W
  inside  resize to 299x299 (bilinear) and the network's own normalisation
  output  torch.float32 [B, 2048] pool3 features

meanflow feeds generated images as EDM does: (x * 127.5 + 128).clip(0, 255).to(torch.uint8)
for x in [-1, 1], one-channel images repeated to three.
"""
import argparse
import pickle

import torch
import torch.nn.functional as F


class EdmDetector(torch.nn.Module):
    """EDM's detector already takes uint8 NCHW at any size and resizes to 299 itself."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, return_features=True)


class PytorchFidDetector(torch.nn.Module):
    """pytorch-fid's InceptionV3 takes float [0, 1]; it reads PNGs with ToTensor (x / 255)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32) / 255.0
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        f = self.net(x)[0]  # [B, 2048, 1, 1]; resize_input=False: resized above
        return f.flatten(1)


def edm(args):
    with open(args.pkl, "rb") as f:
        net = pickle.load(f)
    module = EdmDetector(net).eval()
    try:
        return torch.jit.script(module)
    except Exception as e:  # the pickled detector is itself TorchScript; tracing also works
        print(f"torch.jit.script failed ({e}); tracing instead")
        return torch.jit.trace(module, torch.zeros(2, 3, 256, 256, dtype=torch.uint8))


def pytorch_fid(args):
    import pytorch_fid.inception as pfi

    if args.weights:
        pfi.load_state_dict_from_url = lambda *a, **k: torch.load(args.weights, map_location="cpu")
    net = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=False, normalize_input=True)
    module = PytorchFidDetector(net.eval()).eval()
    # Tracing records the fixed 299x299 target size, so any input size works.
    return torch.jit.trace(module, torch.zeros(2, 3, 64, 64, dtype=torch.uint8))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", choices=["edm", "pytorch-fid"])
    p.add_argument("--pkl", help="EDM/StyleGAN inception-2015-12-05.pkl (source edm)")
    p.add_argument("--weights", help="pt_inception-2015-12-05-*.pth (source pytorch-fid; optional)")
    p.add_argument("--out", required=True, help="TorchScript file to write")
    args = p.parse_args()
    if args.source == "edm" and not args.pkl:
        p.error("edm needs --pkl")
    with torch.no_grad():
        module = edm(args) if args.source == "edm" else pytorch_fid(args)
        # Check the contract on two sizes before saving.
        for size in (32, 299):
            x = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8)
            f = module(x)
            assert f.shape == (3, 2048), f"features for {tuple(x.shape)} have shape {tuple(f.shape)}"
    module.save(args.out)
    print(f"wrote {args.out}: uint8 [B, 3, H, W] -> float [B, 2048]")


if __name__ == "__main__":
    main()
