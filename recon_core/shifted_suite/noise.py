"""Receiver noise of the shifted suite: thermal noise correlated between channels by the
coupling of neighbouring loops, at a prescribed image SNR.

SNR definition (the one of :mod:`recon_core.simulate`): complex Gaussian noise of
per-channel standard deviation ``sigma = m * N / snr`` (``m`` the mean reference magnitude
in the body, ``N`` the matrix; the channel covariance has mean diagonal ``sigma^2``), so
``snr`` is the image SNR of a fully sampled Cartesian acquisition of the object with coils
whose ``sum |S|^2`` averages 1 over the body.
"""
from __future__ import annotations

import numpy as np

from .coil_array import Loop


def noise_mixing(rng: np.random.Generator, loops: list[Loop], coupling: float) -> np.ndarray:
    """Mixing ``L (C, C)`` applied to white noise: covariance ``Psi = L L^H``, ``L = G (I + M)``,
    with per-channel gains ``G`` (log-normal, 25 %) and coupling ``M_ij = coupling *
    exp(-d_ij / a) e^{i phi_ij}`` between loops ``d_ij`` apart (``a`` the mean loop radius,
    ``|phi_ij| < 0.3``), scaled so that ``Psi`` has mean diagonal 1."""
    centres = np.stack([lp.centre for lp in loops])
    d = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    a = np.mean([lp.radius for lp in loops])
    m = coupling * np.exp(-d / a) * np.exp(1j * rng.uniform(-0.3, 0.3, d.shape))
    m = 0.5 * (m + m.T)
    np.fill_diagonal(m, 0.0)
    mix = np.diag(np.exp(0.25 * rng.normal(size=len(loops)))) @ (np.eye(len(loops)) + m)
    psi = mix @ mix.conj().T
    return mix / np.sqrt(np.real(np.trace(psi)) / len(loops))


def noise_sigma(reference: np.ndarray, snr: float, fraction: float = 0.05) -> float:
    """``sigma = m * N / snr``: ``m`` the mean of ``|reference| (T, N, N)`` over the body
    (pixels of the first frame above ``fraction`` of its maximum)."""
    first = np.abs(reference[0])
    body = first > fraction * first.max()
    return float(np.abs(reference[:, body]).mean()) * reference.shape[-1] / snr


def correlated_noise(rng: np.random.Generator, mixing: np.ndarray, sigma: float, shape: tuple) -> np.ndarray:
    """Noise ``shape = (..., C, samples)`` complex64, covariance ``sigma^2 L L^H`` across ``C``."""
    z = (rng.normal(size=shape) + 1j * rng.normal(size=shape)) / np.sqrt(2)
    return (sigma * np.einsum("ij,...jk->...ik", mixing, z)).astype(np.complex64)


def measured_snr(noise_scans: np.ndarray, reference: np.ndarray, fraction: float = 0.05) -> float:
    """The SNR a user measures from a file: ``m * N / sigma_hat``, ``sigma_hat`` the RMS
    per-channel noise of the noise scans ``(K, C, R)`` (root of the mean diagonal of their
    covariance)."""
    sigma_hat = float(np.sqrt(np.mean(np.abs(noise_scans) ** 2)))
    return noise_sigma(reference, 1.0, fraction) / sigma_hat
