"""Scoring reconstructions against references and against the measured k-space.

Operators and metrics only: no learned model is imported here. A trained network becomes
a method of :func:`compare` through :func:`recon_core.networks.evaluation.network_method`.
"""
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


def by_slice(images) -> dict:
    """ISMRMRD images grouped by their ``slice``, each group in ``image_index`` order:
    ``{slice: [image, ...]}`` with the slices ascending."""
    groups: dict = {}
    for img in images:
        groups.setdefault(int(img.getHead().slice), []).append(img)
    return {s: sorted(groups[s], key=lambda i: i.getHead().image_index) for s in sorted(groups)}


def score_slices(images, references, roi: bool = False, pixels=None) -> dict:
    """Score reconstructed ISMRMRD ``images`` against ``references`` slice by slice (matched
    by ``slice``, frames by ``image_index``): ``{slice: score(...)}`` for the slices both
    have. ``pixels(img) -> (Y, X)`` reads an image (default: its first channel and z)."""
    pixels = pixels or (lambda img: np.asarray(img.data)[0, 0])
    mine, theirs = by_slice(images), by_slice(references)
    return {s: score(np.stack([pixels(i) for i in mine[s]]), np.stack([pixels(i) for i in theirs[s]]), roi=roi)
            for s in mine if s in theirs}


def add_kspace_noise(kspace: np.ndarray, level: float, seed: int = 0) -> np.ndarray:
    """Complex Gaussian noise of standard deviation ``level * rms(kspace)`` added to every
    sample (the robustness experiment: the same scan, noisier)."""
    if level <= 0:
        return kspace
    rng = np.random.default_rng(seed)
    sigma = level * np.sqrt(np.mean(np.abs(kspace) ** 2))
    noise = (rng.normal(size=kspace.shape) + 1j * rng.normal(size=kspace.shape)) * sigma / np.sqrt(2)
    return (kspace + noise).astype(np.complex64)


def classical_methods(cg_iterations: int = 8) -> dict:
    """name -> fn(kspace, coords, maps) -> images, for the whole scan at once (numpy in/out):
    gridding, CG-SENSE, and compressed sensing (temporal TV at its validated default weight,
    :mod:`recon_core.compressed_sensing`)."""
    from .reconstructors import cg_sense, gridding

    def wrap(f):
        def run(kspace, coords, maps):
            with torch.no_grad():
                return f(torch.from_numpy(kspace), torch.from_numpy(coords), torch.from_numpy(maps)).numpy()
        return run

    from .compressed_sensing import temporal_tv

    return {"gridding": wrap(gridding),
            "cgsense": wrap(lambda k, c, m: cg_sense(k, c, m, iterations=cg_iterations)),
            "cs": wrap(temporal_tv)}


def compare(scans: list, methods: dict, noise: float = 0.0, roi: bool = False, progress=None) -> dict:
    """Reconstruct every scan (dicts with kspace, coords, maps, reference) with every
    method; mean PSNR/SSIM/NRMSE, data-consistency residual ``||A x - y|| / ||y||`` (against
    the k-space the method was given) and seconds per frame per method."""
    import time

    rows = {name: [] for name in methods}
    for i, scan in enumerate(scans):
        kspace = add_kspace_noise(scan["kspace"], noise, seed=i)
        for name, run in methods.items():
            t0 = time.perf_counter()
            images = run(kspace, scan["coords"], scan["maps"])
            dt = (time.perf_counter() - t0) / len(images)
            m = score(images, scan["reference"], roi=roi)["mean"]
            info = getattr(run, "last_info", {}) or {}
            dc = float(np.mean(data_consistency(images, kspace, scan["coords"], scan["maps"])))
            rows[name].append({**m, "dc_residual": dc, "seconds_per_frame": dt,
                               "iterations": info.get("iterations", 0)})
        if progress:
            progress(i + 1)
    return {name: {k: float(np.mean([r[k] for r in v])) for k in v[0]} for name, v in rows.items() if v}
