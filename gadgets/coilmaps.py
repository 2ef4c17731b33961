"""Coil maps for the stream: ESPIRiT in the background, a fast fallback meanwhile.

The calibration pool holds the spokes of the latest ``calibration_frames`` frames. When
it first fills (and every ``refresh`` frames after, if asked), ESPIRiT runs on a worker
thread at lower CPU priority (``ESPIRIT_NICE``); the new maps are swapped in between
frames, never computed on the frame path. sigpy is imported and ESPIRiT run once on a tiny input when the service starts (see
:func:`recon_core.coils.warm_up_espirit`).

First maps: with ``first_frames = F > 0`` a first ESPIRiT runs as soon as the pool holds
``F`` frames, on a coarser ``first_grid`` grid (:func:`recon_core.coils.espirit_maps`: 3.5-4.5x
faster, the same maps inside the support to a correlation of 0.9998); the full-resolution
maps from ``calibration_frames`` frames follow on the same thread and replace them. Four
frames of 13 spokes sample the central 24x24 calibration block at Nyquist (38 spokes).
Until the first ESPIRiT maps exist, frames use low-resolution maps from the spokes pooled
so far (the first set on the frame path, then recomputed in the background each time the
pool doubles), unless ``wait`` holds them back (reproducible offline runs; they wait for the
full maps, with no first maps).

When the ESPIRiT maps are installed depends on the CPU: as soon as the worker is done. With
``lag = N > 0`` an update started at frame k is installed at frame k + N exactly (waited
for if need be), so that an unpaced replay gives the same images on every run and on
every machine (``first_lag`` for the first maps); at scanner pace on the 2-core CPU full
maps arrive about 15 frames after calibration starts, so ``N = 15`` makes an unpaced replay
see what a paced one sees.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from recon_core.coils import calibration_images, espirit_maps, lowres_maps, pool_spokes, warm_up_espirit

log = logging.getLogger("rtcine.coilmaps")


class CoilMapService:
    def __init__(self, shape, method: str = "espirit", calibration_frames: int = 10, refresh: int = 0,
                 device: str = "cpu", lag: int = 0, first_frames: int = 0, first_grid: int = 64,
                 first_lag: int = 0, lowres_support: float = 0.0, espirit_support: float = 0.0):
        self.shape = tuple(shape)
        self.lowres_support, self.espirit_support = lowres_support, espirit_support
        self.method = method
        self.calibration_frames = calibration_frames
        self.refresh = refresh
        self.lag = lag
        # first maps only when they come before the full ones, and only for ESPIRiT
        self.first_frames = first_frames if method == "espirit" and 0 < first_frames < calibration_frames else 0
        self.first_grid, self.first_lag = first_grid, first_lag
        self.device = torch.device(device)
        self.pool: deque = deque(maxlen=calibration_frames)
        self.frames_seen = 0
        self.maps: torch.Tensor | None = None
        self.source = "none"
        self._fallback: torch.Tensor | None = None
        self._fallback_frames = -1
        if method == "espirit":
            took = warm_up_espirit()       # before the first frame, not on the calibration thread
            if took:
                log.debug("ESPIRiT warmed up in %.2f s", took)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espirit", initializer=_lower_priority)
        # ESPIRiT updates started and not yet installed, oldest first: (future, install frame or 0)
        self._pending: deque[tuple[Future, int]] = deque()
        # refreshed fallback maps are computed beside the frames too (25-40 ms each on a 2-core
        # AVX2 CPU: on the frame path each refresh set a real-time stream back by about a frame)
        self._fallback_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fallback-maps")
        self._fallback_future: Future | None = None
        self.updates = 0

    # -- pool -------------------------------------------------------------------------
    def add(self, frame) -> None:
        """Add a frame's spokes ``kspace (C, S, R)``, ``coords (S, R, 2)`` to the pool."""
        if self.pool and self.pool[-1][0].shape[0] != frame.kspace.shape[0]:
            raise ValueError(f"frame {frame.index} has {frame.kspace.shape[0]} coils, "
                             f"earlier frames had {self.pool[-1][0].shape[0]}")
        self.pool.append((frame.kspace, frame.coords))
        self.frames_seen += 1
        if self.first_frames and self.frames_seen == self.first_frames:
            self.start_update(grid=self.first_grid, lag=self.first_lag)
        full = len(self.pool) == self.calibration_frames
        due = self.frames_seen == self.calibration_frames or (
            self.refresh and self.frames_seen > self.calibration_frames
            and (self.frames_seen - self.calibration_frames) % self.refresh == 0)
        if full and due:
            self.start_update()

    def _pooled(self):
        return pool_spokes(self.pool)                     # (S_total, C, R), (S_total, R, 2)

    def _compute(self, data, coords, method, grid: int = 0):
        images = calibration_images(data, coords, self.shape)
        if method == "espirit":
            maps = espirit_maps(images, grid=grid, support=self.espirit_support)
        else:
            maps = lowres_maps(images, support=self.lowres_support)
        return torch.from_numpy(maps).to(self.device)

    def start_update(self, grid: int = 0, lag: int | None = None) -> None:
        """Start computing maps from the current pool (in the background for ESPIRiT; on a
        ``grid x grid`` grid if ``grid``, installed ``lag`` frames later if ``lag``, default
        the service's). A refresh is skipped while an update from before it is still running;
        the full maps after the first maps are not."""
        if self.method == "lowres":
            data, coords = self._pooled()
            self._install(self._compute(data, coords, "lowres"), "lowres")
            return
        initial = self.frames_seen <= self.calibration_frames
        if not initial and any(not f.done() for f, _ in self._pending):
            log.info("coil map update still running; skipping this refresh")
            return
        data, coords = self._pooled()
        lag = self.lag if lag is None else lag
        log.info("ESPIRiT calibration from %d spokes started in the background%s", data.shape[0],
                 f" ({grid}x{grid} grid)" if grid else "")
        future = self._executor.submit(self._compute, data, coords, "espirit", grid)
        self._pending.append((future, self.frames_seen + lag if lag else 0))

    def _install(self, maps, source):
        self.maps, self.source = maps, source
        self.updates += 1

    def _collect(self, block: bool = False) -> None:
        """Install the pending updates that are due, in the order they were started: each
        at its install frame (waited for, if need be) when it has one, else once done."""
        while self._pending:
            future, at = self._pending[0]
            if not block:
                if at and self.frames_seen < at:
                    return                                   # not yet its frame
                if not at and not future.done():
                    return
            self._pending.popleft()
            self._install(future.result(), "espirit")
            log.info("ESPIRiT maps installed (update %d)", self.updates)

    # -- maps for a frame ----------------------------------------------------------------
    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def ready(self) -> bool:
        self._collect()
        return self.maps is not None and (self.method != "espirit" or self.source == "espirit")

    def finish(self) -> None:
        """Block until maps from the pool exist (end of stream: calibrate on what arrived)."""
        if not self._pending and not self.ready() and self.pool:
            self.start_update()
        self._collect(block=True)

    def current(self):
        """Maps ``(C, Y, X)`` for the next frame and their source (espirit, lowres, fallback)."""
        self._collect()
        if self.maps is not None:
            return self.maps, self.source
        # recomputed when the pool has doubled (1, 2, 4, 8... frames): each new map set makes the
        # network re-prepare its window, so maps that change every frame would cost more than they
        # give. The first set is computed here (the frame needs it); later ones in the background
        # while the frame that started them is reconstructed, and installed for the next frame
        # (waited for, if need be: which frames get which maps does not depend on timing)
        if self._fallback_future is not None and self.frames_seen > self._fallback_frames:
            future, self._fallback_future = self._fallback_future, None
            self._fallback = future.result()
        if self._fallback is None:
            data, coords = self._pooled()
            self._fallback = self._compute(data, coords, "lowres")
            self._fallback_frames = self.frames_seen
        elif self._fallback_future is None and self.frames_seen >= 2 * self._fallback_frames:
            data, coords = self._pooled()
            self._fallback_future = self._fallback_executor.submit(self._compute, data, coords, "lowres")
            self._fallback_frames = self.frames_seen
        return self._fallback, "fallback"

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._fallback_executor.shutdown(wait=False, cancel_futures=True)


#: how much lower the ESPIRiT thread's CPU priority is than the chain's (Linux ``nice``)
ESPIRIT_NICE = 10


def _lower_priority() -> None:
    """Run the calling thread (the ESPIRiT thread) at ``ESPIRIT_NICE`` lower priority.

    ESPIRiT takes a core for ~0.6 s at the start of a scan, while the preparation and solver
    threads need both. Measured on the 2-core CPU, real-time preset, 120 frames, 6 interleaved
    pairs of runs: p99 100-126 ms niced against 101-151 ms not (3 of 6 at 144-151), PSNR
    26.34-26.77 against 26.31-26.61 dB; the maps arrive a few frames later (frame 25-36
    against 19-30). Linux only (a thread is a task there); elsewhere nothing changes."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + ESPIRIT_NICE))
    except (AttributeError, OSError) as exc:        # not Linux, or not permitted: run as is
        log.debug("ESPIRiT thread priority unchanged: %s", exc)
