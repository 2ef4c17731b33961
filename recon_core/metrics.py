"""Image quality and timing metrics.

Quality is computed on magnitude images after a least-squares intensity scaling of the
reconstruction to the reference (reconstructions carry arbitrary global scale), over
the whole recon matrix or inside a mask.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _mag(x) -> np.ndarray:
    return np.abs(np.asarray(x)).astype(np.float64)


def scale_to_reference(recon, reference, mask=None) -> np.ndarray:
    """Magnitude of ``recon`` times the scalar ``a`` minimising ``||a |recon| - |ref|||``."""
    r, g = _mag(recon), _mag(reference)
    m = np.ones_like(g, bool) if mask is None else np.broadcast_to(mask, g.shape)
    a = (r[m] * g[m]).sum() / max((r[m] ** 2).sum(), 1e-30)
    return a * r


def psnr(recon, reference, mask=None) -> float:
    """Peak SNR in dB, the peak being the reference's maximum magnitude."""
    r, g = scale_to_reference(recon, reference, mask), _mag(reference)
    m = np.ones_like(g, bool) if mask is None else np.broadcast_to(mask, g.shape)
    mse = ((r - g)[m] ** 2).mean()
    return float(10 * np.log10(g.max() ** 2 / max(mse, 1e-30)))


def nrmse(recon, reference, mask=None) -> float:
    r, g = scale_to_reference(recon, reference, mask), _mag(reference)
    m = np.ones_like(g, bool) if mask is None else np.broadcast_to(mask, g.shape)
    return float(np.linalg.norm((r - g)[m]) / max(np.linalg.norm(g[m]), 1e-30))


def ssim_map(x: torch.Tensor, ref: torch.Tensor, drange, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM map (Wang et al. 2004, Gaussian window, no padding) of real images ``x``, ``ref``
    ``(N, Y, X)`` (magnitudes, same units) with data range ``drange`` (a float or ``(N,)``):
    ``(N, Y - window + 1, X - window + 1)``. Differentiable in ``x`` (the SSIM loss of
    :func:`recon_core.training.stream_schedule.streaming_loss` is ``1 - mean``)."""
    coords = torch.arange(window, dtype=x.dtype, device=x.device) - window // 2
    k1 = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    k = (k1[:, None] * k1[None, :])
    k = (k / k.sum())[None, None]
    r, g = x[:, None], ref[:, None]
    d = torch.as_tensor(drange, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
    c1, c2 = (0.01 * d) ** 2, (0.03 * d) ** 2
    mu_r, mu_g = F.conv2d(r, k), F.conv2d(g, k)
    s_rr = F.conv2d(r * r, k) - mu_r ** 2
    s_gg = F.conv2d(g * g, k) - mu_g ** 2
    s_rg = F.conv2d(r * g, k) - mu_r * mu_g
    smap = ((2 * mu_r * mu_g + c1) * (2 * s_rg + c2)) / ((mu_r ** 2 + mu_g ** 2 + c1) * (s_rr + s_gg + c2))
    return smap[:, 0]


def ssim(recon, reference, mask=None, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004, Gaussian window) of 2D magnitude images, data range = max(|ref|)."""
    r = torch.from_numpy(scale_to_reference(recon, reference, mask))[None]
    g = torch.from_numpy(_mag(reference))[None]
    smap = ssim_map(r, g, float(g.max()), window, sigma)[0]
    if mask is not None:
        half = window // 2
        m = torch.from_numpy(np.asarray(mask, bool))[half:-half, half:-half]
        return float(smap[m].mean())
    return float(smap.mean())


def frame_metrics(recon: np.ndarray, reference: np.ndarray, mask=None) -> dict:
    """Per-frame PSNR/SSIM/NRMSE for stacks ``(T, Y, X)``, plus their means."""
    rows = [{"psnr": psnr(a, b, mask), "ssim": ssim(a, b, mask), "nrmse": nrmse(a, b, mask)}
            for a, b in zip(recon, reference)]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim", "nrmse")}
    return {"frames": rows, "mean": mean}


def latency_stats(latencies_ms) -> dict:
    """p50/p95/p99/max/mean of per-frame latencies in milliseconds."""
    x = np.asarray(list(latencies_ms), dtype=np.float64)
    if x.size == 0:
        return {"n": 0, "p50": float("nan"), "p95": float("nan"), "p99": float("nan"),
                "max": float("nan"), "mean": float("nan")}
    return {"n": int(x.size), "p50": float(np.percentile(x, 50)), "p95": float(np.percentile(x, 95)),
            "p99": float(np.percentile(x, 99)), "max": float(x.max()), "mean": float(x.mean())}
