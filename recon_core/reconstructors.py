"""Classical frame reconstructions on the radial SENSE operator: gridding and CG-SENSE.

A reconstructor maps a batch of frames to images:

    recon(kspace (T, C, S, R) complex64, coords (T, S, R, 2), maps (C, Y, X)) -> (T, Y, X) complex64

Inputs are torch tensors on the reconstruction device; outputs stay there.
"""
from __future__ import annotations

import torch

from .operators import RadialSense
from .solvers import conjugate_gradient
from .trajectory import density_compensation


def frame_weights(coords: torch.Tensor) -> torch.Tensor:
    """Density weights ``(T, S*R)`` for frames ``coords (T, S, R, 2)``."""
    w = [torch.from_numpy(density_compensation(c.cpu().numpy())) for c in coords]
    return torch.stack(w).reshape(coords.shape[0], -1).to(coords.device)


def make_operator(coords: torch.Tensor, maps: torch.Tensor, toeplitz: bool = True) -> RadialSense:
    """The density-weighted operator for frames ``coords (T, S, R, 2)`` and ``maps (C, Y, X)``."""
    t = coords.shape[0]
    return RadialSense(coords.reshape(t, -1, 2), maps, frame_weights(coords), toeplitz=toeplitz)


def flatten_kspace(kspace: torch.Tensor) -> torch.Tensor:
    """``(T, C, S, R)`` -> ``(T, C, S*R)`` matching the operator's sample order."""
    return kspace.reshape(kspace.shape[0], kspace.shape[1], -1)


def gridding(kspace, coords, maps) -> torch.Tensor:
    """Density-compensated adjoint NUFFT, SENSE coil combined: ``A^H sqrt(w) y``."""
    op = make_operator(coords, maps, toeplitz=False)
    return op.adjoint(op.weigh(flatten_kspace(kspace)))


def cg_sense(kspace, coords, maps, iterations: int = 8, lam: float = 0.0) -> torch.Tensor:
    """CG-SENSE (Pruessmann 2001, density preconditioned): solve
    ``(A^H A + lam I) x = A^H sqrt(w) y`` by ``iterations`` CG steps from zero."""
    op = make_operator(coords, maps, toeplitz=True)
    rhs = op.adjoint(op.weigh(flatten_kspace(kspace)))
    return conjugate_gradient(op.normal, rhs, iterations=iterations, lam=lam)
