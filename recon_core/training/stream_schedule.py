"""The streaming schedule of :class:`~recon_core.networks.streaming.StreamingNetworkRecon`,
replayed differentiably on a :class:`~recon_core.networks.problem.FrameCache`, and a loss on it.

In real time (e.g. ``window=2, lookahead=1, updates=1``) a frame gets only
``(lookahead + 1) x updates`` updates ``R(x)`` before it is emitted, far from the fixed
point IMUNNE is trained for. Training on the emitted images of this schedule, with
gradients through every block application of a clip (truncated backprop through time),
is meant to make the network good at that early stage (fine-tuning, ``TrainConfig.stream_weight``).

The schedule, as the stream runs it (warm start, no deadline): frames enter one by one
into a window of at most ``window`` frames; a new frame starts from its predecessor's
current estimate (the clip's first frame from its CG-SENSE start); once the window holds
``lookahead + 1`` frames or more, every new frame triggers ``updates`` applications of
``model.update`` on the window (the map the stream iterates: the block, then the anchor
and the support projection the model has), and the frame ``lookahead`` places before the newest is
emitted. At the end (``flush``) the last window is updated once more and its last
``lookahead`` frames are emitted (nothing to do without look-ahead). Each window's Problem
carries ``previous``, the current estimate of the frame before it (for ``arch: memory``).
All images are in the clip's normalised units: divided by one ``scale`` for the whole clip,
the 99th percentile of the first frame's ``|x0|`` (the stream fixes its scale by its first
frame).

``early`` replays the chain's start: a :class:`FrameCache` of a scan's first ``K`` frames on
other coil maps (the chain's fallback maps, before ESPIRiT's arrive). A window whose newest
frame is one of them is solved on those maps; the clip's first frame starts from their
CG-SENSE, and the stream's scale is theirs.

A model with ``arch: composite`` gets each window's composite (the stream's running gridding
of every spoke from the clip's first frame up to the window's newest,
:mod:`~recon_core.networks.composite`), computed once per clip without gradients.
"""
from __future__ import annotations

import torch

from ..metrics import ssim_map
from ..networks.composite import composite_sequence
from ..networks.problem import FrameCache, Problem, intensity_scale
from ..operators import RadialSense


def clip_scale(cache: FrameCache, first: int, early: FrameCache | None = None) -> float:
    """The stream's scale: :func:`intensity_scale` of frame ``first``'s CG-SENSE start (on
    ``early``'s maps if it holds that frame)."""
    start = early if early is not None and first < early.x0.shape[0] else cache
    return intensity_scale(start.x0[first])


def _frame_range(frames, total: int) -> range:
    r = range(*frames.indices(total)) if isinstance(frames, slice) else frames
    if r.step != 1 or len(r) == 0:
        raise ValueError(f"frames {frames}: a non-empty run of consecutive frames is needed")
    return r


