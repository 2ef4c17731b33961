"""Streaming network reconstruction: sliding windows over the incoming frames.

Frame ``f`` is emitted once the window ``[f + L - T + 1, f + L]`` is solved (``T =
window``, ``L = lookahead``): its image uses ``L`` frames of look-ahead and ``T - L - 1``
of history. Per frame, the expensive parts (Toeplitz kernel, per-coil ``F^H w y``: two
NUFFTs, :meth:`StreamingNetworkRecon.prepare`) are computed once, ahead of the solve on the
chain's preparation thread, and kept while the frame is in the window; new coil maps
re-combine them without a NUFFT. The fixed point of each window starts
from the previous window's solution shifted by one frame (warm start); the new frame
enters with the newest frame's current estimate (consecutive frames differ little, and the
fixed point does not depend on the start), so no per-frame CG-SENSE start is computed.
FLAT warm-starts differently (:attr:`~recon_core.networks.flat.FLAT.warm_time`): each
window enters the flow between the frames' CG-SENSE starts and these estimates, so its
frames keep a CG-SENSE start too.
Cold start (``warm_start=False``) starts every window from the frames' CG-SENSE starts.
Each window's Problem carries ``previous``, the last estimate of the frame that left the
window before it (with ``window = lookahead + 1``, the image emitted for that frame), which
a model with ``arch: memory`` pulls the window's first frame toward
(:mod:`~recon_core.networks.problem`). A model with ``arch: composite`` also gets the
stream's composite images (one per rate), updated as each frame enters (running griddings
of all its spokes, :mod:`~recon_core.networks.composite`, kept per coil so that new coil
maps re-combine them).
Each window's loop stops at convergence, at ``max_iterations`` or at the output frame's
deadline (no update is started that would end past it), whichever comes first; a frame is
thus refined in ``L + 1`` windows before it is emitted (``(L + 1) x max_iterations``
updates at most).

The stream's intensity scale is fixed by its first frame, so all windows share units.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from ..config import NETWORK_RECONS
from ..frame_prep import combine, prepare_frame, reproject
from ..operators import RadialSense
from ..solvers import conjugate_gradient
from ..trajectory import radial_coordinates
from .composite import Composite
from .problem import Problem, intensity_scale

log = logging.getLogger("rtcine.streaming")

MODELS_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "models")


def model_path(kind: str, path: str = "") -> str:
    """The model file: the shipped ``MODELS_DIR/<kind>_small.safetensors`` when ``path`` is
    empty, the shipped ``MODELS_DIR/<path>_small.safetensors`` when ``path`` names one (e.g.
    ``imunne_rt``, the real-time model), else ``path`` itself."""
    if not path:
        return os.path.join(MODELS_DIR, f"{kind}_small.safetensors")
    shipped = os.path.join(MODELS_DIR, f"{path}_small.safetensors")
    if os.sep not in path and not path.endswith(".safetensors") and os.path.exists(shipped):
        return shipped
    return path


DEFAULT_MODEL = model_path("imunne")


def load_model(path: str, device):
    from .checkpoint import load_checkpoint

    model, meta, _ = load_checkpoint(path or DEFAULT_MODEL, device=str(device))
    return model, meta


@dataclass
class _Slot:
    frame: object
    coords: torch.Tensor      # (M, 2)
    weights: torch.Tensor     # (M,)
    kernel: torch.Tensor      # (2Y, 2X)
    y_w: torch.Tensor         # (C, M), normalised
    rhs: torch.Tensor         # (Y, X), normalised
    x0: torch.Tensor | None   # (Y, X) CG-SENSE start, normalised (cold start only)
    x: torch.Tensor           # (Y, X) current estimate (the start of the next window if warm), normalised
    lipschitz: float          # the frame's lambda_max(A^H A) estimate (PreparedFrame.lipschitz)
    coil_images: torch.Tensor | None = None   # (C, Y, X) per-coil F^H w y, as prepared (not normalised)


class StreamingNetworkRecon:
    """The ``push/flush`` frame reconstructor of the chain for a network (IMUNNE, or a finite
    unrolled one started cold in every window)."""

    name = "imunne"

    def __init__(self, model, cfg, device, cg_start_iterations: int = 3, clock=time.perf_counter, shape=None):
        self.model, self.cfg, self.device = model, cfg, torch.device(device)
        self.shape = tuple(shape) if shape else None     # (Y, X) image matrix (else: the maps')
        self.window, self.lookahead = cfg.window, cfg.lookahead
        self.cg_start = cg_start_iterations
        self.slots: deque[_Slot] = deque(maxlen=self.window)
        self.scale: float | None = None
        self.maps: torch.Tensor | None = None
        self.clock = clock
        self.emitted = 0
        self.reduced = False            # set by the chain's overload guard: one update of the newest frame
        # FLAT warm-starts by entering its flow between each frame's CG-SENSE start and the
        # previous estimate, so its slots keep both (a 3-iteration CG of one frame each)
        self.blends_start = bool(cfg.warm_start and getattr(model, "kind", "") == "flat")
        self.held = False               # set by the chain for frames held for the first coil maps
        self.previous: torch.Tensor | None = None   # (Y, X) estimate of the frame that left the window last
        rates = getattr(getattr(model, "block", None), "composite", ())
        self.composite = Composite(rates) if rates else None   # the stream's composite inputs, if the model has them

    def fresh(self) -> "StreamingNetworkRecon":
        """A reconstructor of the same network and configuration with no stream state (no
        window, warm start, intensity scale or maps): another slice's cine. The model is
        shared, not loaded or warmed up again."""
        other = StreamingNetworkRecon(self.model, self.cfg, self.device, cg_start_iterations=self.cg_start,
                                      clock=self.clock, shape=self.shape)
        other.name = self.name
        return other

    def warm_up(self, coils: int, spokes: int, samples: int) -> None:
        """Solve throwaway windows (full and one-frame) on random data of the stream's shape,
        so that the first frames of the scan do not pay the first calls' costs (memory pools,
        convolution and FFT plans; not measured on its own: the stream's start was dominated
        by ESPIRiT's first run, see recon_core.coils.warm_up_espirit). The stream's state is
        untouched."""
        shape = self.shape or (samples // 2, samples // 2)
        g = torch.Generator().manual_seed(0)
        kspace = torch.randn(coils, spokes, samples, dtype=torch.complex64, generator=g).numpy()
        coords = radial_coordinates(np.arange(spokes) * np.pi / spokes, samples).astype(np.float32)
        prep = self.prepare(SimpleNamespace(kspace=kspace, coords=coords))
        maps = torch.full((coils, *shape), coils ** -0.5, dtype=torch.complex64, device=self.device)
        rhs = combine(prep.coil_images, maps)
        rhs = rhs / rhs.abs().max().clamp_min(1e-12)
        for t in sorted({self.window, 1}):
            op = RadialSense(prep.coords.expand(t, -1, -1), maps, prep.weights.expand(t, -1),
                             kernel=prep.kernel.expand(t, -1, -1))
            problem = Problem(op, prep.y_w.expand(t, -1, -1), rhs.expand(t, -1, -1), rhs.expand(t, -1, -1), 1.0)
            with torch.no_grad():
                self.model(problem, max_iter=1, tol=0.0)

    # -- per-frame preparation ---------------------------------------------------------
    def prepare(self, frame):
        """The frame's map-independent work (two NUFFTs): may run on another thread, ahead of
        :meth:`push` (the chain stores the result in ``frame.prepared``)."""
        return prepare_frame(frame.kspace, frame.coords, self.shape, self.device)

    def _slot(self, frame, maps, start: torch.Tensor | None = None) -> _Slot:
        """Prepare a frame; ``start`` (normalised ``(Y, X)``) replaces its CG-SENSE start."""
        prep = getattr(frame, "prepared", None)
        if prep is None:
            self.shape = self.shape or tuple(maps.shape[-2:])
            prep = self.prepare(frame)
        op = prep.operator(maps)
        rhs = combine(prep.coil_images, maps)[None]
        x0 = None
        if start is None or self.scale is None or self.blends_start:
            x0 = conjugate_gradient(op.normal, rhs, iterations=self.cg_start)
            if self.scale is None:
                self.scale = intensity_scale(x0)
            x0 = x0[0] / self.scale
        s = self.scale
        return _Slot(frame, prep.coords, prep.weights, prep.kernel, prep.y_w / s, rhs[0] / s, x0,
                     x0 if start is None else start, prep.lipschitz, prep.coil_images)

    def _problem(self, maps, slots: list[_Slot], previous: torch.Tensor | None = None) -> Problem:
        coords, weights, y_w = [s.coords for s in slots], [s.weights for s in slots], [s.y_w for s in slots]
        m = max(c.shape[0] for c in coords)
        if any(c.shape[0] != m for c in coords):
            # frames of different spoke counts (cut by the stream's markers): padded with samples of
            # weight 0, which add nothing to A x, A^H y or the Toeplitz kernel (each frame keeps its own)
            pad = torch.nn.functional.pad
            coords = [pad(c, (0, 0, 0, m - c.shape[0])) for c in coords]
            weights = [pad(w, (0, m - w.shape[0])) for w in weights]
            y_w = [pad(y, (0, m - y.shape[-1])) for y in y_w]
        op = RadialSense(torch.stack(coords), maps, torch.stack(weights), kernel=torch.stack([s.kernel for s in slots]))
        warm = self.cfg.warm_start and not self.blends_start
        x0 = torch.stack([s.x for s in slots]) if warm else torch.stack([s.x0 for s in slots])
        composite = None if self.composite is None else self.composite.image(maps) / self.scale
        return Problem(op, torch.stack(y_w), torch.stack([s.rhs for s in slots]), x0, self.scale,
                       lipschitz=max(s.lipschitz for s in slots), previous=previous,   # no host read per window
                       composite=composite)

    # -- solving ---------------------------------------------------------------------
    def _solve(self, maps, deadline_of) -> dict:
        """Update the window (its frames' ``slot.x``); under overload (``reduced``) only its
        newest frame, once: half the work or less, and the frame to emit keeps the estimate
        it got as the newest frame."""
        slots = list(self.slots)[-1:] if self.reduced else list(self.slots)
        previous = self.slots[-2].x if self.reduced and len(self.slots) > 1 else self.previous
        problem = self._problem(maps, slots, previous)
        deadline = None
        if self.cfg.deadline_ms > 0 and deadline_of is not None and not self.held:
            deadline = _Deadline(deadline_of.arrival + self.cfg.deadline_ms / 1e3, self.clock)
        kwargs = {}
        if self.blends_start:
            kwargs = {"x_init": torch.stack([s.x for s in slots]), "start_time": self.model.warm_time}
        with torch.no_grad():
            x, info = self.model(problem, max_iter=1 if self.reduced else self.cfg.max_iterations,
                                 tol=self.cfg.tolerance, deadline=deadline, **kwargs)
        for slot, xi in zip(slots, x):
            slot.x = xi
        return {**info, "window": len(slots)}

    def _emit(self, index_in_window: int, info: dict):
        slot = list(self.slots)[index_in_window]
        image = (slot.x * self.scale).cpu().numpy()
        self.emitted += 1
        return (slot.frame, image, {"recon": self.name, "iterations": int(info["iterations"]),
                                    "window": info["window"], "converged": int(bool(info.get("converged")))})

    def push(self, frame, maps):
        if self.maps is not maps:               # new coil maps: re-prepare the frames in the window
            old, old_maps = list(self.slots), self.maps
            self.slots.clear()
            self.maps = maps
            for s in old:                       # the estimates carried over to the new maps' phase
                start = reproject(s.x, old_maps, maps) if self.cfg.warm_start else None
                self.slots.append(self._slot(s.frame, maps, start=start))
            if self.previous is not None and old_maps is not None:
                self.previous = reproject(self.previous, old_maps, maps)
        start = self.slots[-1].x if self.cfg.warm_start and self.slots else None
        if len(self.slots) == self.slots.maxlen:
            self.previous = self.slots[0].x     # leaves the window now: its last estimate
        self.slots.append(self._slot(frame, maps, start=start))
        if self.composite is not None:
            self.composite.add(self.slots[-1].coil_images)
        pos = len(self.slots) - 1 - self.lookahead   # the frame to emit now
        if pos < 0:
            return []
        info = self._solve(maps, list(self.slots)[pos].frame)
        return [self._emit(pos, info)]

    def flush(self):
        """Emit the frames still waiting for look-ahead (the last window solved once more)."""
        out = []
        waiting = min(self.lookahead, len(self.slots))
        if waiting == 0 or self.maps is None:
            return out
        first = len(self.slots) - waiting
        self.reduced = False
        info = self._solve(self.maps, list(self.slots)[first].frame)
        for pos in range(first, len(self.slots)):
            out.append(self._emit(pos, info))
        return out


class _Deadline:
    """``deadline()`` for :func:`~recon_core.solvers.fixed_point`: True when one more update,
    as long as the last one took, would end after ``limit`` (``clock()`` seconds). The loop
    asks before each update but the first; the time since the previous ask (or since this
    object was made, just before the loop) is the last update's duration. So an image is out
    by the deadline unless its first update alone overruns it. With a 100 ms deadline the
    real-time preset's p99 over the 120-frame bench scan was 115-152 ms in five runs when the
    loop stopped only once past the deadline, and 107-109 ms in three runs with this test."""

    def __init__(self, limit: float, clock):
        self.limit, self.clock = limit, clock
        self.last = clock()

    def __call__(self) -> bool:
        now = self.clock()
        step, self.last = now - self.last, now
        return now + step >= self.limit


def _factory(cfg, device, protocol):
    """The streaming reconstructor for ``cfg.recon`` (imunne, altun, dune or flat).

    ``cfg.model`` defaults to the shipped ``<kind>_small.safetensors``. The implicit network
    (imunne) warm-starts from the previous window (its fixed point does not depend on the
    start); FLAT warm-starts by entering its flow half-way (``FLAT.warm_time``) between each
    frame's CG-SENSE start and the previous estimate, taking the remaining steps only; the
    other finite unrolled networks (altun, dune) were trained from the CG-SENSE start and get
    it for every window. All stop at the deadline (IMUNNE, DUNE: fewer iterations; FLAT: the
    rest of the flow in one step)."""
    path = model_path(cfg.recon, cfg.model)
    model, meta = load_model(path, device)
    if meta["kind"] != cfg.recon:
        raise ValueError(f"model {path} is a {meta['kind']!r} network, not {cfg.recon!r}")
    if cfg.recon not in ("imunne", "flat") and cfg.warm_start:
        log.info("%s is a finite unrolled network: every window starts from CG-SENSE (no warm start)", cfg.recon)
        cfg = dataclasses.replace(cfg, warm_start=False)
    training = meta.get("training") or {}
    val = (training.get("val") or [{}])[-1]
    log.info("network %s from %s (%s training steps; validation %s)", meta["kind"], path, training.get("steps", "?"),
             ", ".join(f"{k} {v:.3g}" for k, v in val.items() if k != "step" and isinstance(v, (int, float))) or "-")
    trained = meta.get("streaming")     # a model fine-tuned for one streaming schedule says which
    if trained:
        asked = {"window": cfg.window, "lookahead": cfg.lookahead, "updates": cfg.max_iterations}
        differ = {k: (asked[k], v) for k, v in trained.items() if k in asked and asked[k] != v}
        if differ:
            log.warning("model %s was trained for window %s, lookahead %s, %s update(s) per window; this "
                        "chain asks %s: its images will be worse (set window, lookahead and max_iterations "
                        "as trained)", path, trained.get("window"), trained.get("lookahead"),
                        trained.get("updates"), ", ".join(f"{k} {a}" for k, (a, _) in differ.items()))
    recon = StreamingNetworkRecon(model, cfg, device, shape=(protocol.matrix, protocol.matrix))
    recon.name = cfg.recon
    recon.warm_up(cfg.virtual_coils or protocol.coils or 1, protocol.spokes_per_frame or 13,
                  protocol.samples or 2 * protocol.matrix)
    return recon


def _cs_factory(cfg, device, protocol):
    """``recon: cs``: streaming temporal TV in this module's machinery (recon_core/streaming_cs.py)."""
    from ..streaming_cs import make_streaming_cs
    return make_streaming_cs(cfg, device, protocol)


RECONSTRUCTORS = {kind: _factory for kind in NETWORK_RECONS}
RECONSTRUCTORS["cs"] = _cs_factory
