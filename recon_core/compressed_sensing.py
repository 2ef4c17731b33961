"""Compressed-sensing baselines for real-time radial cine: temporal total variation on our
operator (the CS reference of real-time cine papers), and sigpy's L1-wavelet per frame.

Temporal TV (all ``T`` frames of a window at once)
--------------------------------------------------

With ``A`` the multi-coil radial operator of :mod:`recon_core.operators`
(``A x = sqrt(w) F_t(S x)``, ``x (T, Y, X)`` complex64 -> ``(T, C, M)``) and the weighted
data ``y_w = sqrt(w) y``, where ``w`` is either the Voronoi density weight (``weighting=
"density"``, Pruessmann's preconditioned form, as our CG-SENSE) or one constant per scan
(``weighting="none"``: the plain least-squares / maximum-likelihood data term of
prewhitened data, as ``bart pics``; the default, better on validation), see
:func:`make_tv_operator`::

    min_x  F(x) = 1/2 ||A x - y_w||^2 + lam * sum_{t,r} |x_{t+1}(r) - x_t(r)|
                                      + lam_s * sum_{t,r} |(grad x_t)(r)|          (optional)

``|.|`` the complex modulus (temporal term) and the isotropic magnitude of the 2-vector of
forward differences along y and x (spatial term, zero difference past the last row/column,
i.e. Neumann boundary). No periodicity in time: a real-time cine is not a cardiac-binned
cycle. Write ``K x = (D_t x, D_s x)`` with ``D_t: (T, Y, X) -> (T-1, Y, X)``,
``D_s: (T, Y, X) -> (2, T, Y, X)``; ``||D_t||^2 <= 4``, ``||D_s||^2 <= 8``, so
``||K||^2 <= 4 + 8 [lam_s > 0]``. ``g(z_t, z_s) = lam ||z_t||_{1} + lam_s ||z_s||_{2,1}``.

**Scale.** ``lam`` and ``lam_s`` are given *relative* to the data: the absolute weights are
``lam_rel * max|A^H y_w|`` (the peak of the gridding image), so one value works across scans
whatever their receiver gain or prewhitening. Data term and TV term then scale alike
(``||A^H A|| ~ 1`` for both weightings).

**Solvers** (both vectorised over frames, coils and pixels; the only Python loops are over
iterations):

``admm`` (default; faster here): split ``z = K x``, scaled dual ``u``, penalty ``rho``::

    x^{k+1} = argmin_x 1/2||A x - y_w||^2 + rho/2 ||K x - z^k + u^k||^2
            i.e. solve (A^H A + rho K^H K) x = A^H y_w + rho K^H (z^k - u^k)
            by ``cg_iterations`` conjugate-gradient steps on the Toeplitz normal operator,
            warm-started at x^k (one global inner product: K^H K couples the frames)
    z^{k+1} = prox_{g/rho}(K x^{k+1} + u^k)      (complex soft threshold at lam/rho for D_t,
                                                   group soft threshold at lam_s/rho for D_s)
    u^{k+1} = u^k + K x^{k+1} - z^{k+1}

ADMM converges for any ``rho > 0`` (exact x-update; the warm-started inexact CG is the
usual practice). ``rho`` is fixed, relative to ``||A^H A|| ~ 1`` (both weightings are
normalised so), chosen per weighting by measurement (``DEFAULT_RHO``). Residual balancing
(Boyd et al. 2011, sec. 3.4.1) was tried and dropped: when every temporal difference is
thresholded to zero the dual residual vanishes and it doubles ``rho`` without bound, which
freezes ``x`` under the few CG steps per update.

``pdhg``: Condat-Vu (Condat 2013; linearised primal-dual, explicit gradient of the smooth
term, no inner solve), dual variable ``v = (v_t, v_s)`` shaped like ``K x``::

    x^{k+1} = x^k - tau (A^H A x^k - A^H y_w + K^H v^k)
    v^{k+1} = proj_{|v_t| <= lam, |v_s|_2 <= lam_s}(v^k + sigma K (2 x^{k+1} - x^k))

converging when ``1/tau - sigma ||K||^2 >= L/2``, ``L = ||A^H A||`` (estimated by power
iteration on the Toeplitz normal operator, times 1.05). Defaults ``tau = 1/L``,
``sigma = 0.99 (1/tau - L/2) / ||K||^2``.

Each iteration costs one Toeplitz ``A^H A`` (a 2x-oversampled FFT pair per coil and frame)
per CG step (ADMM) or per iteration (PDHG); the NUFFT runs once, for ``A^H y_w``, plus once
per frame for the Toeplitz kernels.

The defaults (``weighting="none"``, ``lam = 0.005``, 20 ADMM iterations of 3 CG steps,
``rho = 0.3``) were chosen on the validation scans (``runs/data/val_*.npz``, per-frame
magnitude PSNR vs the reference; ``benchmarks/bart_pics.py``; the documentation's
Performance page, "Compressed sensing against BART and sigpy"). Note that the PSNR peaks before the objective has converged (at ~20
iterations; the early stop regularises further), as for most iterative CS baselines.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .operators import RadialSense
from .reconstructors import flatten_kspace, make_operator
from .solvers import conjugate_gradient

#: Default temporal-TV weight relative to max|A^H y_w|, outer ADMM iterations and data-term
#: weighting: the best of the validation sweep (4 val scans, mean per-frame PSNR 30.47 dB;
#: docs/performance.md, "Compressed sensing against BART and sigpy"). CG steps per ADMM iteration: 3.
DEFAULT_LAM = 0.005
DEFAULT_ITERATIONS = 20
DEFAULT_CG_ITERATIONS = 3
#: Data-term weighting, see :func:`make_tv_operator`.
DEFAULT_WEIGHTING = "none"
#: ADMM penalty per weighting (fastest objective decrease on a validation scan, lam = 0.03).
DEFAULT_RHO = {"density": 3.0, "none": 0.3}


# ----------------------------------------------------------------------------- finite differences
def temporal_diff(x: torch.Tensor) -> torch.Tensor:
    """``D_t``: ``(T, Y, X) -> (T-1, Y, X)``, ``x_{t+1} - x_t``."""
    return x[1:] - x[:-1]


def temporal_diff_adjoint(z: torch.Tensor) -> torch.Tensor:
    """``D_t^H``: ``(T-1, Y, X) -> (T, Y, X)``."""
    zero = torch.zeros_like(z[:1])
    return torch.cat([zero, z]) - torch.cat([z, zero])


def spatial_grad(x: torch.Tensor) -> torch.Tensor:
    """``D_s``: ``(T, Y, X) -> (2, T, Y, X)`` forward differences along y and x, zero past the edge."""
    gy = torch.zeros_like(x)
    gx = torch.zeros_like(x)
    gy[:, :-1] = x[:, 1:] - x[:, :-1]
    gx[:, :, :-1] = x[:, :, 1:] - x[:, :, :-1]
    return torch.stack([gy, gx])


def spatial_grad_adjoint(g: torch.Tensor) -> torch.Tensor:
    """``D_s^H``: ``(2, T, Y, X) -> (T, Y, X)`` (minus the divergence)."""
    gy, gx = g[0], g[1]
    out = torch.zeros_like(gy)
    out[:, 1:] += gy[:, :-1]
    out[:, :-1] -= gy[:, :-1]
    out[:, :, 1:] += gx[:, :, :-1]
    out[:, :, :-1] -= gx[:, :, :-1]
    return out


def _soft(z: torch.Tensor, thresh: float) -> torch.Tensor:
    """Complex soft threshold ``z * max(0, 1 - thresh/|z|)``."""
    mag = z.abs()
    return z * (1 - thresh / mag.clamp_min(1e-30)).clamp_min(0)


def _group_soft(g: torch.Tensor, thresh: float) -> torch.Tensor:
    """Soft threshold of the 2-vectors along axis 0 of ``(2, T, Y, X)`` by their joint norm."""
    mag = (g.abs() ** 2).sum(0, keepdim=True).sqrt()
    return g * (1 - thresh / mag.clamp_min(1e-30)).clamp_min(0)


def _project(z: torch.Tensor, radius: float) -> torch.Tensor:
    return z / (z.abs() / radius).clamp_min(1.0)


def _group_project(g: torch.Tensor, radius: float) -> torch.Tensor:
    mag = (g.abs() ** 2).sum(0, keepdim=True).sqrt()
    return g / (mag / radius).clamp_min(1.0)


def _vdot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.conj() * b).real.sum())


# ----------------------------------------------------------------------------- result / objective
@dataclass
class TVResult:
    """Images ``x (T, Y, X)``; objective ``F(x_k)``, ``k = 0..iterations``, if recorded;
    the absolute weights used (``lam_rel * scale``), ``scale = max|A^H y_w|``; seconds."""
    x: torch.Tensor
    objective: list = field(default_factory=list)
    lam: float = 0.0
    lam_spatial: float = 0.0
    scale: float = 1.0
    seconds: float = 0.0


def tv_objective(op: RadialSense, x: torch.Tensor, rhs: torch.Tensor, y_norm2: float, lam: float,
                 lam_spatial: float = 0.0) -> float:
    """``F(x)`` with absolute weights, the data term through the Toeplitz normal operator:
    ``1/2||A x - y_w||^2 = 1/2 <x, A^H A x> - Re<x, A^H y_w> + 1/2 ||y_w||^2``."""
    data = 0.5 * _vdot(x, op.normal(x)) - _vdot(x, rhs) + 0.5 * y_norm2
    reg = lam * float(temporal_diff(x).abs().sum()) if x.shape[0] > 1 else 0.0
    if lam_spatial:
        reg += lam_spatial * float((spatial_grad(x).abs() ** 2).sum(0).sqrt().sum())
    return data + reg


def normal_norm(op: RadialSense, iterations: int = 20, seed: int = 0) -> float:
    """``||A^H A||`` by power iteration on the Toeplitz normal operator."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(op.frames, *op.shape, dtype=torch.complex64, generator=g).to(op.device)
    v = v / v.norm()
    lam = 0.0
    for _ in range(iterations):
        w = op.normal(v)
        lam = float(w.norm())
        v = w / max(lam, 1e-30)
    return lam


