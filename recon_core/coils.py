"""Coil processing: noise prewhitening, PCA coil compression and coil sensitivity maps.

Array layouts follow ISMRMRD: one acquisition's data is ``(coils, samples)``.
"""
from __future__ import annotations

import functools
import logging

import numpy as np
import torch

from .nufft import nufft_adjoint
from .trajectory import density_compensation

log = logging.getLogger(__name__)

#: Gadgetron's default relative receiver noise bandwidth when the header gives none.
DEFAULT_RECEIVER_NOISE_BANDWIDTH = 0.793


class NoiseCovariance:
    """Accumulates ``Psi = D^H D / (n - 1)`` from noise acquisitions ``D (samples, coils)``,
    the way Gadgetron's NoiseAdjustGadget does (n counts samples, not samples x coils)."""

    def __init__(self):
        self.sum: np.ndarray | None = None
        self.samples = 0
        self.dwell_time_us = 0.0

    def add(self, data: np.ndarray, dwell_time_us: float) -> None:
        """Add one noise acquisition ``data (coils, samples)``."""
        d = np.asarray(data, dtype=np.complex128)
        if self.sum is None:
            self.sum = np.zeros((d.shape[0], d.shape[0]), np.complex128)
            self.dwell_time_us = float(dwell_time_us)
        if d.shape[0] != self.sum.shape[0]:
            raise ValueError(f"noise acquisition has {d.shape[0]} coils, earlier ones had {self.sum.shape[0]}")
        self.sum += np.conj(d) @ d.T
        self.samples += d.shape[1]

    @property
    def matrix(self) -> np.ndarray:
        if self.sum is None:
            raise ValueError("no noise acquisitions were received")
        return self.sum / max(self.samples - 1, 1)


def prewhitening_matrix(covariance: np.ndarray, acq_dwell_us: float, noise_dwell_us: float,
                        receiver_bandwidth: float = DEFAULT_RECEIVER_NOISE_BANDWIDTH) -> np.ndarray:
    """Matrix ``W (coils, coils)`` with ``data_white = W @ data`` for data ``(coils, samples)``.

    As Gadgetron: ``Psi = U^H U`` (Cholesky, U upper); samples ``D (samples, coils)`` become
    ``D U^{-1}``, scaled by ``sqrt(2 * acq_dwell / noise_dwell * receiver_bandwidth)``
    (1 if either dwell time is 0). Returned transposed to act on ``(coils, samples)``.
    """
    psi = np.asarray(covariance, dtype=np.complex128)
    if not np.all(np.isfinite(psi)) or np.trace(psi).real <= 0:
        raise ValueError("noise covariance is empty or not finite; cannot prewhiten")
    lower = np.linalg.cholesky(psi)          # psi = L L^H, so U = L^H
    u_inv = np.linalg.inv(lower.conj().T)
    scale = 1.0
    if acq_dwell_us > 0 and noise_dwell_us > 0:
        scale = np.sqrt(2.0 * acq_dwell_us / noise_dwell_us * receiver_bandwidth)
    return (u_inv * scale).T.astype(np.complex64)


def pca_compression_matrix(samples: np.ndarray, virtual_coils: int) -> np.ndarray:
    """Matrix ``V (virtual, coils)`` of the leading principal components of ``samples (coils, n)``.

    ``compressed = V @ data``. Components are ordered by decreasing energy.
    """
    d = np.asarray(samples, dtype=np.complex128)
    if virtual_coils > d.shape[0]:
        raise ValueError(f"cannot compress {d.shape[0]} coils to {virtual_coils}")
    u, _, _ = np.linalg.svd(d @ d.conj().T)
    return u[:, :virtual_coils].conj().T.astype(np.complex64)


def calibration_images(data: np.ndarray, coords: np.ndarray, shape, backend: str = "finufft") -> np.ndarray:
    """Density-compensated coil images ``(C, Y, X)`` from many spokes ``data (S, C, R)``,
    ``coords (S, R, 2)`` (e.g. all spokes of a calibration window, pooled over time)."""
    w = density_compensation(coords)                                       # (S, R)
    y = torch.from_numpy(np.ascontiguousarray(np.transpose(data, (1, 0, 2)) * w[None]))
    y = y.reshape(1, data.shape[1], -1).to(torch.complex64)
    k = torch.from_numpy(np.ascontiguousarray(coords.reshape(1, -1, 2)))
    return nufft_adjoint(y, k, shape, backend)[0].numpy()


