"""FLAT: the unrolled network as a forward-Euler probability-flow ODE, with flow-aligned
training (document 002, METHODS.md "FLAT").

Times ``1 = t_0 > t_1 > ... > t_K = 0`` (:func:`flat_schedule`) and Euler steps

    x_{k+1} = x_k + (t_{k+1} - t_k) v_theta(x_k, t_k, y),      dt_k = t_{k+1} - t_k < 0,

    v_theta(x, t, y) = alpha * A^H (A x - y_w) / L + U_theta(x, t).

Since ``dt_k < 0``, a positive ``alpha`` moves ``x`` down the data-consistency gradient;
``U_theta`` is a CU-Net (:class:`TimeCUNet`) that sees ``t`` as an extra constant input
channel. The step sizes are the schedule's, not free parameters; the only learned scalar
is ``alpha = softplus(.)``, initialised to ``eta * K`` so that with the uniform schedule
the untrained network (``U = 0`` at initialisation) is plain gradient descent with step
``eta`` (as the untrained Alt-UN).

Flow-aligned training (:func:`flat_loss`): along the ideal straight path
``x_t = t x_0 + (1 - t) x_ref`` the velocity is ``v* = dx_t/dt = x_0 - x_ref``; the loss is
``sum_k mean |v_k - v*|^2`` over the steps plus the usual final complex L1 loss, with
``v_k = (x_{k+1} - x_k) / dt_k`` recovered exactly from the returned states.

``forward(problem)`` returns ``(x_K, info)`` with ``info["states"] = [x_0, ..., x_K]`` and
``info["times"] = [t_0, ..., t_K]`` (normalised units, like the other networks);
:func:`psnr_per_step` turns the states into the per-step PSNR curve.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .cunet import CUNet, Stage
from .problem import Problem, prior_weights

SCHEDULES = ("uniform", "cosine")


def flat_schedule(steps: int, kind: str = "uniform") -> tuple[torch.Tensor, torch.Tensor]:
    """Times ``t (K+1,)`` from 1 down to 0 and steps ``dt (K,) = t[1:] - t[:-1]`` (negative,
    summing to -1), float64.

    - ``uniform``: ``t_k = 1 - k/K`` (equal steps);
    - ``cosine``:  ``t_k = (1 + cos(pi k / K)) / 2`` (small steps at both ends, large in the
      middle; strictly decreasing for ``K >= 1``).
    """
    if steps < 1:
        raise ValueError("steps must be >= 1")
    s = torch.arange(steps + 1, dtype=torch.float64) / steps
    if kind == "uniform":
        t = 1.0 - s
    elif kind == "cosine":
        t = 0.5 * (1.0 + torch.cos(math.pi * s))
    else:
        raise ValueError(f"unknown schedule {kind!r}; expected one of {SCHEDULES}")
    t[0], t[-1] = 1.0, 0.0
    return t, t[1:] - t[:-1]


class TimeCUNet(CUNet):
    """:class:`~recon_core.networks.cunet.CUNet` with the time ``t`` as one more input channel
    (constant over the window, appended after space-to-depth); zero output at initialisation."""

    def __init__(self, channels: int = 16, levels: int = 2, unshuffle: int = 2):
        super().__init__(channels, levels, unshuffle)
        self.enc[0] = Stage(2 * unshuffle ** 2 + 1, channels)

    def forward(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """complex (B, T, Y, X), scalar t -> complex (B, T, Y, X)."""
        h = self.input_channels(x)
        b, frames, _, y, x_ = h.shape                     # (B, T, 2 r^2, Y/r, X/r)
        tc = torch.as_tensor(t, dtype=h.dtype, device=h.device).expand(b, frames, 1, y, x_)
        return self.unet(torch.cat([h, tc], dim=2))


class Velocity(nn.Module):
    """``v_theta(x, t, y) = alpha grad F(x) + U_theta(x, t)``, ``grad F = A^H(A x - y_w)/L``
    plus the smoothness prior's gradient for ``tikhonov = (mu_s, mu_t)``
    (:meth:`~recon_core.networks.problem.Problem.gradient`)."""

    def __init__(self, channels=16, levels=2, unshuffle=2, alpha: float = 4.0,
                 tikhonov: tuple[float, float] = (0.0, 0.0)):
        super().__init__()
        self.net = TimeCUNet(channels, levels, unshuffle)
        self.tikhonov = prior_weights(tikhonov)
        self.alpha_raw = nn.Parameter(torch.tensor(float(torch.log(torch.expm1(torch.tensor(float(alpha)))))))

    @property
    def alpha(self) -> torch.Tensor:
        return F.softplus(self.alpha_raw)

    def forward(self, x: torch.Tensor, t: float, problem: Problem) -> torch.Tensor:
        return self.alpha * problem.gradient(x, self.tikhonov) + self.net(x[None], t)[0]


class FLAT(nn.Module):
    kind = "flat"

    def __init__(self, channels=16, levels=2, unshuffle=2, eta: float = 1.0, steps: int = 4,
                 schedule: str = "uniform", support: bool = False, tikhonov=(0.0, 0.0)):
        super().__init__()
        flat_schedule(steps, schedule)                       # validate
        self.steps, self.schedule = steps, schedule
        self.support = support
        self.velocity = Velocity(channels, levels, unshuffle, alpha=eta * steps, tikhonov=tikhonov)

    #: warm start (streaming): the flow is entered at this time, on the straight path between
    #: the frame's CG-SENSE start (t = 1) and the previous window's estimate (standing in for
    #: the end point, t = 0), so a frame seen before costs the steps below it only
    warm_time = 0.5

    def forward(self, problem: Problem, x_init=None, steps: int | None = None, deadline=None,
                start_time: float = 1.0, **_):
        """Integrate the flow from ``t = 1`` (``problem.x0``) to ``t = 0``.

        - ``x_init`` without ``start_time``: the state at ``t = 1`` instead of ``problem.x0``.
        - ``start_time = s < 1`` with ``x_init`` (a previous estimate of the end point): the
          flow is entered at the first scheduled time ``t_k <= s``, at the point
          ``t_k x0 + (1 - t_k) x_init`` of the straight path the velocity was trained on,
          and only the steps from there are taken (the warm start of a streamed window).
        - ``deadline``: a callable asked before each step but the first (as by
          :func:`~recon_core.solvers.fixed_point`); when it says the time is up, the remaining
          interval ``[t_k, 0]`` is crossed in one Euler step, ``x_k - t_k v(x_k, t_k)``, the
          flow's own estimate of its end point (one network evaluation, like any step), so
          the image is an end-of-flow estimate, not a half-way state.

        - ``support`` (constructor): every state after the start is projected onto the coil
          maps' support (:attr:`~recon_core.networks.problem.Problem.support`), where the
          data say nothing and the start (CG-SENSE, in the range of ``A^H``) is zero.

        ``info["times"]`` lists the times visited, ``info["states"]`` the states there."""
        times, dts = flat_schedule(steps or self.steps, self.schedule)
        first = 0
        if start_time < 1.0 and x_init is not None:
            first = min(int(torch.nonzero(times <= start_time + 1e-9)[0]), len(dts) - 1)
            t0 = float(times[first])
            x = t0 * problem.x0 + (1.0 - t0) * x_init
        else:
            x = problem.x0 if x_init is None else x_init
        states, visited = [x], [float(times[first])]
        for k in range(first, len(dts)):
            t, dt = float(times[k]), float(dts[k])
            if k > first and deadline is not None and deadline():
                dt = -t                                       # straight to t = 0
            x = x + dt * self.velocity(x, t, problem)
            if self.support:
                x = x * problem.support
            states.append(x)
            visited.append(float(times[k + 1]) if dt == float(dts[k]) else 0.0)
            if visited[-1] == 0.0:
                break
        return x, {"iterations": len(states) - 1, "states": states, "times": visited,
                   "converged": len(states) - 1 == len(dts) - first}


def flat_loss(states, x0: torch.Tensor, x_ref: torch.Tensor, times=None, schedule: str = "uniform",
              velocity_weight: float = 1.0, final_weight: float = 1.0, return_terms: bool = False):
    """Flow-aligned loss of a FLAT trajectory ``states = [x_0, ..., x_K]``.

        v_k  = (x_{k+1} - x_k) / (t_{k+1} - t_k)       (= v_theta(x_k, t_k), exactly)
        v*   = x_0 - x_ref                              (velocity of x_t = t x_0 + (1-t) x_ref)
        loss = velocity_weight * sum_k mean |v_k - v*|^2 + final_weight * mean |x_K - x_ref|

    ``times``: the ``t_k`` used (``info["times"]``), else ``flat_schedule(K, schedule)``.
    The velocity term is a sum over steps of the per-pixel mean squared complex error (so
    its size does not depend on the image size); the final term is the complex L1 loss of
    the supervised training loop. Zero iff the states lie on the straight path and end at
    ``x_ref``. ``return_terms``: also return ``(velocity_term, final_term)``.
    """
    k = len(states) - 1
    t = torch.as_tensor(flat_schedule(k, schedule)[0] if times is None else times, dtype=torch.float64)
    if t.numel() != k + 1:
        raise ValueError(f"{k + 1} states but {t.numel()} times")
    v_star = x0 - x_ref
    velocity = x0.new_zeros((), dtype=x0.real.dtype)
    for i in range(k):
        v = (states[i + 1] - states[i]) / float(t[i + 1] - t[i])
        velocity = velocity + (v - v_star).abs().pow(2).mean()
    final = (states[-1] - x_ref).abs().mean()
    loss = velocity_weight * velocity + final_weight * final
    return (loss, velocity.detach(), final.detach()) if return_terms else loss


def psnr_per_step(states, reference) -> list[float]:
    """PSNR (dB, magnitude, LS-scaled to the reference, mean over frames) of every state
    ``x_0 .. x_K``; ``reference`` ``(T, Y, X)`` (numpy or torch). The scalar normalisation
    of the states does not matter (least-squares intensity scaling)."""
    from ..metrics import psnr

    ref = reference.detach().cpu().numpy() if torch.is_tensor(reference) else np.asarray(reference)
    out = []
    for s in states:
        x = s.detach().cpu().numpy()
        out.append(float(np.mean([psnr(a, b) for a, b in zip(x, ref)])))
    return out
