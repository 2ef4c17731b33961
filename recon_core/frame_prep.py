"""Per-frame preparation: the parts of a frame's SENSE problem that need no coil maps.

Every reconstruction of a radial frame starts with the same work on its samples: density
weights, the Toeplitz kernel of ``A^H A`` (an adjoint NUFFT of the weights on the 2x
grid) and the per-coil gridded images ``F^H (w y)`` (an adjoint NUFFT per coil). None of
it depends on the coil maps, so it can run as soon as the frame's last spoke is in, on
another thread than the solver (the chain does, see ``gadgets/recon.py``), and survives a
change of maps. What needs the maps is cheap: the coil combination of
:func:`combine` (``A^H sqrt(w) y = sum_c conj(S_c) F^H (w y)_c``) and the operator.

Shapes: one frame of ``C`` coils, ``S`` spokes of ``R`` samples, ``M = S R``, image
``(Y, X)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .nufft import default_backend, nufft_adjoint
from .operators import RadialSense, lipschitz_estimate
from .trajectory import density_compensation


@dataclass
class PreparedFrame:
    """coords ``(M, 2)`` float32 cycles/pixel; weights ``(M,)`` float32 density weights;
    kernel ``(2Y, 2X)`` complex64 Toeplitz kernel (None if not asked for);
    y_w ``(C, M)`` = ``sqrt(w) y``; coil_images ``(C, Y, X)`` = ``F^H (w y)`` per coil;
    lipschitz the frame's estimate of ``lambda_max(A^H A)`` (0 without a kernel): a window's
    is the largest of its frames'."""
    coords: torch.Tensor
    weights: torch.Tensor
    kernel: torch.Tensor | None
    y_w: torch.Tensor
    coil_images: torch.Tensor
    lipschitz: float = 0.0

    def operator(self, maps: torch.Tensor) -> RadialSense:
        """The one-frame operator with coil ``maps (C, Y, X)`` (kernel reused, no NUFFT)."""
        return RadialSense(self.coords[None], maps, self.weights[None],
                           kernel=None if self.kernel is None else self.kernel[None],
                           toeplitz=self.kernel is not None)


def prepare_frame(kspace: np.ndarray | torch.Tensor, coords: np.ndarray | torch.Tensor, shape,
                  device: torch.device | str = "cpu", toeplitz: bool = True) -> PreparedFrame:
    """kspace ``(C, S, R)`` complex64 and coords ``(S, R, 2)`` -> :class:`PreparedFrame` on ``device``.

    Costs two adjoint NUFFTs (``C`` coils on ``shape``, one channel on the 2x grid for the
    kernel; ~10 ms for 8 coils, 13 spokes, 128x128 on this project's 2-core CPU)."""
    device = torch.device(device)
    crd = coords.cpu().numpy() if torch.is_tensor(coords) else np.asarray(coords)
    weights = torch.from_numpy(density_compensation(crd).reshape(-1)).to(device)
    coords_t = torch.as_tensor(crd, dtype=torch.float32).reshape(-1, 2).to(device)
    k = torch.as_tensor(kspace).to(device, torch.complex64)
    y = k.reshape(k.shape[0], -1)                                        # (C, M)
    y_w = y * weights.sqrt()
    backend = default_backend(device)
    coil_images = nufft_adjoint((y * weights)[None], coords_t[None], tuple(shape), backend)[0]
    kernel, lipschitz = None, 0.0
    if toeplitz:
        kernel = RadialSense.toeplitz_kernel(coords_t[None], weights[None], tuple(shape), backend)[0]
        lipschitz = lipschitz_estimate(kernel)
    return PreparedFrame(coords_t, weights, kernel, y_w, coil_images, lipschitz)


def combine(coil_images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """``sum_c conj(S_c) I_c``: coil images ``(..., C, Y, X)``, maps ``(C, Y, X)`` -> ``(..., Y, X)``."""
    return (maps.conj() * coil_images).sum(-3)


def reproject(x: torch.Tensor, old_maps: torch.Tensor, new_maps: torch.Tensor) -> torch.Tensor:
    """An image ``x (..., Y, X)`` reconstructed with ``old_maps`` expressed for ``new_maps``
    (both ``(C, Y, X)``): its coil images ``S_old x``, combined with the new maps,
    ``sum_c conj(S_new,c) S_old,c x / sum_c |S_new,c|^2`` (zero where the new maps are).

    Coil maps are defined up to a phase per pixel, and ESPIRiT's differs from the fallback
    maps': the SENSE image carries the opposite phase. A stream that warm-starts its new
    frames from the previous estimates must carry them over to the new maps this way; kept
    as they were, the real-time model's images fell from 28 to 14 dB at the switch and took
    ~10 frames to recover."""
    coil = old_maps * x.unsqueeze(-3)
    power = (new_maps.abs() ** 2).sum(0)
    return combine(coil, new_maps) / power.clamp_min(1e-6) * (power > 1e-6)