def streaming_outputs(model, cache: FrameCache, frames, window: int = 2, lookahead: int = 1, updates: int = 1,
                      scale: float | None = None, early: FrameCache | None = None, history: int = 0) -> torch.Tensor:
    """The images the stream emits for the consecutive ``frames`` (range or slice of the
    cache's frames), in frame order, those emitted at flush included: ``(T, Y, X)``
    complex, normalised by ``scale`` (default :func:`clip_scale` of the first frame).

    Differentiable through all ``model.update`` applications (no ``no_grad`` here); call
    under ``torch.no_grad()`` for inference. ``model`` needs ``update(x, problem)`` and ``block``.
    ``history``: the first ``history`` of ``frames`` are streamed without gradients and not
    returned (the stream's state when the returned frames arrive, as late in a long scan;
    their memory is freed as they go)."""
    if not 0 <= lookahead < window or updates < 1:
        raise ValueError(f"window={window}, lookahead={lookahead}, updates={updates}: "
                         "need 0 <= lookahead < window and updates >= 1")
    frames = _frame_range(frames, cache.x0.shape[0])
    if scale is None:
        scale = clip_scale(cache, frames[0], early)
    clip = slice(frames.start, frames.stop)
    coords, weights, kernel = cache.coords[clip], cache.weights[clip], cache.kernel[clip]
    y_w, rhs = cache.y_w[clip] / scale, cache.rhs[clip] / scale
    n_early = 0 if early is None else max(0, early.x0.shape[0] - frames.start)   # clip frames on early's maps
    if n_early:
        rhs_early = early.rhs[frames.start:frames.start + n_early] / scale
    start = early if n_early else cache                                  # the clip's first CG-SENSE start
    rates = getattr(model.block, "composite", ())
    if rates and n_early:
        raise ValueError("a composite-input model (arch: composite) is not trained on early (fallback-map) frames")
    composite = composite_sequence(rhs, rates) if rates else None        # (T, K, Y, X)

    estimates: list[torch.Tensor] = []     # current (Y, X) estimate of every clip frame so far
    outputs: list[torch.Tensor] = []       # emitted images, in frame order

    def solve(newest: int) -> None:
        """``updates`` block applications on the window ending at clip frame ``newest``."""
        w = slice(max(0, newest + 1 - window), newest + 1)
        on_early = newest < n_early
        op = RadialSense(coords[w], early.maps if on_early else cache.maps, weights[w], kernel=kernel[w])
        x = torch.stack(estimates[w])
        previous = estimates[w.start - 1] if w.start > 0 else None     # the stream's image before the window
        problem = Problem(op, y_w[w], rhs_early[w] if on_early else rhs[w], x, scale, previous=previous,
                          composite=None if composite is None else composite[newest])
        for _ in range(updates):
            x = model.update(x, problem)
        estimates[w] = list(x.unbind(0))

    if not 0 <= history < len(frames):
        raise ValueError(f"history={history}: must be in [0, {len(frames)}) for {len(frames)} frames")
    for i in range(len(frames)):
        estimates.append(start.x0[frames[0]] / scale if i == 0 else estimates[-1])
        if i >= lookahead:                   # the window holds lookahead + 1 frames or more
            with torch.set_grad_enabled(torch.is_grad_enabled() and i >= history):
                solve(i)
            outputs.append(estimates[i - lookahead])
    # flush: the last window once more, then the frames still waiting for look-ahead
    if lookahead:
        solve(len(frames) - 1)
        outputs.extend(estimates[len(outputs):])
    return torch.stack(outputs[history:])


def streaming_loss(model, cache: FrameCache, frames, target: torch.Tensor, window: int = 2, lookahead: int = 1,
                   updates: int = 1, burn_in: int = 0, ssim_weight: float = 0.0, early: FrameCache | None = None,
                   history: bool = False):
    """Complex L1 (mean) of :func:`streaming_outputs` against ``target (T, Y, X)`` (the
    clip's targets in the data's units, divided here by the clip's scale), over the frames
    after the first ``burn_in`` (which start from the clip's CG-SENSE start, unlike a running
    stream's); plus ``ssim_weight x (1 - SSIM)`` of the magnitudes, frame by frame (data range
    the target frame's maximum, :func:`recon_core.metrics.ssim_map`; the images are in the
    target's units, so no rescaling). ``early``: see :func:`streaming_outputs`. With
    ``history`` the stream starts at the scan's first frame and the frames before the clip
    are streamed without gradients (:func:`streaming_outputs`' ``history``): the clip is
    trained from the state a stream has when it arrives. ``(loss, info)`` with ``info =
    {"x": outputs (T, Y, X) detached, normalised, "scale": float}``."""
    frames = _frame_range(frames, cache.x0.shape[0])
    if not 0 <= burn_in < len(frames):
        raise ValueError(f"burn_in={burn_in}: must be in [0, {len(frames)}) for a clip of {len(frames)} frames")
    before = frames.start if history else 0
    scale = clip_scale(cache, frames[0] - before, early)
    x = streaming_outputs(model, cache, range(frames.start - before, frames.stop), window, lookahead, updates, scale,
                          early, history=before)
    ref = target[burn_in:] / scale
    loss = (x[burn_in:] - ref).abs().mean()
    if ssim_weight:
        mag = ref.abs()
        smap = ssim_map(x[burn_in:].abs(), mag, mag.flatten(1).amax(1).clamp_min(1e-12))
        loss = loss + ssim_weight * (1.0 - smap.mean())
    return loss, {"x": x.detach(), "scale": scale}