# ----------------------------------------------------------------------------- solvers
def tv_solve(op: RadialSense, y_w: torch.Tensor, lam: float = DEFAULT_LAM, lam_spatial: float = 0.0,
             iterations: int = DEFAULT_ITERATIONS, method: str = "admm",
             cg_iterations: int = DEFAULT_CG_ITERATIONS, rho: float | None = None,
             tau: float | None = None, x0: torch.Tensor | None = None, relative: bool = True,
             record_objective: bool = False, callback=None) -> TVResult:
    """Temporal (+ optional spatial) TV reconstruction of all frames of ``op`` at once.

    Args:
        op: operator for ``T`` frames (Toeplitz kernels used when present).
        y_w: weighted data ``sqrt(w) y``, ``(T, C, M)`` (see :meth:`RadialSense.weigh`).
        lam, lam_spatial: TV weights; relative to ``max|A^H y_w|`` when ``relative``.
        iterations: ADMM or PDHG iterations.
        method: ``admm`` or ``pdhg`` (Condat-Vu), see the module docstring.
        cg_iterations: CG steps per ADMM x-update.
        rho: ADMM penalty (relative to ``||A^H A|| ~ 1``, data-scale free); default
            ``DEFAULT_RHO`` of the operator's weighting (see :func:`make_tv_operator`).
        tau: PDHG primal step (default ``1/L``).
        x0: start (default zeros).
        record_objective: evaluate ``F`` at the start and after every iteration (one extra
            normal-operator call each): ``objective[k] = F(x_k)``, ``k = 0..iterations``.
        callback: called as ``callback(k, x)`` after iteration ``k`` (1-based).
    """
    t0 = time.perf_counter()
    if rho is None:
        rho = DEFAULT_RHO[getattr(op, "tv_weighting", "density")]
    rhs = op.adjoint(y_w)
    scale = float(rhs.abs().max()) if relative else 1.0
    lam_t, lam_sp = lam * scale, lam_spatial * scale
    use_t, use_s = op.frames > 1 and lam_t > 0, lam_sp > 0
    y_norm2 = float((y_w.abs() ** 2).sum())
    x = torch.zeros_like(rhs) if x0 is None else x0.clone()
    objective: list[float] = []

    def K(v):
        return (temporal_diff(v) if use_t else None, spatial_grad(v) if use_s else None)

    def KH(zt, zs):
        out = torch.zeros_like(x)
        if use_t:
            out = out + temporal_diff_adjoint(zt)
        if use_s:
            out = out + spatial_grad_adjoint(zs)
        return out

    def record(k=None):
        if callback is not None and k is not None:
            callback(k, x)
        if record_objective:
            objective.append(tv_objective(op, x, rhs, y_norm2, lam_t if use_t else 0.0, lam_sp))

    record()                                    # F(x0)
    if not (use_t or use_s):
        # plain least squares: global CG on the normal equations
        x = conjugate_gradient(lambda v: op.normal(v[0])[None], rhs[None], x0=x[None],
                               iterations=iterations * cg_iterations)[0]
        record()
        return TVResult(x, objective, 0.0, 0.0, scale, time.perf_counter() - t0)

    if method == "admm":
        zt, zs = K(x)
        ut = torch.zeros_like(zt) if use_t else None
        us = torch.zeros_like(zs) if use_s else None

        def normal(v):                          # (A^H A + rho K^H K) on the (1, T, Y, X) CG batch
            return (op.normal(v[0]) + rho * KH(*K(v[0])))[None]

        for it in range(1, iterations + 1):
            b = rhs + rho * KH(zt - ut if use_t else None, zs - us if use_s else None)
            x = conjugate_gradient(normal, b[None], x0=x[None], iterations=cg_iterations)[0]
            kt, ks = K(x)
            if use_t:
                zt = _soft(kt + ut, lam_t / rho)
                ut = ut + kt - zt
            if use_s:
                zs = _group_soft(ks + us, lam_sp / rho)
                us = us + ks - zs
            record(it)
    elif method == "pdhg":
        lip = 1.05 * normal_norm(op)
        k2 = (4.0 if use_t else 0.0) + (8.0 if use_s else 0.0)
        tau = tau or 1.0 / lip
        if 1.0 / tau <= lip / 2:
            raise ValueError(f"PDHG step tau={tau} too large for L={lip:.3g}: need 1/tau > L/2")
        sigma = 0.99 * (1.0 / tau - lip / 2) / k2
        vt, vs = K(torch.zeros_like(x))
        for it in range(1, iterations + 1):
            x_new = x - tau * (op.normal(x) - rhs + KH(vt, vs))
            kt, ks = K(2 * x_new - x)
            if use_t:
                vt = _project(vt + sigma * kt, lam_t)
            if use_s:
                vs = _group_project(vs + sigma * ks, lam_sp)
            x = x_new
            record(it)
    else:
        raise ValueError(f"unknown TV method {method!r}; expected 'admm' or 'pdhg'")
    return TVResult(x, objective, lam_t if use_t else 0.0, lam_sp, scale, time.perf_counter() - t0)


