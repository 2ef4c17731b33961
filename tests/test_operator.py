"""The radial SENSE operator: NUFFT accuracy, adjointness, Toeplitz normal operator."""
import math

import numpy as np
import pytest
import torch

from recon_core.nufft import nufft_adjoint, nufft_forward
from recon_core.operators import RadialSense
from recon_core.reconstructors import make_operator
from recon_core.trajectory import density_compensation, radial_coordinates, spoke_angles


def _dft_matrix(coords, n):
    iy, ix = torch.meshgrid(torch.arange(n) - n // 2, torch.arange(n) - n // 2, indexing="ij")
    phase = coords[:, 0, None, None] * ix + coords[:, 1, None, None] * iy
    return torch.exp(-2j * math.pi * phase).to(torch.complex64)          # (M, n, n)


@pytest.mark.parametrize("backend", ["finufft", "torchkbnufft"])
def test_nufft_matches_direct_dft(backend):
    torch.manual_seed(0)
    n, m = 16, 50
    x = torch.randn(1, 2, n, n, dtype=torch.complex64)
    k = torch.rand(1, m, 2) - 0.5
    e = _dft_matrix(k[0], n)
    y_ref = torch.einsum("mij,cij->cm", e, x[0])
    y = nufft_forward(x, k, backend)[0]
    assert (y - y_ref).norm() / y_ref.norm() < 1e-2
    a_ref = torch.einsum("mij,cm->cij", e.conj(), y_ref)
    a = nufft_adjoint(y_ref[None], k, (n, n), backend)[0]
    assert (a - a_ref).norm() / a_ref.norm() < 1e-2


def _random_operator(frames=2, n=32, coils=4, spokes=9, toeplitz=True):
    g = torch.Generator().manual_seed(1)
    angles = spoke_angles(np.arange(frames * spokes).reshape(frames, spokes), "golden", spokes)
    coords = torch.from_numpy(radial_coordinates(angles, 2 * n))
    maps = torch.randn(coils, n, n, dtype=torch.complex64, generator=g)
    return make_operator(coords, maps, toeplitz=toeplitz), g


def test_adjoint_inner_products():
    op, g = _random_operator()
    x = torch.randn(op.frames, *op.shape, dtype=torch.complex64, generator=g)
    y = torch.randn(op.frames, op.maps.shape[0], op.coords.shape[1], dtype=torch.complex64, generator=g)
    lhs = (op.forward(x).conj() * y).sum()
    rhs = (x.conj() * op.adjoint(y)).sum()
    assert abs(lhs - rhs) / abs(lhs) < 1e-3


def test_toeplitz_normal_equals_adjoint_of_forward():
    op, g = _random_operator()
    x = torch.randn(op.frames, *op.shape, dtype=torch.complex64, generator=g)
    direct = op.adjoint(op.forward(x))
    toeplitz = op.normal(x)
    assert (toeplitz - direct).norm() / direct.norm() < 5e-3


def test_toeplitz_normal_same_with_and_without_gradients():
    """Inference reuses one zero-padded grid per thread; windows of other sizes in turn (as a
    stream meets them) and the differentiable path of training give the same images."""
    op, g = _random_operator(frames=3)
    x = torch.randn(op.frames, *op.shape, dtype=torch.complex64, generator=g)
    xg = x.clone().requires_grad_()
    reference = op.normal(xg)
    reference.abs().sum().backward()                    # the training path still differentiates
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    tol = 1e-6 * float(reference.detach().abs().max())
    sub, _ = _random_operator(frames=1)
    with torch.no_grad():
        for _ in range(2):                              # the second call reuses the grid
            assert torch.allclose(op.normal(x), reference.detach(), rtol=0, atol=tol)
            sub.normal(x[:1])                           # another window size in between
        one = op.normal(x[:1].expand(op.frames, -1, -1))
    assert torch.allclose(one[0], reference.detach()[0], rtol=0, atol=tol)


def test_density_compensation_gives_flat_gridding():
    """A flat disc comes back from the density-compensated adjoint at its true intensity."""
    n, spokes = 64, 201                          # > pi/2 * n: fully sampled radial
    coords = radial_coordinates(spoke_angles(np.arange(spokes), "golden", spokes), 2 * n)
    w = density_compensation(coords)
    iy, ix = np.meshgrid(np.arange(n) - n // 2, np.arange(n) - n // 2, indexing="ij")
    disc = ((ix ** 2 + iy ** 2) < (n // 4) ** 2).astype(np.complex64)
    maps = torch.ones(1, n, n, dtype=torch.complex64)
    op = RadialSense(torch.from_numpy(coords.reshape(1, -1, 2)), maps, torch.from_numpy(w.reshape(1, -1)),
                     toeplitz=False)
    y = nufft_forward(torch.from_numpy(disc)[None, None], op.coords)
    x = op.adjoint(op.weigh(y))[0].real.numpy()
    centre = x[n // 2 - 4:n // 2 + 4, n // 2 - 4:n // 2 + 4].mean()
    assert abs(centre - 1.0) < 0.05
    assert abs(x[2:6, 2:6]).mean() < 0.05
