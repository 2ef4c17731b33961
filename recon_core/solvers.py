"""Iterative solvers on batches of frames: conjugate gradients (CG-SENSE), fixed point, Anderson.

All solvers work on complex tensors of any shape whose first axis is the frame axis;
inner products and norms are taken per frame, so every frame in a batch gets its own
step lengths and its own convergence test.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

Operator = Callable[[torch.Tensor], torch.Tensor]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-frame <a, b> = sum conj(a) b, shape (T,) broadcastable back to a."""
    return (a.conj() * b).flatten(1).sum(1).real


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def conjugate_gradient(normal: Operator, rhs: torch.Tensor, x0: torch.Tensor | None = None,
                       iterations: int = 10, lam: float = 0.0, tol: float = 0.0) -> torch.Tensor:
    """Solve ``(N + lam I) x = rhs`` per frame by conjugate gradients.

    Args:
        normal: Hermitian positive semi-definite operator ``N`` on ``(T, ...)``.
        rhs: ``(T, ...)`` right-hand side, e.g. ``A^H y``.
        x0: start (zeros if None).
        iterations: maximum number of iterations.
        lam: Tikhonov weight.
        tol: stop when every frame's ``||r|| / ||rhs||`` is below ``tol``.
    """
    def op(v):
        return normal(v) + lam * v if lam else normal(v)

    x = torch.zeros_like(rhs) if x0 is None else x0.clone()
    r = rhs - op(x) if x0 is not None else rhs.clone()
    p = r.clone()
    rr = _dot(r, r)
    rhs_norm2 = _dot(rhs, rhs).clamp_min(1e-30)
    for _ in range(iterations):
        if tol and bool((rr / rhs_norm2 < tol * tol).all()):
            break
        ap = op(p)
        alpha = rr / _dot(p, ap).clamp_min(1e-30)
        x = x + _bcast(alpha, x) * p
        r = r - _bcast(alpha, r) * ap
        rr_new = _dot(r, r)
        p = r + _bcast(rr_new / rr.clamp_min(1e-30), p) * p
        rr = rr_new
    return x


@dataclass
class FixedPointResult:
    """Solution ``x`` and per-iteration relative changes; ``iterations`` is the count run."""
    x: torch.Tensor
    iterations: int
    changes: list = field(default_factory=list)
    converged: bool = False


def _norm(x: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of ``x`` as a 0-d real tensor, on ``x``'s device. Over the real view:
    torch's complex ``norm`` took 0.8 ms for a (2, 128, 128) window on this CPU, this 0.02 ms."""
    v = torch.view_as_real(x) if x.is_complex() else x
    return v.square().sum().sqrt()


def fixed_point(update: Operator, x0: torch.Tensor, max_iter: int = 30, tol: float = 1e-3,
                anderson: int = 0, deadline: Callable[[], bool] | None = None,
                anderson_lam: float = 1e-4, check_every: int | None = None) -> FixedPointResult:
    """Iterate ``x_{k+1} = update(x_k)`` until ``||x_{k+1}-x_k|| / ||x_k|| < tol``.

    Args:
        update: the map whose fixed point is sought.
        x0: start, any shape.
        max_iter: maximum number of updates.
        tol: relative-change tolerance (over the whole tensor).
        anderson: Anderson acceleration memory ``m`` (0 = plain iteration).
        deadline: called before an iteration (at the tests, see ``check_every``); if it
            returns True the loop stops with the current iterate (bounded-latency streaming).
        check_every: test convergence and the deadline after every ``check_every``
            iterations (default: 1 on the CPU, 4 on other devices). A test reads the change
            on the host, which on a GPU waits for the queued work; between tests the
            iterations queue on the device without a host round trip, so the loop may run
            up to ``check_every - 1`` iterations past convergence or the deadline.
    """
    if check_every is None:
        check_every = 1 if x0.device.type == "cpu" else 4
    x = x0
    changes: list[float] = []
    pending: list[torch.Tensor] = []      # changes still on the device
    xs: list[torch.Tensor] = []
    gs: list[torch.Tensor] = []
    for k in range(max_iter):
        if deadline is not None and k > 0 and k % check_every == 0 and deadline():
            return FixedPointResult(x, k, changes, False)
        fx = update(x)
        step = fx - x
        pending.append(_norm(step) / _norm(x).clamp_min(1e-30))
        if anderson:
            xs.append(x.flatten())
            gs.append(step.flatten())
            xs, gs = xs[-anderson:], gs[-anderson:]
            x = _anderson_step(xs, gs, anderson_lam).reshape(x.shape) if len(xs) > 1 else fx
        else:
            x = fx
        if (k + 1) % check_every == 0 or k + 1 == max_iter:
            changes += torch.stack(pending).tolist()          # the one host read per test
            pending.clear()
            if changes[-1] < tol:
                return FixedPointResult(x, k + 1, changes, True)
    return FixedPointResult(x, max_iter, changes, False)


def _anderson_step(xs, gs, lam):
    """Type-II Anderson mixing: x = sum_i a_i (x_i + g_i) with sum a = 1 minimising ||sum a_i g_i||."""
    g = torch.stack(gs, 1)                                     # (n, m)
    h = (g.conj().T @ g)
    h = h + lam * h.diagonal().real.mean().clamp_min(1e-30) * torch.eye(h.shape[0], dtype=h.dtype,
                                                                            device=h.device)
    ones = torch.ones(h.shape[0], 1, dtype=h.dtype, device=h.device)
    a = torch.linalg.solve(h, ones)
    a = a / a.sum()
    x = torch.stack(xs, 1)
    return ((x + g) @ a).squeeze(1)