def make_tv_operator(coords: torch.Tensor, maps: torch.Tensor, weighting: str = DEFAULT_WEIGHTING) -> RadialSense:
    """The operator of the data term for frames ``coords (T, S, R, 2)``, ``maps (C, Y, X)``.

    ``density``: our density-weighted operator (Voronoi ``w``; ``A^H A ~ I``, Pruessmann's
    preconditioned form). ``none``: the unweighted operator ``F_t S`` (the maximum-likelihood
    data term for prewhitened data, as in ``bart pics``), with one constant weight per scan
    ``1/||F^H F||`` (power iteration) so that ``||A^H A|| = 1`` again and ``rho``/``tau`` keep
    their meaning.
    """
    if weighting == "density":
        op = make_operator(coords, maps, toeplitz=True)
        op.tv_weighting = "density"
        return op
    if weighting != "none":
        raise ValueError(f"unknown weighting {weighting!r}; expected 'density' or 'none'")
    t = coords.shape[0]
    flat = coords.reshape(t, -1, 2)
    op = RadialSense(flat, maps, None, toeplitz=True)
    norm = normal_norm(op, iterations=15)
    op = RadialSense(flat, maps, torch.full(flat.shape[:2], 1.0 / norm), toeplitz=False,
                     kernel=op.kernel / norm)
    op.tv_weighting = "none"
    return op


