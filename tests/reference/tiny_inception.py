"""A stand-in for the FID Inception extractor, for tests/fid.rs: the same TorchScript
contract as tools/export_inception.py (uint8 [B, 3, H, W] at any size -> float [B, D]),
with D = 8 and fixed random weights: resize to 299x299 bilinear, normalise to [-1, 1],
a strided conv, ReLU, global average pool.

    python tests/reference/tiny_inception.py OUT.pt
"""
import sys

import torch
import torch.nn.functional as F


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("w", torch.randn(8, 3, 13, 13, generator=g) * 0.05)
        self.register_buffer("b", torch.randn(8, generator=g) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.uint8
        x = x.to(torch.float32)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = x / 127.5 - 1.0
        h = torch.relu(F.conv2d(x, self.w, self.b, stride=13))  # [B, 8, 23, 23]
        return F.adaptive_avg_pool2d(h, 1).flatten(1)  # [B, 8]


if __name__ == "__main__":
    torch.jit.script(Tiny()).save(sys.argv[1])
