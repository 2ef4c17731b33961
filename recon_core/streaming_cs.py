"""Streaming compressed sensing: temporal TV on the real-time network's sliding windows.

The classical peer of the real-time network under the same real-time budget. It runs in
the network's streaming machinery (:class:`recon_core.networks.streaming.StreamingNetworkRecon`:
windows of ``window`` frames with ``lookahead``, warm start from the previous window shifted
by one frame, the per-frame deadline, the overload policy, per-frame preparation ahead on
the chain's preparation thread); only the per-window solver differs: instead of network
updates, ``cs_iterations`` Condat-Vu primal-dual iterations (see
:mod:`recon_core.compressed_sensing`, ``pdhg``) of

    min_x 1/2 ||A x - y_w||^2 + lam sum_{t,r} |x_{t+1}(r) - x_t(r)|

on the window's frames, started from the warm start, with the dual started at the
subgradient of the start (``v = lam D_t x0 / |D_t x0|``, the optimal dual if the start is
the solution). ``lam = cs_lambda * max|A^H y_w|`` of the window (relative, as offline).

Data term: the unweighted operator (``weighting="none"`` of the offline CS, its validated
default and the maximum-likelihood term of prewhitened data), one constant weight ``1/M``
per frame of ``M`` samples; its Toeplitz kernel replaces the density-weighted one in the
frame's preparation (same cost: two NUFFTs per frame). A one-frame window (the reduced
budget under overload, or the stream's first frame) has no temporal term: its iterations
are gradient steps on the data term.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from .compressed_sensing import _project, temporal_diff, temporal_diff_adjoint
from .frame_prep import PreparedFrame
from .nufft import default_backend, nufft_adjoint
from .operators import RadialSense, lipschitz_estimate

log = logging.getLogger("rtcine.streaming_cs")


def prepare_unweighted(kspace, coords, shape, device="cpu") -> PreparedFrame:
    """Like :func:`recon_core.frame_prep.prepare_frame`, with the constant weight ``1/M``
    instead of the density weights: kspace ``(C, S, R)``, coords ``(S, R, 2)``."""
    device = torch.device(device)
    coords_t = torch.as_tensor(np.asarray(coords), dtype=torch.float32).reshape(-1, 2).to(device)
    m = coords_t.shape[0]
    weights = torch.full((m,), 1.0 / m, dtype=torch.float32, device=device)
    y = torch.as_tensor(kspace).to(device, torch.complex64).reshape(kspace.shape[0], -1)
    backend = default_backend(device)
    coil_images = nufft_adjoint((y * weights)[None], coords_t[None], tuple(shape), backend)[0]
    kernel = RadialSense.toeplitz_kernel(coords_t[None], weights[None], tuple(shape), backend)[0]
    return PreparedFrame(coords_t, weights, kernel, y * weights.sqrt(), coil_images, lipschitz_estimate(kernel))


class WindowTV:
    """The per-window solver, called as the streaming machinery calls a network:
    ``(problem, max_iter, tol, deadline) -> (x (T, Y, X), info)``."""

    def __init__(self, lam: float):
        self.lam = lam

    def __call__(self, problem, max_iter: int = 10, tol: float = 0.0, deadline=None):
        op, rhs = problem.op, problem.rhs
        x = problem.x0.clone()
        lip = 1.05 * float(problem.lipschitz)
        tau = 1.0 / lip
        temporal = x.shape[0] > 1 and self.lam > 0
        lam = self.lam * float(rhs.abs().max()) if temporal else 0.0
        sigma = 0.99 * (1.0 / tau - lip / 2) / 4.0
        v = _project(temporal_diff(x) * 1e12, lam) if temporal else None
        done, converged = 0, False
        for k in range(max_iter):
            if k > 0 and deadline is not None and deadline():
                break
            grad = op.normal(x) - rhs
            if temporal:
                grad = grad + temporal_diff_adjoint(v)
            x_new = x - tau * grad
            if temporal:
                v = _project(v + sigma * temporal_diff(2 * x_new - x), lam)
            done = k + 1
            if tol > 0:
                change = float((x_new - x).norm() / x.norm().clamp_min(1e-30))
                x = x_new
                if change < tol:
                    converged = True
                    break
            else:
                x = x_new
        return x, {"iterations": done, "converged": converged}

    def train(self, mode: bool = False):
        """No learned state: the streaming machinery's ``model.eval()`` (= ``train(False)``) is a no-op."""
        return self

    eval = train


def make_streaming_cs(cfg, device, protocol):
    """The chain's ``recon: cs`` reconstructor: the streaming machinery with :class:`WindowTV`,
    ``cs_iterations`` iterations per window (in place of ``max_iterations``), warm started."""
    from .networks.streaming import StreamingNetworkRecon

    cfg = dataclasses.replace(cfg, max_iterations=cfg.cs_iterations)

    class StreamingCSRecon(StreamingNetworkRecon):
        name = "cs"

        def prepare(self, frame):
            return prepare_unweighted(frame.kspace, frame.coords, self.shape, self.device)

        def fresh(self):
            other = StreamingCSRecon(self.model, self.cfg, self.device, cg_start_iterations=self.cg_start,
                                     clock=self.clock, shape=self.shape)
            return other

    recon = StreamingCSRecon(WindowTV(cfg.cs_lambda), cfg, device, shape=(protocol.matrix, protocol.matrix))
    log.info("streaming temporal-TV CS: lam %g, %d iterations per %d-frame window (look-ahead %d), deadline %g ms",
             cfg.cs_lambda, cfg.cs_iterations, cfg.window, cfg.lookahead, cfg.deadline_ms)
    recon.warm_up(cfg.virtual_coils or protocol.coils or 1, protocol.spokes_per_frame or 13,
                  protocol.samples or 2 * protocol.matrix)
    return recon
