"""Scoring reconstructions against references and against the measured k-space."""
from __future__ import annotations

import numpy as np
import torch

from .coils import calibration_images, espirit_maps
from .metrics import frame_metrics
from .operators import RadialSense


def body_mask(reference: np.ndarray, fraction: float = 0.05) -> np.ndarray:
    """Region of interest ``(Y, X)``: where the time-averaged reference magnitude exceeds
    ``fraction`` of its maximum."""
    mean = np.abs(reference).mean(0)
    return mean > fraction * mean.max()


def data_consistency(images: np.ndarray, kspace: np.ndarray, coords: np.ndarray,
                     maps: np.ndarray | None = None) -> np.ndarray:
    """Relative residual ``||A x - y|| / ||y||`` per frame (unweighted operator).

    images ``(T, Y, X)``, kspace ``(T, C, S, R)``, coords ``(T, S, R, 2)``. Each image is
    first given the complex scale that fits the data best (reconstructions from other
    pipelines carry arbitrary scale). Coil maps: ESPIRiT from all spokes if not given.
    """
    t, c, s, r = kspace.shape
    shape = images.shape[-2:]
    if maps is None:
        maps = espirit_maps(calibration_images(kspace.transpose(0, 2, 1, 3).reshape(-1, c, r),
                                               coords.reshape(-1, r, 2), shape))
    op = RadialSense(torch.from_numpy(coords.reshape(t, -1, 2)), torch.from_numpy(maps), toeplitz=False)
    y = torch.from_numpy(kspace.reshape(t, c, -1))
    ax = op.forward(torch.from_numpy(images.astype(np.complex64)))
    alpha = (ax.conj() * y).flatten(1).sum(1) / (ax.abs() ** 2).flatten(1).sum(1).clamp_min(1e-30)
    res = (alpha[:, None, None] * ax - y).flatten(1).norm(dim=1) / y.flatten(1).norm(dim=1)
    return res.numpy()


def score(images: np.ndarray, reference: np.ndarray, roi: bool = False) -> dict:
    """PSNR/SSIM/NRMSE per frame and mean; ``roi`` restricts them to the body mask."""
    n = min(len(images), len(reference))
    mask = body_mask(reference[:n]) if roi else None
    return frame_metrics(images[:n], reference[:n], mask)
