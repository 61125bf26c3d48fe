"""Frechet distance as pytorch-fid computes it (scipy.linalg.sqrtm), for tests/eval.rs."""
import sys

import numpy as np
from scipy import linalg

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from meanflow_ref import load_file  # noqa: E402  (safetensors, or the built-in reader)

s = {k: v.numpy() for k, v in load_file(sys.argv[1]).items()}
mu1, mu2, s1, s2 = s["mu1"], s["mu2"], s["sigma1"], s["sigma2"]
covmean, _ = linalg.sqrtm(s1.dot(s2), disp=False)
if not np.isfinite(covmean).all():
    off = np.eye(s1.shape[0]) * 1e-6
    covmean = linalg.sqrtm((s1 + off).dot(s2 + off))
covmean = covmean.real
diff = mu1 - mu2
print(repr(float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))))
