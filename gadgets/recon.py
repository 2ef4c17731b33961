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
from .frames import Frame

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


class OverloadGuard:
    """Keeps latency bounded when frames arrive faster than they are reconstructed.

    A frame's *backlog* is how many frame intervals have passed since its last spoke
    arrived when its reconstruction starts. Above ``queue_size`` frames of backlog the
    policy acts (``none``: never; the bounded input queue then slows the sender): ``skip`` drops the frame (no image; logged and counted, the chain
    catches up with the newest frames), ``reduce`` reconstructs it with the reduced
    budget (a network updates only the newest frame of its window, once; CG-SENSE runs a
    quarter of its iterations) until the backlog is back under half the queue.
    """

    def __init__(self, cfg, frame_interval_s: float, stats, clock=time.perf_counter):
        self.cfg, self.interval, self.stats, self.clock = cfg, frame_interval_s, stats, clock
        self.reducing = False

    def backlog(self, frame: Frame) -> float:
        if self.interval <= 0:
            return 0.0
        return (self.clock() - frame.arrival) / self.interval

    def admit(self, frame: Frame, held: bool = False) -> bool:
        """False if the frame is to be skipped; sets ``self.reducing`` for the reduce policy.
        Frames deliberately ``held`` for the first coil maps (``wait_for_maps``) are exempt."""
        if held or self.cfg.overload == "none":
            return True
        lag = self.backlog(frame)
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


def reconstruct_frames(items, cfg, protocol, stats, clock=time.perf_counter):
    """Turn :class:`Frame` items into ``(frame, image, info)`` tuples; pass others through.

    ``info`` carries the recon name, the coil-map source and the latency in ms from the
    frame's last spoke to the moment its image is ready. Overload is handled by
    :class:`OverloadGuard`.

    With ``cfg.pipeline`` the input stream (the chain's gadgets upstream: validation,
    prewhitening, framing) and each frame's map-independent work (``recon.prepare``: its
    NUFFTs) run on a thread of their own, at most ``queue_size`` items ahead, while this
    thread solves the previous frames: a frame's NUFFTs overlap the previous frame's solve.
    """
    device = torch.device(cfg.device)
    set_threads(cfg.threads)
    shape = (protocol.matrix, protocol.matrix)
    maps = CoilMapService(shape, cfg.coil_maps, cfg.calibration_frames, cfg.coil_map_refresh, cfg.device)
    recon = make_reconstructor(cfg, device, protocol)
    stats.fallback = getattr(recon, "fallback", "")
    stride = cfg.frame_stride or protocol.spokes_per_frame
    guard = OverloadGuard(cfg, stride * protocol.tr_ms / 1e3, stats, clock)
    held: list[Frame] = []
    ahead = None
    if cfg.pipeline:
        items = ahead = ThreadedSource(_prepared(items, recon.prepare), maxsize=cfg.queue_size, stamp=False,
                                       name="rtcine-prepare")

    used = [maps.source]            # source of the maps the last pushed frame was given

    def finish(results, source):
        now = clock()
        for frame, image, info in results:
            info = dict(info, coil_maps=source, latency_ms=(now - frame.arrival) * 1e3)
            stats.latencies_ms.append(info["latency_ms"])
            if "iterations" in info:
                stats.iterations.append(info["iterations"])
            yield frame, image, info

    def run(frame, was_held=False):
        if not guard.admit(frame, was_held):
            return
        recon.reduced = guard.reducing
        recon.held = was_held           # frames held for the first coil maps: no deadline either
        current, source = maps.current()
        used[0] = source
        yield from finish(recon.push(frame, current), source)

    try:
        for item in items:
            if not isinstance(item, Frame):
                yield item
                continue
            maps.add(item)
            held.append(item)
            waited = False
            if cfg.wait_for_maps and not maps.ready():
                if not maps.pending:
                    continue
                maps.finish()
                waited = True
            batch, held = held, []
            for frame in batch:
                yield from run(frame, was_held=waited)
        if held:
            maps.finish()
            for frame in held:
                yield from run(frame, was_held=True)
        yield from finish(recon.flush(), used[0])      # flushed with the maps of the last push
    finally:
        if ahead is not None:
            ahead.close()
        maps.close()


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
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
        log.info("torch: %d thread(s) per call", n)
    return n


def _prepared(items, prepare):
    """Pass ``items`` on, each :class:`Frame` with ``frame.prepared = prepare(frame)``."""
    for item in items:
        if isinstance(item, Frame):
            item.prepared = prepare(item)
        yield item
