"""SSDU: self-supervised training by splitting each frame's acquired spokes (survey,
section III-D1; METHODS.md "SSDU").

Per frame, the acquired spokes ``Omega`` are split at random into disjoint ``Theta``
(about ``fraction`` of them, 60% by default) and ``Lambda`` (the rest), whole spokes at a
time. The network runs on the Problem built from ``Theta`` only (its data consistency,
starting image, density weights, scale and Lipschitz estimate all come from ``Theta``);
the loss compares its output, taken back to k-space on ``Lambda``, with the measured
``Lambda`` samples:

    r    = A_Lambda x_out - sqrt(w_Lambda) y_Lambda / scale
    loss = ||r||_2 / ||sqrt(w_Lambda) y_Lambda / scale||_2 + ||r||_1 / ||sqrt(w_Lambda) y_Lambda / scale||_1

``A_Lambda`` is the project's density-weighted operator on ``Lambda``'s coordinates
(``sqrt(w)`` inside, ``w`` the Voronoi weights of ``Lambda``'s spokes, recomputed for the
subset), so that the k-space centre, sampled by every spoke, does not dominate the loss;
``x_out`` is in the Theta-Problem's normalised units, hence ``y / scale``. At inference
nothing changes: the Problem is built from all of ``Omega``.

Every spoke of ``kspace (T, C, S, R)`` counts as acquired (the simulator and the chain
deliver only acquired spokes); every frame gets the same counts ``round(fraction S)`` and
``S - round(fraction S)`` (at least one each), so the subsets stay rectangular tensors.
"""
from __future__ import annotations

import torch

from ..networks.problem import make_problem
from ..reconstructors import flatten_kspace, make_operator


def ssdu_split(kspace: torch.Tensor, coords: torch.Tensor, fraction: float = 0.6,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Spoke indices ``theta_idx (T, S_theta)`` and ``lambda_idx (T, S - S_theta)`` (int64,
    sorted per frame), a seeded random split of each frame's ``S`` spokes;
    ``S_theta = round(fraction S)`` clamped to ``[1, S - 1]``."""
    t, _, s, _ = kspace.shape
    if coords.shape[:2] != (t, s):
        raise ValueError(f"coords {tuple(coords.shape)} do not match kspace {tuple(kspace.shape)}")
    if s < 2:
        raise ValueError("SSDU needs at least 2 spokes per frame")
    n_theta = min(max(int(round(fraction * s)), 1), s - 1)
    perm = torch.stack([torch.randperm(s, generator=generator) for _ in range(t)])
    theta = perm[:, :n_theta].sort(dim=1).values
    lam = perm[:, n_theta:].sort(dim=1).values
    return theta.to(kspace.device), lam.to(kspace.device)


def select_spokes(kspace: torch.Tensor, coords: torch.Tensor, idx: torch.Tensor):
    """``kspace (T, C, S, R)``, ``coords (T, S, R, 2)`` restricted to spokes ``idx (T, S')`` per frame."""
    t, c, _, r = kspace.shape
    k = kspace.gather(2, idx[:, None, :, None].expand(t, c, idx.shape[1], r))
    xy = coords.gather(1, idx[:, :, None, None].expand(t, idx.shape[1], r, coords.shape[-1]))
    return k, xy


def ssdu_loss(x: torch.Tensor, kspace_lambda: torch.Tensor, coords_lambda: torch.Tensor, maps: torch.Tensor,
              scale: float = 1.0, per_frame: bool = False) -> torch.Tensor:
    """Normalised L1 + L2 between ``A_Lambda x`` and the weighted ``Lambda`` samples / ``scale``
    (``x (T, Y, X)``); ``per_frame``: each frame normalised by its own samples, then the mean
    over frames (a stream's frames count alike whatever their signal)."""
    op = make_operator(coords_lambda, maps, toeplitz=False)
    y = op.weigh(flatten_kspace(kspace_lambda)) / scale
    r = op.forward(x) - y
    dims = tuple(range(1, r.dim())) if per_frame else tuple(range(r.dim()))
    l2 = r.abs().pow(2).sum(dims).sqrt() / y.abs().pow(2).sum(dims).sqrt().clamp_min(1e-30)
    l1 = r.abs().sum(dims) / y.abs().sum(dims).clamp_min(1e-30)
    return (l1 + l2).mean()


def ssdu_step(model, kspace: torch.Tensor, coords: torch.Tensor, maps: torch.Tensor, fraction: float = 0.6,
              generator: torch.Generator | None = None, cg_iterations: int = 3, return_info: bool = False):
    """One self-supervised loss evaluation (call ``.backward()`` on it): split, run ``model``
    on the Theta Problem, score on Lambda. ``return_info``: return ``(loss, info)``, info
    being the model's plus the split."""
    theta, lam = ssdu_split(kspace, coords, fraction, generator)
    k_theta, c_theta = select_spokes(kspace, coords, theta)
    k_lambda, c_lambda = select_spokes(kspace, coords, lam)
    with torch.no_grad():
        problem = make_problem(k_theta, c_theta, maps, cg_iterations=cg_iterations)
    x, info = model(problem)
    loss = ssdu_loss(x, k_lambda, c_lambda, maps, problem.scale)
    if return_info:
        return loss, {**info, "theta": theta, "lambda": lam, "scale": problem.scale}
    return loss


def ssdu_streaming_loss(model, kspace: torch.Tensor, coords: torch.Tensor, maps: torch.Tensor,
                        window: int = 2, lookahead: int = 1, updates: int = 1, burn_in: int = 0,
                        fraction: float = 0.6, generator: torch.Generator | None = None,
                        cg_iterations: int = 3):
    """SSDU on the streaming schedule: the clip ``kspace (T, C, S, R)``, ``coords (T, S, R, 2)``
    is split per frame into Theta and Lambda (:func:`ssdu_split`), streamed on Theta exactly as
    :func:`~recon_core.training.stream_schedule.streaming_outputs` replays the chain (windows,
    look-ahead, warm start, ``updates`` per window), and every emitted frame after ``burn_in``
    is scored on its own Lambda spokes (:func:`ssdu_loss`, mean over frames). This trains the
    real-time model in the way it runs, where the window SSDU of :func:`ssdu_step` trains a
    cold-started window the stream never sees. ``(loss, info)``."""
    from ..networks.problem import FrameCache
    from .stream_schedule import clip_scale, streaming_outputs

    theta, lam = ssdu_split(kspace, coords, fraction, generator)
    k_theta, c_theta = select_spokes(kspace, coords, theta)
    k_lambda, c_lambda = select_spokes(kspace, coords, lam)
    with torch.no_grad():
        cache = FrameCache(k_theta, c_theta, maps, cg_iterations)
    frames = range(kspace.shape[0])
    scale = clip_scale(cache, 0)
    x = streaming_outputs(model, cache, frames, window, lookahead, updates, scale)
    b = min(burn_in, len(frames) - 1)
    loss = ssdu_loss(x[b:], k_lambda[b:], c_lambda[b:], maps, scale, per_frame=True)
    return loss, {"x": x.detach(), "scale": scale, "theta": theta, "lambda": lam}
