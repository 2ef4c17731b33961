"""Coil maps for the stream: ESPIRiT in the background, a fast fallback meanwhile.

The calibration pool holds the spokes of the latest ``calibration_frames`` frames. When
it first fills (and every ``refresh`` frames after, if asked), ESPIRiT runs on a worker
thread at lower CPU priority (``ESPIRIT_NICE``); the new maps are swapped in between
frames, never computed on the frame path. sigpy is imported and ESPIRiT run once on a tiny input when the service starts (see
:func:`recon_core.coils.warm_up_espirit`). Until the first ESPIRiT maps exist, frames use
low-resolution maps from the spokes pooled so far (the first set on the frame path, then
recomputed in the background each time the pool doubles), unless ``wait`` holds them back (reproducible offline runs).

When the ESPIRiT maps are installed depends on the CPU: as soon as the worker is done. With
``lag = N > 0`` an update started at frame k is installed at frame k + N exactly (waited
for if need be), so that an unpaced replay gives the same images on every run and on
every machine; at scanner pace on the 2-core CPU they arrive about 15 frames after
calibration starts, so ``N = 15`` makes an unpaced replay see what a paced one sees.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from recon_core.coils import calibration_images, espirit_maps, lowres_maps, warm_up_espirit

log = logging.getLogger("rtcine.coilmaps")


class CoilMapService:
    def __init__(self, shape, method: str = "espirit", calibration_frames: int = 10, refresh: int = 0,
                 device: str = "cpu", lag: int = 0):
        self.shape = tuple(shape)
        self.method = method
        self.calibration_frames = calibration_frames
        self.refresh = refresh
        self.lag = lag
        self._started_at = 0
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
        self._future: Future | None = None
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
        full = len(self.pool) == self.calibration_frames
        due = self.frames_seen == self.calibration_frames or (
            self.refresh and self.frames_seen > self.calibration_frames
            and (self.frames_seen - self.calibration_frames) % self.refresh == 0)
        if full and due:
            self.start_update()

    def _pooled(self):
        data = np.concatenate([k.transpose(1, 0, 2) for k, _ in self.pool])    # (S_total, C, R)
        coords = np.concatenate([c for _, c in self.pool])                      # (S_total, R, 2)
        return data, coords

    def _compute(self, data, coords, method):
        images = calibration_images(data, coords, self.shape)
        maps = espirit_maps(images) if method == "espirit" else lowres_maps(images)
        return torch.from_numpy(maps).to(self.device)

    def start_update(self) -> None:
        """Start computing maps from the current pool (in the background for ESPIRiT)."""
        if self._future is not None and not self._future.done():
            log.info("coil map update still running; skipping this refresh")
            return
        data, coords = self._pooled()
        if self.method == "lowres":
            self._install(self._compute(data, coords, "lowres"), "lowres")
            return
        log.info("ESPIRiT calibration from %d spokes started in the background", data.shape[0])
        self._future = self._executor.submit(self._compute, data, coords, "espirit")
        self._started_at = self.frames_seen

    def _install(self, maps, source):
        self.maps, self.source = maps, source
        self.updates += 1

    def _collect(self, block: bool = False) -> None:
        if self._future is not None and self.lag and not block:
            if self.frames_seen < self._started_at + self.lag:
                return                                   # not yet its frame
            block = True                                 # its frame: install it, ready or not
        if self._future is not None and (block or self._future.done()):
            future, self._future = self._future, None
            self._install(future.result(), "espirit")
            log.info("ESPIRiT maps installed (update %d)", self.updates)

    # -- maps for a frame ----------------------------------------------------------------
    @property
    def pending(self) -> bool:
        return self._future is not None

    def ready(self) -> bool:
        self._collect()
        return self.maps is not None and (self.method != "espirit" or self.source == "espirit")

    def finish(self) -> None:
        """Block until maps from the pool exist (end of stream: calibrate on what arrived)."""
        if self._future is None and not self.ready() and self.pool:
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
