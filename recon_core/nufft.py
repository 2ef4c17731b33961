"""Non-uniform FFT backends behind one torch interface.

Both backends compute, for an image ``x[n]`` on a centred grid ``n = (ny, nx)``
(``n_i`` in ``[-N_i/2, N_i/2)``) and coordinates ``k_j = (kx, ky)`` in cycles per pixel:

    forward:  y_j = sum_n x[n] exp(-2 pi i k_j . n)
    adjoint:  x[n] = sum_j y_j exp(+2 pi i k_j . n)

Backends, chosen by measurement on the 2-core CPU this project targets (see
``benchmarks/nufft_backends.py``; 128x128 image, 8 coils, 13 spokes of 256 samples):
finufft (eps 5e-4, upsampfac 1.25) takes ~2.3 ms forward and ~3.9 ms adjoint,
torchkbnufft ~23 ms and ~36 ms. So ``finufft`` is the default on CPU; ``torchkbnufft``
runs on any torch device and is the default on CUDA (where it keeps the whole per-frame path on the GPU).
Both carry autograd: the gradient of the forward transform is the adjoint and vice versa.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

BACKENDS = ("finufft", "torchkbnufft")
#: finufft tolerance and fine-grid oversampling. finufft 2.5 picks ``upsampfac`` 1.25 by
#: itself at these tolerances (widening its kernel to keep them); we pin it, because 2.0
#: (the other choice) is 2.5x slower here for 8 coils of 13 spokes at 128x128 (6.8 vs
#: 2.8 ms, adjoint, 2 threads) and for the 256x256 Toeplitz point-spread function.
#: Measured error against a direct DFT (64x64, 2000 points): 1.6e-3 at eps 1e-3 and
#: 3.9e-4 at eps 5e-4 with ``upsampfac`` 1.25 (5.5e-4 at eps 1e-3 with 2.0), and eps 5e-4
#: costs no more time than 1e-3: both far below the noise of a radial cine frame.
FINUFFT_EPS = 5e-4
FINUFFT_UPSAMPFAC = 1.25


def default_backend(device: torch.device | str) -> str:
    return "finufft" if torch.device(device).type == "cpu" else "torchkbnufft"


def _finufft_threads() -> int:
    return max(1, torch.get_num_threads())


def _finufft_apply(kind: int, coords: np.ndarray, values: np.ndarray, shape) -> np.ndarray:
    """One finufft call for one trajectory: coords (M, 2), values (C, ...)."""
    import finufft

    kx = np.ascontiguousarray(2 * np.pi * coords[:, 0], dtype=np.float32)
    ky = np.ascontiguousarray(2 * np.pi * coords[:, 1], dtype=np.float32)
    values = np.ascontiguousarray(values, dtype=np.complex64)
    if kind == 2:  # uniform -> non-uniform, first image axis is y
        return finufft.nufft2d2(ky, kx, values, eps=FINUFFT_EPS, nthreads=_finufft_threads(),
                                upsampfac=FINUFFT_UPSAMPFAC)
    return finufft.nufft2d1(ky, kx, values, tuple(shape), eps=FINUFFT_EPS, nthreads=_finufft_threads(),
                            upsampfac=FINUFFT_UPSAMPFAC)


def _finufft_batch(kind: int, values: torch.Tensor, coords: torch.Tensor, shape) -> torch.Tensor:
    vals = values.detach().cpu().numpy()
    crd = coords.detach().cpu().numpy()
    out = [_finufft_apply(kind, crd[b], vals[b], shape) for b in range(vals.shape[0])]
    return torch.from_numpy(np.stack(out)).to(values.device)


class _FinufftForward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, image, coords):
        ctx.save_for_backward(coords)
        ctx.shape = tuple(image.shape[-2:])
        return _finufft_batch(2, image, coords, None)

    @staticmethod
    def backward(ctx, grad):
        (coords,) = ctx.saved_tensors
        return _finufft_batch(1, grad, coords, ctx.shape), None


class _FinufftAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, data, coords, shape):
        ctx.save_for_backward(coords)
        return _finufft_batch(1, data, coords, shape)

    @staticmethod
    def backward(ctx, grad):
        (coords,) = ctx.saved_tensors
        return _finufft_batch(2, grad, coords, None), None, None


@lru_cache(maxsize=8)
def _kb_ops(shape, device):
    import torchkbnufft as tkbn

    return (tkbn.KbNufft(im_size=shape).to(device),
            tkbn.KbNufftAdjoint(im_size=shape).to(device))


def _omega(coords: torch.Tensor) -> torch.Tensor:
    """(B, M, 2) (kx, ky) cycles/pixel -> (B, 2, M) radians ordered as the image axes (y, x)."""
    return (2 * math.pi) * coords.flip(-1).transpose(-1, -2).contiguous()


def nufft_forward(image: torch.Tensor, coords: torch.Tensor, backend: str = "finufft") -> torch.Tensor:
    """Image ``(B, C, Y, X)`` complex64 -> samples ``(B, C, M)`` at ``coords (B, M, 2)``."""
    if backend == "finufft":
        return _FinufftForward.apply(image, coords)
    if backend == "torchkbnufft":
        fwd, _ = _kb_ops(tuple(image.shape[-2:]), image.device)
        return fwd(image, _omega(coords))
    raise ValueError(f"unknown NUFFT backend {backend!r}; expected one of {BACKENDS}")


def nufft_adjoint(data: torch.Tensor, coords: torch.Tensor, shape, backend: str = "finufft") -> torch.Tensor:
    """Samples ``(B, C, M)`` at ``coords (B, M, 2)`` -> image ``(B, C, *shape)`` complex64."""
    shape = tuple(int(s) for s in shape)
    if backend == "finufft":
        return _FinufftAdjoint.apply(data, coords, shape)
    if backend == "torchkbnufft":
        _, adj = _kb_ops(shape, data.device)
        return adj(data, _omega(coords))
    raise ValueError(f"unknown NUFFT backend {backend!r}; expected one of {BACKENDS}")