def temporal_tv(kspace, coords, maps, lam: float = DEFAULT_LAM, lam_spatial: float = 0.0,
                iterations: int = DEFAULT_ITERATIONS, method: str = "admm",
                weighting: str = DEFAULT_WEIGHTING, **kwargs) -> torch.Tensor:
    """Reconstructor ``(kspace (T, C, S, R), coords (T, S, R, 2), maps (C, Y, X)) -> (T, Y, X)``:
    temporal-TV CS on all frames at once (``lam`` relative to ``max|A^H y_w|``)."""
    op = make_tv_operator(coords, maps, weighting)
    y_w = op.weigh(flatten_kspace(kspace))
    return tv_solve(op, y_w, lam=lam, lam_spatial=lam_spatial, iterations=iterations, method=method,
                    **kwargs).x


# ----------------------------------------------------------------------------- sigpy L1-wavelet
def l1_wavelet_sigpy(kspace, coords, maps, lam: float = 0.01, iterations: int = 40,
                     wave_name: str = "db4") -> np.ndarray:
    """Second reference: ``sigpy.mri.app.L1WaveletRecon`` frame by frame (sigpy's own NUFFT,
    our Voronoi density weights), ``min 1/2||sqrt(w)(P F S x - y)||^2 + lam_abs ||W x||_1``
    with ``lam_abs = lam * max|A^H sqrt(w) y|`` in sigpy's operator scaling. numpy in/out,
    ``(T, C, S, R)``, ``(T, S, R, 2)``, ``(C, Y, X)`` -> ``(T, Y, X)``."""
    import sigpy.mri as mr

    from .trajectory import density_compensation

    kspace, coords, maps = (np.asarray(a) for a in (kspace, coords, maps))
    n = maps.shape[-1]
    out = []
    for k, c in zip(kspace, coords):
        w = density_compensation(c).reshape(-1)
        crd = (c.reshape(-1, 2)[:, ::-1] * n).astype(np.float32)     # sigpy: (y, x) in pixels
        y = k.reshape(k.shape[0], -1)
        a = mr.linop.Sense(maps, coord=crd, weights=w)
        scale = float(np.abs(a.H(y * np.sqrt(w))).max())
        app = mr.app.L1WaveletRecon(y, maps, lam * scale, weights=w, coord=crd, wave_name=wave_name,
                                    max_iter=iterations, show_pbar=False)
        out.append(np.asarray(app.run()))
    return np.stack(out).astype(np.complex64)
