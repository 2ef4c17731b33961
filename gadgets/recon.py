"""Reconstruction gadget: frames in, (frame, image, info) out, with the coil-map service.

A *frame reconstructor* has two methods:

- ``push(frame, maps) -> list[(frame, image (Y, X) complex64 numpy, info dict)]``: take
  one frame; return the frames whose images are ready (classical methods return the
  frame at once; windowed networks may return earlier frames);
- ``flush() -> list[...]``: the images still held at the end of the stream.
"""
from __future__ import annotations

import logging
import os
import time

import torch

from recon_core.frame_prep import PreparedFrame, combine, prepare_frame
from recon_core.solvers import conjugate_gradient

from .coilmaps import CoilMapService
from .feeder import ThreadedSource
from .frames import Frame, SliceEnd

log = logging.getLogger("rtcine.recon")


class ClassicalRecon:
    """Gridding or CG-SENSE, one frame at a time."""

    def __init__(self, name: str, cfg, device: torch.device, fallback: str = "", shape=None):
        self.name, self.cfg, self.device = name, cfg, device
        self.shape = shape              # (Y, X) image matrix
        self.reduced = False            # set by the overload guard
        self.held = False
        self.fallback = fallback        # why this replaces the asked reconstruction ("" if it does not)

    def prepare(self, frame: Frame) -> PreparedFrame:
        """The frame's map-independent NUFFTs (see recon_core/frame_prep.py); may run ahead."""
        return prepare_frame(frame.kspace, frame.coords, self.shape, self.device,
                             toeplitz=self.name == "cgsense")

    def push(self, frame: Frame, maps: torch.Tensor):
        prep = frame.prepared if frame.prepared is not None else self.prepare(frame)
        rhs = combine(prep.coil_images, maps)[None]
        if self.name == "gridding":
            image = rhs
            info = {"recon": "gridding"}
        else:
            iterations = max(1, self.cfg.cg_iterations // 4) if self.reduced else self.cfg.cg_iterations
            image = conjugate_gradient(prep.operator(maps).normal, rhs, iterations=iterations,
                                       lam=self.cfg.cg_lambda)
            info = {"recon": "cgsense", "iterations": iterations}
        if self.fallback:
            info["fallback"] = self.fallback
        return [(frame, image[0].cpu().numpy(), info)]

    def flush(self):
        return []

    def fresh(self) -> "ClassicalRecon":
        """A reconstructor of the same kind with no state (for another slice's cine)."""
        return ClassicalRecon(self.name, self.cfg, self.device, fallback=self.fallback, shape=self.shape)


def _matrix(protocol) -> tuple[int, int]:
    return (protocol.matrix, protocol.matrix)


#: name -> factory(cfg, device, protocol); networks register themselves here.
RECONSTRUCTORS = {
    "gridding": lambda cfg, device, protocol: ClassicalRecon("gridding", cfg, device, shape=_matrix(protocol)),
    "cgsense": lambda cfg, device, protocol: ClassicalRecon("cgsense", cfg, device, shape=_matrix(protocol)),
}


#: errors of a network factory that mean "the model cannot be loaded" (missing, corrupt,
#: of the wrong kind): the chain then falls back to CG-SENSE
MODEL_ERRORS = (FileNotFoundError, ValueError, OSError, KeyError, RuntimeError)


def make_reconstructor(cfg, device, protocol):
    """The frame reconstructor ``cfg.recon`` names.

    Policy for a network whose model file is missing or cannot be loaded (corrupt, or not
    a streaming network): fall back to CG-SENSE rather than refuse the stream. The patient
    is in the scanner and a real-time scan cannot wait for a fixed model file; the images
    say what happened (meta ``rtcine_recon=cgsense``, ``rtcine_fallback=<the cause>``),
    the log says it at ERROR, and ``stats.fallback`` keeps it.
    """
    if cfg.recon not in RECONSTRUCTORS:
        # networks live in recon_core.networks and register on import
        from recon_core.networks import streaming  # noqa: F401  (registers the networks)
        RECONSTRUCTORS.update(streaming.RECONSTRUCTORS)
    if cfg.recon in ("gridding", "cgsense"):
        return RECONSTRUCTORS[cfg.recon](cfg, device, protocol)
    try:
        return RECONSTRUCTORS[cfg.recon](cfg, device, protocol)
    except MODEL_ERRORS as exc:
        reason = f"{cfg.recon} model {cfg.model or '(default)'} not loaded: {type(exc).__name__}: {exc}"
        log.error("%s; reconstructing with CG-SENSE instead (%d iterations)", reason, cfg.cg_iterations)
        return ClassicalRecon("cgsense", cfg, device, fallback=reason, shape=_matrix(protocol))


#: under overload=reduce, a frame more than this many times queue_size frames behind, and more
#: than CATCH_UP_S seconds, gets its gridding image only (OverloadGuard)
CATCH_UP_QUEUES = 4
CATCH_UP_S = 0.5


class OverloadGuard:
    """Keeps latency bounded when frames arrive faster than they are reconstructed.

    A frame's *backlog* is how many frame intervals have passed since its last spoke
    arrived when its reconstruction starts. Above ``queue_size`` frames of backlog the
    policy acts (``none``: never; the bounded input queue then slows the sender): ``skip`` drops the frame (no image; logged and counted, the chain
    catches up with the newest frames), ``reduce`` reconstructs it with the reduced
    budget (a network updates only the newest frame of its window, once; CG-SENSE runs a
    quarter of its iterations) until the backlog is back under half the queue. Under
    ``reduce``, a frame more than :data:`CATCH_UP_QUEUES` x ``queue_size`` frames and
    :data:`CATCH_UP_S` behind (a start-up backlog: ``<execute>`` imports torch while the spokes
    arrive) is *stale*: it gets
    its gridding image only (one NUFFT, :meth:`prepare_fresh`, no solve; meta
    ``rtcine_recon=gridding``, ``rtcine_overload=catch-up``), so that the chain catches up
    with the scanner instead of staying seconds behind, and every frame still has an image;
    such frames count as reduced, and each catch-up is logged once.
    """

    def __init__(self, cfg, frame_interval_s: float, stats, clock=time.perf_counter):
        self.cfg, self.interval, self.stats, self.clock = cfg, frame_interval_s, stats, clock
        self.reducing = False
        self.catching_up = 0            # stale frames in the current catch-up
        self.stale_now = False          # set by admit(): the admitted frame gets its catch-up image

    def stale(self, frame: Frame) -> bool:
        """Under ``reduce``: too far behind to be worth reconstructing (see the class docstring)."""
        if self.cfg.overload != "reduce" or frame.partial or self.interval <= 0:
            return False
        return self.backlog(frame) > max(CATCH_UP_QUEUES * self.cfg.queue_size, CATCH_UP_S / self.interval)

    def prepare_fresh(self, prepare, shape, device):
        """``prepare`` for the frames that are not :meth:`stale`; a stale one gets its coil
        images only (one NUFFT, no Toeplitz kernel), all that :meth:`catch_up_image` needs."""
        def run(frame):
            if self.stale(frame):
                return prepare_frame(frame.kspace, frame.coords, shape, device, toeplitz=False)
            return prepare(frame)
        return run

    def catch_up_image(self, frame: Frame, maps: torch.Tensor, shape, device):
        """``(frame, image, info)``: the stale frame's gridding image with ``maps``."""
        prep = frame.prepared
        if prep is None:
            prep = prepare_frame(frame.kspace, frame.coords, shape, device, toeplitz=False)
        image = combine(prep.coil_images, maps)
        return frame, image.cpu().numpy(), {"recon": "gridding", "overload": "catch-up"}

    def backlog(self, frame: Frame) -> float:
        if self.interval <= 0:
            return 0.0
        return (self.clock() - frame.arrival) / self.interval

    def admit(self, frame: Frame, held: bool = False) -> bool:
        """False if the frame is to be skipped; sets ``self.reducing`` for the reduce policy.
        Frames deliberately ``held`` for the first coil maps (``wait_for_maps``) are exempt.
        ``self.stale_now``: this frame gets its catch-up image (see the class docstring)."""
        self.stale_now = False
        if held or self.cfg.overload == "none":
            return True
        lag = self.backlog(frame)
        if self.stale(frame):
            if not self.catching_up:
                log.warning("overload: %.1f frames (%.2f s) behind at frame %d: gridding images only, to catch up",
                            lag, lag * self.interval, frame.index)
            self.catching_up += 1
            self.stats.reduced_frames += 1
            self.stale_now = True
            return True
        if self.catching_up:
            log.warning("overload: caught up at frame %d (%.1f frames behind) after %d gridding-only frames",
                        frame.index, lag, self.catching_up)
            self.catching_up = 0
        if self.cfg.overload == "skip":
            if lag > self.cfg.queue_size and not frame.partial:
                self.stats.skipped_frames += 1
                self.stats.skipped.append(frame.index)
                log.warning("overload: frame %d skipped (%.1f frames behind, queue_size %d); %d skipped so far",
                            frame.index, lag, self.cfg.queue_size, self.stats.skipped_frames)
                return False
            return True
        if lag > self.cfg.queue_size and not self.reducing:
            self.reducing = True
            log.warning("overload: %.1f frames behind at frame %d: reducing iterations", lag, frame.index)
        elif self.reducing and lag < self.cfg.queue_size / 2:
            self.reducing = False
            log.info("overload over at frame %d: full iterations again", frame.index)
        if self.reducing:
            self.stats.reduced_frames += 1
        return True


class _SliceState:
    """One slice's reconstruction state: coil maps (calibrated from its frames), the
    reconstructor (network window, warm start, intensity scale), frames held for its first
    maps and the source of the maps its last frame was given."""
    __slots__ = ("maps", "recon", "held", "used")

    def __init__(self, maps: CoilMapService, recon):
        self.maps, self.recon, self.held, self.used = maps, recon, [], maps.source


def reconstruct_frames(items, cfg, protocol, stats, clock=time.perf_counter):
    """Turn :class:`Frame` items into ``(frame, image, info)`` tuples; pass others through.

    ``info`` carries the recon name, the coil-map source and the latency in ms from the
    frame's last spoke to the moment its image is ready. Overload is handled by
    :class:`OverloadGuard`.

    Each slice (``frame.slice``) is its own cine: its own :class:`CoilMapService` (maps from
    its own frames; fallback maps until its ESPIRiT maps, as at the start of a scan) and its
    own reconstructor state (``recon.fresh()``: window, warm start, intensity scale). A
    :class:`~gadgets.frames.SliceEnd` flushes that slice (its held frames, the network's
    look-ahead) and frees its state.

    With ``cfg.pipeline`` the input stream (the chain's gadgets upstream: validation,
    prewhitening, framing) and each frame's map-independent work (``recon.prepare``: its
    NUFFTs) run on a thread of their own, at most ``queue_size`` items ahead, while this
    thread solves the previous frames: a frame's NUFFTs overlap the previous frame's solve.
    """
    device = torch.device(cfg.device)
    set_threads(cfg.threads)
    shape = (protocol.matrix, protocol.matrix)
    recon = make_reconstructor(cfg, device, protocol)
    stats.fallback = getattr(recon, "fallback", "")
    stride = cfg.frame_stride or protocol.spokes_per_frame
    guard = OverloadGuard(cfg, stride * protocol.tr_ms / 1e3, stats, clock)
    ahead = None
    if cfg.pipeline:
        items = ahead = ThreadedSource(_prepared(items, guard.prepare_fresh(recon.prepare, shape, device)),
                                       maxsize=cfg.queue_size, stamp=False, name="rtcine-prepare")
    slices: dict[int, _SliceState] = {}

    def coil_maps() -> CoilMapService:
        return CoilMapService(shape, cfg.coil_maps, cfg.calibration_frames, cfg.coil_map_refresh, cfg.device,
                              cfg.espirit_lag, first_frames=0 if cfg.wait_for_maps else cfg.first_maps_frames,
                              first_grid=cfg.first_maps_grid, first_lag=cfg.first_maps_lag,
                              lowres_support=cfg.lowres_support, espirit_support=cfg.espirit_support)

    # the first slice's state is made before the first frame (ESPIRiT warmed up, the reconstructor
    # built above): a scan's first frames do not wait for it
    spare = [_SliceState(coil_maps(), recon)]

    def open_slice(number: int) -> _SliceState:
        st = slices[number] = spare.pop() if spare else _SliceState(coil_maps(), _fresh(recon, cfg, device, protocol))
        if number or len(slices) > 1:
            log.info("slice %d: its own coil maps and reconstruction state", number)
        return st

    def finish(results, source):
        now = clock()
        for frame, image, info in results:
            info = dict(info, coil_maps=source, latency_ms=(now - frame.arrival) * 1e3)
            stats.maps_used[source] = stats.maps_used.get(source, 0) + 1
            if source == "espirit" and stats.first_espirit_frame < 0:
                stats.first_espirit_frame = frame.index
            stats.latencies_ms.append(info["latency_ms"])
            if "iterations" in info:
                stats.iterations.append(info["iterations"])
            yield frame, image, info

    def run(st: _SliceState, frame, was_held=False):
        if not guard.admit(frame, was_held):
            return
        if guard.stale_now:             # far behind: its gridding image, no solve (OverloadGuard)
            current, source = st.maps.current()
            yield from finish([guard.catch_up_image(frame, current, shape, device)], source)
            return
        st.recon.reduced = guard.reducing
        st.recon.held = was_held        # frames held for the first coil maps: no deadline either
        current, source = st.maps.current()
        st.used = source
        yield from finish(st.recon.push(frame, current), source)

    def close_slice(number: int):
        st = slices.pop(number, None)
        if st is None:
            return
        try:
            if st.held:
                st.maps.finish()
                for frame in st.held:
                    yield from run(st, frame, was_held=True)
                st.held = []
            yield from finish(st.recon.flush(), st.used)      # flushed with the maps of the last push
        finally:
            st.maps.close()

    try:
        for item in items:
            if isinstance(item, SliceEnd):
                yield from close_slice(item.slice)
                continue
            if not isinstance(item, Frame):
                yield item
                continue
            st = slices.get(item.slice)
            if st is None:
                st = open_slice(item.slice)
            maps = st.maps
            maps.add(item)
            st.held.append(item)
            waited = False
            if cfg.wait_for_maps and not maps.ready():
                if not maps.pending:
                    continue
                maps.finish()
                waited = True
            batch, st.held = st.held, []
            for frame in batch:
                yield from run(st, frame, was_held=waited)
        for number in list(slices):
            yield from close_slice(number)
    finally:
        if ahead is not None:
            ahead.close()
        for st in list(slices.values()) + spare:
            st.maps.close()


def _fresh(recon, cfg, device, protocol):
    """A stateless reconstructor like ``recon`` for another slice: ``recon.fresh()`` (the model
    shared, not loaded again), else a new one from :func:`make_reconstructor`."""
    fresh = getattr(recon, "fresh", None)
    return fresh() if fresh is not None else make_reconstructor(cfg, device, protocol)


def warm_up(cfg=None, protocol=None) -> None:
    """What the first scan should not wait for, done once per process before it: sigpy's
    import and first ESPIRiT run and, with ``cfg``, its reconstructor built (a network's model
    loaded and run on throwaway windows: first calls are slow, memory pools and convolution
    plans, and the process keeps them) for ``protocol``, by default a typical stream
    (128x128, 8 coils or ``virtual_coils``, 13 spokes). ``rtcine serve`` calls it before it
    listens, ``rtcine bench`` before each timed replay."""
    from recon_core.coils import warm_up_espirit
    from recon_core.mrd import RadialProtocol

    warm_up_espirit()
    if cfg is None:
        return
    if protocol is None:
        protocol = RadialProtocol(matrix=128, samples=256, coils=cfg.virtual_coils or 8,
                                  spokes_per_frame=cfg.spokes_per_frame or 13, ordering=None, tr_ms=3.0, fov_mm=300.0)
    set_threads(cfg.threads)
    make_reconstructor(cfg, torch.device(cfg.device), protocol)


def set_threads(threads: int = 0) -> int:
    """Threads per torch (and finufft) call, process-wide: ``threads``, or 0 for half the
    cores (at least 1). Measured on the 2-core CPU, 400-frame stream, IMUNNE real-time
    preset with the preparation thread: 1 thread kept up (ratio 0.99, median latency
    250-290 ms) where 2 fell behind (0.96-0.97, 1.3-1.5 s): the threads of two concurrent
    2-thread calls contend for the 2 cores."""
    n = threads or max(1, (os.cpu_count() or 2) // 2)
    _warn_blas_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
        log.info("torch: %d thread(s) per call", n)
    return n


_blas_warned = False


def _warn_blas_threads() -> None:
    """Warn once per process when ``OPENBLAS_NUM_THREADS`` is unset. numpy's OpenBLAS then starts
    a busy-waiting thread per core for ESPIRiT on the calibration thread, which fights the
    chain's threads: on the 2-core CPU, paced replays of the 5 shifted val scans from a script
    without it had p99 up to 206 ms and ESPIRiT's maps later (``coils_00``'s SSIM 0.78-0.87)
    against p99 <= 116 ms (0.90-0.92) with it. It must be set before numpy loads, so it is only
    checked here: ``rtcine``, the Dockerfile and the systemd units set it to 1."""
    global _blas_warned
    if not _blas_warned and "OPENBLAS_NUM_THREADS" not in os.environ and (os.cpu_count() or 1) > 1:
        _blas_warned = True
        log.warning("OPENBLAS_NUM_THREADS is not set: numpy's BLAS threads (ESPIRiT) will compete with the "
                    "chain's threads and raise its latency; set OPENBLAS_NUM_THREADS=1 before Python starts "
                    "(the rtcine command does)")


def _prepared(items, prepare):
    """Pass ``items`` on, each :class:`Frame` with ``frame.prepared = prepare(frame)``."""
    for item in items:
        if isinstance(item, Frame):
            item.prepared = prepare(item)
        yield item
