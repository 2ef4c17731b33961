"""Frame buffer gadget: radial spokes in, frames of spokes out (optionally a sliding window)."""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

import ismrmrd
import numpy as np

from recon_core.mrd import RadialProtocol, acquisition_coordinates, is_noise

from .feeder import arrival_time

log = logging.getLogger("rtcine.frames")


@dataclass
class Frame:
    """One frame's spokes.

    kspace ``(C, S, R)`` complex64; coords ``(S, R, 2)`` float32 in cycles/pixel;
    ``index`` counts frames from 0; ``last`` is the frame's last acquisition (its header
    seeds the image header); ``arrival`` the ``time.perf_counter()`` at which the last
    spoke arrived; ``partial`` is True for a last frame with fewer spokes than asked; ``prepared`` holds
    what the reconstructor computed from it ahead of reconstruction (None until then).
    """
    index: int
    kspace: np.ndarray
    coords: np.ndarray
    last: ismrmrd.Acquisition
    arrival: float
    partial: bool = False
    prepared: object = None     # the reconstructor's map-independent work, done ahead (gadgets/recon.py)

    @property
    def spokes(self) -> int:
        return self.kspace.shape[1]


class ProfileCounter:
    """Unwraps the 16-bit profile counter ``idx.kspace_encode_step_1`` of a long stream: a
    drop of more than half the range (65535 -> 0) counts as a wrap, so spoke 65536 keeps its
    own golden angle instead of spoke 0's (a real-time scan passes 65536 spokes after 3.3 min
    at TR 3 ms). Smaller steps back (repeated or reordered spokes) are taken as they come."""

    RANGE = 1 << 16

    def __init__(self):
        self.last: int | None = None
        self.wraps = 0

    def __call__(self, counter: int) -> int:
        if self.last is not None and counter < self.last - self.RANGE // 2:
            self.wraps += 1
            log.info("profile counter wrapped (%d -> %d): spokes counted from %d on", self.last, counter,
                     self.wraps * self.RANGE)
        self.last = counter
        return counter + self.wraps * self.RANGE


def frame_buffer(items, protocol: RadialProtocol, ordering: str | None, spokes_per_frame: int,
                 stride: int, stats, min_partial_fraction: float = 0.5, clock=time.perf_counter):
    """Group data acquisitions into frames of ``spokes_per_frame`` spokes in arrival order,
    a new frame every ``stride`` spokes. Non-acquisition items and acquisitions of other
    encoding spaces pass through. At the end of the stream a partial frame with at least
    ``min_partial_fraction`` of its spokes is emitted with ``partial=True``; a smaller one
    is reported in the log and counted in ``stats.dropped_spokes``."""
    window: deque = deque(maxlen=spokes_per_frame)
    since_last = 0
    index = 0
    coils = None
    samples = None
    counter = ProfileCounter()
    for item in items:
        if (not isinstance(item, ismrmrd.Acquisition) or is_noise(item)
                or item.encoding_space_ref != 0):
            stats.passed_through += 1
            yield item
            continue
        arrival = arrival_time(item, clock)
        if coils is None:
            coils, samples = item.data.shape
        if item.data.shape != (coils, samples):
            raise ValueError(f"acquisition {item.scan_counter}: data shape {item.data.shape} "
                             f"(coils, samples) differs from the stream's {(coils, samples)}")
        stats.spokes += 1
        profile = counter(item.idx.kspace_encode_step_1)
        window.append((item.data.copy(), acquisition_coordinates(item, protocol, ordering, profile), item))
        since_last += 1
        if len(window) == spokes_per_frame and (index == 0 or since_last >= stride):
            stats.frames += 1
            yield _make_frame(index, window, arrival, False)
            index += 1
            since_last = 0
    if index > 0 and since_last and stride < spokes_per_frame:
        # sliding window: the newest full window still holds spokes no frame has shown
        log.warning("stream ended %d spokes after frame %d: flushing a last window", since_last, index - 1)
        stats.partial_frames += 1
        stats.frames += 1
        yield _make_frame(index, window, clock(), True)
        return
    pending = since_last if index > 0 else len(window)
    if not pending:
        return
    if pending >= min_partial_fraction * spokes_per_frame:
        log.warning("stream ended inside frame %d: reconstructing it from %d of %d spokes",
                    index, pending, spokes_per_frame)
        stats.partial_frames += 1
        stats.frames += 1
        yield _make_frame(index, list(window)[-pending:], clock(), True)
    else:
        log.warning("stream ended inside frame %d with only %d of %d spokes: not reconstructed "
                    "(min_partial_fraction=%.2f)", index, pending, spokes_per_frame, min_partial_fraction)
        stats.dropped_spokes += pending


def _make_frame(index, spokes, arrival, partial) -> Frame:
    spokes = list(spokes)
    kspace = np.stack([s[0] for s in spokes], axis=1)      # (C, S, R)
    coords = np.stack([s[1] for s in spokes])              # (S, R, 2)
    return Frame(index, kspace, coords, spokes[-1][2], arrival, partial)