def _centred_fft(x: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def _centred_ifft(x: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def lowres_maps(coil_images: np.ndarray, calib: int = 24, eps: float = 1e-3, support: float = 0.0) -> np.ndarray:
    """Fast maps: coil images low-passed to the central ``calib`` k-space lines (Hann window),
    divided by their root sum of squares. ``(C, Y, X)`` -> ``(C, Y, X)``, sum_c |S|^2 = 1
    where there is signal, tapering to 0 only below ``eps`` x the maximum. ``calib`` is capped
    at the matrix (a 16x16 image uses all its 16 lines).

    ``support`` > 0 also sets the maps to zero outside the object, as ESPIRiT's eigenvalue
    crop does (:func:`support_mask`). Without it a SENSE reconstruction on these maps
    reconstructs the background's noise and streaks everywhere."""
    low = _lowpassed(_centred_fft(coil_images), calib)
    rss = np.sqrt((np.abs(low) ** 2).sum(0))
    floor = eps * rss.max()
    maps = low / np.maximum(rss, floor)
    if support > 0:
        maps = maps * support_mask(rss, support)
    return maps.astype(np.complex64)


#: k-space lines of the image whose threshold crops ESPIRiT maps to the object (espirit_maps'
#: ``support``). The chain's 10-frame pool (130 spokes) samples a disc of ~80 lines at Nyquist;
#: on the shifted suite's val scans 64 lines cut the air closer to the body than 24 or 48
#: (ReconConfig.espirit_support)
SUPPORT_LINES = 64


def _lowpassed(ksp: np.ndarray, calib: int) -> np.ndarray:
    """Coil images ``(C, Y, X)`` from their centred k-space ``ksp (C, Y, X)`` low-passed to
    its central ``calib`` lines (Hann window; ``calib`` capped at the matrix)."""
    ny, nx = ksp.shape[-2:]
    calib = min(calib, ny, nx)
    wy = np.hanning(calib + 2)[1:-1]
    win = np.zeros((ny, nx))
    cy, cx = ny // 2 - calib // 2, nx // 2 - calib // 2
    win[cy:cy + calib, cx:cx + calib] = wy[:, None] * wy[None, :]
    return _centred_ifft(ksp * win)


def support_mask(rss: np.ndarray, threshold: float) -> np.ndarray:
    """The object's region ``(Y, X)`` bool from a low-resolution magnitude image (the fallback
    maps' root sum of squares, or ESPIRiT's combined calibration image in :func:`espirit_maps`):
    above ``threshold`` x its maximum, holes filled (dark lungs inside the body wall), grown
    by ``Y / 64`` pixels (2 for a 128 matrix) so that the edge is not cut.

    On the 5 shifted val scans (realtime preset, unpaced), fallback maps masked at 0.1 raised
    the real-time model from 33.77 / 0.874 to 34.04 / 0.918. In a sweep with the first maps
    at frame 6 (the first 6 frames' SSIM 0.46-0.84 -> 0.67-0.94) 0.05 gave 33.99 / 0.910 and
    0.2 33.59 / 0.906 (it cuts into deep tissue under surface arrays' shading)."""
    from scipy import ndimage

    mask = ndimage.binary_fill_holes(rss > threshold * rss.max())
    return ndimage.binary_dilation(mask, iterations=max(1, round(rss.shape[0] / 64)))


def espirit_maps(coil_images: np.ndarray, calib: int = 24, kernel: int = 6, threshold: float = 0.02,
                 crop: float = 0.95, power_iterations: int = 30, grid: int = 0, support: float = 0.0) -> np.ndarray:
    """ESPIRiT maps ``(C, Y, X)`` by ``sigpy.mri.app.EspiritCalib`` from gridded coil images.

    The Cartesian calibration k-space is the centred FFT of the pooled coil images; only
    its central ``calib x calib`` block is used by ESPIRiT. ``power_iterations`` for the
    per-pixel leading eigenvector (sigpy's default is 100): ESPIRiT's eigenvalue gap is
    wide, and at 30 the maps of a 128x128, 8-coil stream differ from 100's by 1.5e-6 while
    the calibration takes 0.62 instead of 1.11 s (it runs beside the reconstruction).

    ``grid = G`` (``calib <= G <`` the matrix): the eigenvectors are computed on a ``G x G``
    grid over the same field of view (the central ``G x G`` of the calibration k-space: the
    same calibration data, coarser pixels) and interpolated bilinearly to the matrix, the
    support by the interpolated eigenvalue map (``> crop``). The per-pixel power iteration
    dominates ESPIRiT's time, so G = 64 for a 128 matrix is 3.5-4.5x faster (0.20 against
    0.72 s, 12 coils); on the shifted suite's val scans the maps agree with the full grid's
    to a coil-summed correlation of 0.9998 inside the common support, whose edge moves by
    about half a pixel (1-1.5% of the pixels change sides).

    ``support`` > 0 also sets the maps to zero outside the object: where the coil images,
    low-passed to the central ``SUPPORT_LINES`` lines and combined with the maps (a shading-free
    image), are below ``support`` x their maximum, holes filled, grown by 2 pixels
    (:func:`support_mask`, as for the fallback maps of :func:`lowres_maps`). ESPIRiT's
    eigenvalue crop keeps a margin of air around the body, where a reconstruction on the maps
    leaves a level and texture the object does not have (see ``ReconConfig.espirit_support``
    for the measurements).
    """
    from sigpy.mri.app import EspiritCalib

    ksp = _centred_fft(coil_images).astype(np.complex64)
    ny, nx = ksp.shape[-2:]
    if not grid or grid >= min(ny, nx):
        maps = EspiritCalib(ksp, calib_width=calib, thresh=threshold, kernel_width=kernel, crop=crop,
                            max_iter=power_iterations, show_pbar=False).run()
        maps = np.asarray(maps, dtype=np.complex64)
    else:
        if grid < calib:
            raise ValueError(f"grid={grid}: must be at least the calibration width {calib}")
        cy, cx = ny // 2 - grid // 2, nx // 2 - grid // 2
        maps, eig = EspiritCalib(np.ascontiguousarray(ksp[:, cy:cy + grid, cx:cx + grid]), calib_width=calib,
                                 thresh=threshold, kernel_width=kernel, crop=0.0, max_iter=power_iterations,
                                 output_eigenvalue=True, show_pbar=False).run()
        maps = _upsampled_maps(np.asarray(maps), np.abs(np.asarray(eig)).reshape(grid, grid), (ny, nx), crop)
    if support > 0:
        combined = np.abs((maps.conj() * _lowpassed(ksp, SUPPORT_LINES)).sum(0))
        maps = maps * support_mask(combined, support)
    return maps


def _upsampled_maps(maps: np.ndarray, eig: np.ndarray, shape, crop: float) -> np.ndarray:
    """Maps ``(C, G, G)`` and their eigenvalue map ``(G, G)`` interpolated bilinearly (pixel
    centres aligned, same field of view) to ``shape``; zero where the interpolated eigenvalue
    is at most ``crop``, unit coil-summed magnitude elsewhere."""
    import torch.nn.functional as F

    m = torch.from_numpy(maps.astype(np.complex64))
    planes = torch.cat([m.real, m.imag, torch.from_numpy(eig.astype(np.float32))[None]])[None]
    up = F.interpolate(planes, size=tuple(shape), mode="bilinear", align_corners=False)[0]
    c = m.shape[0]
    out = torch.complex(up[:c], up[c:2 * c])
    norm = out.abs().square().sum(0).sqrt().clamp_min(1e-12)
    return (out / norm * (up[2 * c] > crop)).numpy().astype(np.complex64)


@functools.lru_cache(maxsize=1)
def warm_up_espirit() -> float:
    """Import sigpy and run ESPIRiT once on a tiny random input (its compiled kernels are
    built on first use); once per process, returns the seconds it took.

    Call it before the scan: done on the calibration thread during the scan, the import and
    first-call compilation hold Python's GIL for seconds and starve the reconstruction (CU-Net
    calls 7x slower, medians 44 vs 6 ms, measured); afterwards ESPIRiT on a thread beside it costs
    the reconstruction nothing measurable (5.3 vs 6.3 ms)."""
    import time

    t0 = time.perf_counter()
    g = np.random.default_rng(0)
    espirit_maps((g.standard_normal((2, 32, 32)) + 1j * g.standard_normal((2, 32, 32))).astype(np.complex64),
                 calib=12, kernel=4)
    return time.perf_counter() - t0


def pool_spokes(frames) -> tuple[np.ndarray, np.ndarray]:
    """The spokes of several frames as one calibration set: ``frames`` yields
    ``(kspace (C, S, R), coords (S, R, 2))`` per frame; returns ``data (S_total, C, R)`` and
    ``coords (S_total, R, 2)`` in frame order, as :func:`estimate_maps` takes them."""
    frames = list(frames)
    data = np.concatenate([k.transpose(1, 0, 2) for k, _ in frames])
    coords = np.concatenate([c for _, c in frames])
    return data, coords


def estimate_maps(data: np.ndarray, coords: np.ndarray, shape, method: str = "espirit",
                  calib: int = 24, grid: int = 0, support: float = 0.0) -> np.ndarray:
    """Coil maps ``(C, Y, X)`` from spokes ``data (S, C, R)`` at ``coords (S, R, 2)``.

    ``method``: ``espirit`` (sigpy ESPIRiT, on a ``grid x grid`` grid if ``grid``, see
    :func:`espirit_maps`) or ``lowres`` (fast fallback); either is zero outside the object
    if ``support`` (:func:`espirit_maps`, :func:`lowres_maps`)."""
    images = calibration_images(data, coords, shape)
    if method == "espirit":
        return espirit_maps(images, calib=calib, grid=grid, support=support)
    if method == "lowres":
        return lowres_maps(images, calib=calib, support=support)
    raise ValueError(f"unknown coil map method {method!r}; expected 'espirit' or 'lowres'")
