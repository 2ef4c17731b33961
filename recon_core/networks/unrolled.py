"""IMUNNE, Alt-UN and the plain CU-Net on one :class:`~recon_core.networks.problem.Problem`.

The update operator is the proximal-gradient form: a data-consistency gradient step,
then the learned residual denoiser ``D(z) = z - U_theta(z)``:

    z    = x - (eta / L) A^H (A x - y)
    R(x) = z - U_theta(z)

with ``U_theta`` a :class:`~recon_core.networks.cunet.CUNet` over the window's frames,
``eta = softplus(eta_raw) > 0`` learned and ``L`` the Lipschitz estimate of ``A^H A``
(:mod:`recon_core.networks.problem`). The form of METHODS.md,
``x - eta A^H(Ax - y) - U(x)`` (regularizer on ``x``, not on ``z``), learned much more
slowly on the simulated data (validation PSNR 23.8 dB after 250 JFB steps, no better than
CG-SENSE), so the proximal form is used, which makes ``U`` a denoiser of the
gradient-updated image (the form of deep-equilibrium MRI, Gilton et al. 2021). At a
fixed point ``x* = D(x* - (eta/L) grad f(x*))``.

With ``tikhonov = (mu_s, mu_t)`` the gradient step is taken on the data term plus a
quadratic smoothness prior (:mod:`recon_core.networks.problem`):

    z = x - eta (A^H (A x - y) / L + mu_s D_s^H D_s x + mu_t D_t^H D_t x)

It damps the directions the radial data leave free, high spatial and temporal frequencies:
the plain IMUNNE map's slowest mode (spectral radius 0.999, 95% of it high-frequency),
along which its iterates drift and the PSNR declines past ~40 iterations. It is a fixed
part of the map set in the model's ``arch`` (no weights), so a trained network can run
with it; ``arch: tikhonov_noise: p`` scales both weights with the data's noise level
(:func:`~recon_core.networks.problem.noise_scaled_prior`). In a stream, ``arch: memory``
adds the difference to the stream's previous image across the window's start
(``Problem.previous``); offline windows have none. With ``arch: recurrence`` each update
ends by blending the window's first frame toward that previous image by a learned per-pixel
gate (:mod:`~recon_core.networks.recurrence`), a recursive temporal filter. With ``arch:
composite: rate`` (or a list of rates) the regularizer also sees the stream's composite
images, exponentially weighted griddings of every spoke so far
(:mod:`~recon_core.networks.composite`, ``Problem.composite``); a window without them
(offline) shows it the mean of its frames.

- **IMUNNE** iterates ``x_{k+1} = R(x_k)`` from ``x0`` to a fixed point (relative change
  below ``tol`` or ``max_iter``), optionally with Anderson acceleration. With
  ``start_weight = w > 0`` the map is anchored at the start, ``R_w(x) = (1 - w) R(x) + w x0``
  (``x0`` the CG-SENSE start): its Jacobian is ``(1 - w) dR/dx``, so plain iteration
  contracts by at least ``1 - w`` per step wherever ``R`` is nonexpansive, even along the
  directions that ``R`` passes unchanged (the null space of the radial operator, where
  the shipped ``w = 0`` model's spectral radius is 0.999), and the fixed point is reached
  in tens of iterations instead of drifting. With ``support = True`` every iterate is
  projected onto the coil maps' support ``P`` (the pixels where some map is nonzero):
  ``x_{k+1} = P R(x_k)``. Outside it the data say nothing (``A P = A``) and the reference
  holds no signal for ESPIRiT to find, yet the denoiser passes content there unchanged
  (59% of the slowest mode of the shipped model's fixed point lies there). Training is
  Jacobian-free (Fung et al.): the fixed point is found without gradients, then one
  differentiable application ``R(x*)`` gives the output, so training memory is that of
  one block whatever the iteration count.
- **Alt-UN**: ``n`` applications of ``R`` (shared weights) trained end to end through all
  of them (memory grows with ``n``).
- **CU-Net**: ``x0 - U(x0)``, no data consistency, the same parameters.

All take a Problem and return ``(x (T, Y, X), info)``; images are in the Problem's
normalised units.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..solvers import fixed_point
from .composite import composite_rates
from .cunet import CUNet
from .problem import Problem, noise_scaled_prior, prior_weights
from .recurrence import TemporalGate

MODELS = ("imunne", "altun", "cunet")


class UpdateOperator(nn.Module):
    """``R(x) = z - U(z)``, ``z`` a gradient step on the data term (and, with ``tikhonov =
    (mu_s, mu_t)``, on the quadratic smoothness prior); ``x (T, Y, X)`` complex, normalised."""

    def __init__(self, channels: int = 16, levels: int = 2, unshuffle: int = 2, eta: float = 0.5,
                 noise_input: bool = False, tikhonov: tuple[float, float] = (0.0, 0.0), memory: float = 0.0,
                 tikhonov_noise: float = 0.0, recurrence: bool = False, composite=0.0):
        super().__init__()
        self.composite = composite_rates(composite)    # the rates of the stream's composite inputs; (): none
        self.net = CUNet(channels, levels, unshuffle, noise_input, composite_input=len(self.composite))
        self.gate = TemporalGate() if recurrence else None
        self.tikhonov_noise = float(tikhonov_noise)
        self.eta_raw = nn.Parameter(torch.tensor(float(torch.log(torch.expm1(torch.tensor(eta))))))
        self.tikhonov = prior_weights(tikhonov)
        if memory < 0:
            raise ValueError(f"memory={memory}: expected a weight >= 0")
        self.memory = float(memory)

    @property
    def eta(self) -> torch.Tensor:
        return F.softplus(self.eta_raw)

    def regularizer(self, x: torch.Tensor, noise: float | None = None,
                    composite: torch.Tensor | None = None) -> torch.Tensor:
        if self.composite and composite is None:
            composite = x.mean(0).expand(len(self.composite), *x.shape[1:])
        return self.net(x[None], noise, None if composite is None else composite[None])[0]

    def forward(self, x: torch.Tensor, problem: Problem) -> torch.Tensor:
        prior = noise_scaled_prior(self.tikhonov, problem.noise, self.tikhonov_noise)
        z = x - self.eta * problem.gradient(x, prior, self.memory)
        x = z - self.regularizer(z, problem.noise, problem.composite)
        if self.gate is not None and problem.previous is not None:
            x = self.gate(x, problem.previous, problem.noise)
        return x


class IMUNNE(nn.Module):
    kind = "imunne"

    def __init__(self, channels=16, levels=2, unshuffle=2, eta=0.5, max_iter=20, tol=1e-3, anderson=0,
                 noise_input=False, start_weight=0.0, support=False, tikhonov=(0.0, 0.0), memory=0.0,
                 tikhonov_noise=0.0, recurrence=False, composite=0.0):
        super().__init__()
        if not 0.0 <= start_weight < 1.0:
            raise ValueError(f"start_weight={start_weight}: expected 0 <= w < 1")
        self.block = UpdateOperator(channels, levels, unshuffle, eta, noise_input, tikhonov, memory, tikhonov_noise,
                                    recurrence, composite)
        self.max_iter, self.tol, self.anderson = max_iter, tol, anderson
        self.start_weight = start_weight
        self.support = support

    def update(self, x: torch.Tensor, problem: Problem) -> torch.Tensor:
        """The map iterated to the fixed point: ``R(x)``, or ``(1 - w) R(x) + w x0`` anchored
        at the problem's start ``x0 (T, Y, X)``; then projected onto the maps' support if
        ``support``."""
        x = self.block(x, problem)
        if self.start_weight:
            x = (1.0 - self.start_weight) * x + self.start_weight * problem.x0
        return x * problem.support if self.support else x

    def forward(self, problem: Problem, x_init=None, max_iter=None, tol=None, deadline=None):
        start = problem.x0 if x_init is None else x_init
        with torch.no_grad():
            fp = fixed_point(lambda x: self.update(x, problem), start, max_iter or self.max_iter,
                             self.tol if tol is None else tol, self.anderson, deadline)
        x = self.update(fp.x.detach(), problem) if torch.is_grad_enabled() and self.training else fp.x
        return x, {"iterations": fp.iterations, "converged": fp.converged, "changes": fp.changes,
                   "x_star": fp.x}


class AltUN(nn.Module):
    kind = "altun"

    def __init__(self, channels=16, levels=2, unshuffle=2, eta=0.5, blocks=4, noise_input=False):
        super().__init__()
        self.block = UpdateOperator(channels, levels, unshuffle, eta, noise_input)
        self.blocks = blocks

    def forward(self, problem: Problem, x_init=None, **_):
        x = problem.x0 if x_init is None else x_init
        for _ in range(self.blocks):
            x = self.block(x, problem)
        return x, {"iterations": self.blocks}


class CUNetRecon(nn.Module):
    kind = "cunet"

    def __init__(self, channels=16, levels=2, unshuffle=2, eta=0.5, noise_input=False):
        super().__init__()
        self.block = UpdateOperator(channels, levels, unshuffle, eta, noise_input)   # eta unused

    def forward(self, problem: Problem, x_init=None, **_):
        x = problem.x0 if x_init is None else x_init
        return x - self.block.regularizer(x, problem.noise), {"iterations": 1}


def build_model(kind: str, **arch) -> nn.Module:
    classes = {"imunne": IMUNNE, "altun": AltUN, "cunet": CUNetRecon}
    if kind not in classes:
        from . import REGISTRY, registered_class    # further kinds (DUNE, FLAT): networks/__init__.py
        if kind in REGISTRY:
            return registered_class(kind)(**arch)
        raise ValueError(f"unknown model {kind!r}; expected one of {MODELS + tuple(REGISTRY)}")
    return classes[kind](**arch)
