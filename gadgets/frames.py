"""Frame buffer gadget: radial spokes in, frames of spokes out, one cine per slice.

Where frames begin and end (see :func:`frame_plan`, logged at the start and when the
stream first decides), in this order of precedence:

1. **configuration**: ``spokes_per_frame`` > 0 fixes the count (a new frame every
   ``frame_stride`` spokes: a sliding window); the stream's markers are not used;
2. **the stream's markers**: a spoke with ``ACQ_LAST_IN_REPETITION`` (or
   ``ACQ_LAST_IN_SLICE``, ``ACQ_LAST_IN_MEASUREMENT``) ends its frame; a spoke with
   ``ACQ_FIRST_IN_REPETITION`` or another ``idx.repetition`` than the open frame's starts a
   new one. Frames may then differ in spoke count (each keeps its own trajectory and
   density weights);
3. **header encodingLimits**: ``kspace_encoding_step_1`` spokes over ``repetition``
   repetitions (e.g. 240 / 24 = 10 spokes per frame);
4. **header user parameter** ``spokes_per_frame`` (trajectoryDescription, our simulator's);
5. **default** 13 spokes.

3-5 give the count that closes frames while the stream has shown no marker (no
FIRST/LAST_IN_REPETITION flag, no change of ``idx.repetition``) and the count a complete
frame is expected to have (a frame with fewer is ``partial``). A frame with fewer than
``min_partial_fraction`` of the expected spokes is not reconstructed (logged, counted in
``dropped_spokes``).

Slices (``idx.slice``): each slice has its own frame buffer, profile counter and frame
numbering. A slice ends (its partial last frame is flushed and a :class:`SliceEnd` item is
sent downstream, which frees the reconstruction's state of that slice) when one of its
spokes carries ``ACQ_LAST_IN_SLICE``, when the stream ends, or, in a sequential stack,
when a new slice starts after the current one has formed a frame. A slice seen again after
another slice's spokes makes the stack *interleaved*: from then on only ``ACQ_LAST_IN_SLICE``
and the end of the stream end slices. A slice that receives spokes after it ended starts
again (new coil maps; its frame numbers go on); if ``ACQ_LAST_IN_SLICE`` ended it, the
stream's slice-end flags are taken as per-frame flags and ignored from then on. At most
:data:`MAX_OPEN_SLICES` slices are open at once (the least recently fed is ended first).
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

import ismrmrd
import numpy as np

from recon_core.config import MAX_SPOKES_PER_FRAME
from recon_core.mrd import RadialProtocol, acquisition_coordinates, is_imaging

from .feeder import arrival_time

log = logging.getLogger("rtcine.frames")

#: spokes per frame when neither configuration, markers nor header say
DEFAULT_SPOKES_PER_FRAME = 13
#: most slices with open frame buffers (and reconstruction state) at once
MAX_OPEN_SLICES = 64
#: in marker mode, a frame still unmarked after this many times the expected spokes is closed by count
MARKER_TIMEOUT_FRAMES = 4

_FIRST_IN_REPETITION = 1 << (ismrmrd.ACQ_FIRST_IN_REPETITION - 1)
_LAST_IN_REPETITION = 1 << (ismrmrd.ACQ_LAST_IN_REPETITION - 1)
_LAST_IN_SLICE = 1 << (ismrmrd.ACQ_LAST_IN_SLICE - 1)
_ENDS_FRAME = _LAST_IN_REPETITION | _LAST_IN_SLICE | (1 << (ismrmrd.ACQ_LAST_IN_MEASUREMENT - 1))
_REPETITION_MARKS = _FIRST_IN_REPETITION | _LAST_IN_REPETITION
MARKERS = "idx.repetition markers / ACQ_LAST_IN_REPETITION"


@dataclass
class Frame:
    """One frame's spokes.

    kspace ``(C, S, R)`` complex64; coords ``(S, R, 2)`` float32 in cycles/pixel;
    ``index`` counts frames from 0; ``last`` is the frame's last acquisition (its header
    seeds the image header); ``arrival`` the ``time.perf_counter()`` at which the last
    spoke arrived; ``partial`` is True for a frame with fewer spokes than a complete frame
    has; ``prepared`` holds what the reconstructor computed from it ahead of reconstruction
    (None until then); ``slice`` is the slice (``idx.slice``) whose cine it belongs to
    (``index`` counts that slice's frames).
    """
    index: int
    kspace: np.ndarray
    coords: np.ndarray
    last: ismrmrd.Acquisition
    arrival: float
    partial: bool = False
    prepared: object = None     # the reconstructor's map-independent work, done ahead (gadgets/recon.py)
    slice: int = 0
    gradient_delay: object = None   # the GradientDelay its coords were corrected with (gadgets/gradient_delay.py)

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


@dataclass
class SliceEnd:
    """Item sent after the last frame of a slice: downstream stages free that slice's state."""
    slice: int
    frames: int          # frames the slice formed


@dataclass
class FramePlan:
    """How the frame buffer cuts frames. ``spokes``: the count that closes a frame (always in
    count mode; in marker mode while the stream has shown no marker); ``stride``: a new
    frame every this many spokes (count mode); ``source``: what gave ``spokes``;
    ``markers``: the stream's markers close frames; ``expected``: spokes of a complete frame
    (0: learned from the first frame a marker closes)."""
    spokes: int
    stride: int
    source: str
    markers: bool
    expected: int

    def describe(self) -> str:
        if not self.markers:
            return f"{self.source}: {self.spokes} spokes per frame, a new frame every {self.stride}"
        return f"{MARKERS} where the stream has them, else {self.source}: {self.spokes} spokes per frame"


def frame_plan(spokes_per_frame: int, frame_stride: int, protocol: RadialProtocol) -> FramePlan:
    """The frame plan for configuration values ``spokes_per_frame``/``frame_stride`` (0: not
    set) and the header's ``protocol`` (see the module docstring for the precedence). A
    sliding window (``frame_stride`` set) counts spokes: markers are not used then."""
    if spokes_per_frame:
        return FramePlan(spokes_per_frame, frame_stride or spokes_per_frame, "configuration", False,
                         spokes_per_frame)
    spokes, reps = protocol.limits_spokes, protocol.limits_repetitions
    if reps > 1 and spokes >= reps:
        n, source = spokes // reps, f"header encodingLimits ({spokes} spokes / {reps} repetitions)"
    elif protocol.spokes_per_frame:
        n, source = protocol.spokes_per_frame, "header user parameter spokes_per_frame"
    else:
        n, source = DEFAULT_SPOKES_PER_FRAME, f"default {DEFAULT_SPOKES_PER_FRAME}"
    n = min(n, MAX_SPOKES_PER_FRAME)
    known = 0 if source.startswith("default") else n
    if frame_stride:
        return FramePlan(n, frame_stride, source, False, n)
    return FramePlan(n, n, source, True, known)


class _Slice:
    """One slice's open frame: its spokes (a sliding window of ``maxlen`` in count mode)."""
    __slots__ = ("number", "spokes", "since_last", "index", "counter", "repetition", "run_frames",
                 "last_seen", "last_arrival")

    def __init__(self, number: int, maxlen: int | None, index: int = 0):
        self.number = number
        self.spokes: deque = deque(maxlen=maxlen)
        self.since_last = 0
        self.index = index
        self.counter = ProfileCounter()
        self.repetition: int | None = None
        self.run_frames = 0             # frames formed since the slice last became the current one
        self.last_seen = 0
        self.last_arrival = 0.0


def frame_buffer(items, protocol: RadialProtocol, ordering: str | None, plan: FramePlan | int,
                 stride: int = 0, stats=None, min_partial_fraction: float = 0.5, clock=time.perf_counter):
    """Group imaging spokes into frames, per slice, as ``plan`` says (a :class:`FramePlan`, or
    an int: that many spokes per frame, a new frame every ``stride``). Non-acquisition items
    and acquisitions that are not imaging spokes (noise, non-imaging flags, other encoding
    spaces) pass through. Yields :class:`Frame` items, a :class:`SliceEnd` after each
    slice's last frame, and the items passed through. At the end of a slice a partial frame
    with at least ``min_partial_fraction`` of its spokes is emitted with ``partial=True``; a
    smaller one is reported in the log and counted in ``stats.dropped_spokes``."""
    if not isinstance(plan, FramePlan):
        plan = FramePlan(plan, stride or plan, "configuration", False, plan)
    if stats is None:
        from .stats import ChainStats
        stats = ChainStats()
    spf, markers = plan.spokes, plan.markers
    stride = plan.stride
    limit = min(MARKER_TIMEOUT_FRAMES * spf, MAX_SPOKES_PER_FRAME)
    state = {"marked": False, "interleaved": False, "slice_flags": True, "expected": plan.expected,
             "decided": "", "seen": 0, "multi": False}
    open_: dict[int, _Slice] = {}
    ended: dict[int, tuple[int, str]] = {}        # slice -> (next frame index, why it ended)
    current: _Slice | None = None
    seen_slices: set = set()
    coils = samples = None

    def decided(source: str, frame: Frame) -> None:
        if not state["decided"]:
            state["decided"] = source
            stats.frames_from = source
            log.info("frames from: %s (frame %d%s: %d spokes)", source, frame.index,
                     f" of slice {frame.slice}" if state["multi"] else "", frame.spokes)

    def where(st: _Slice) -> str:
        return f"frame {st.index} of slice {st.number}" if state["multi"] else f"frame {st.index}"

    def emit(st: _Slice, spokes, arrival: float, by: str, context: str = ""):
        """The frame of ``spokes`` (closed ``by`` a marker or a count), or None if too small."""
        n = len(spokes)
        if by == MARKERS and not state["expected"]:
            state["expected"] = n
            log.info("frames from markers: %d spokes per frame (learned from %s)", n, where(st))
        expected = state["expected"] or spf
        context = context or f"{where(st)} closed by its marker"
        if n < min_partial_fraction * expected:
            log.warning("%s with only %d of %d spokes: not reconstructed (min_partial_fraction=%.2f)", context, n,
                        expected, min_partial_fraction)
            stats.dropped_spokes += n
            return None
        frame = _make_frame(st.index, spokes, arrival, n < expected, st.number)
        if frame.partial:
            stats.partial_frames += 1
            log.warning("%s: reconstructing it from %d of %d spokes", context, n, expected)
        st.index += 1
        st.run_frames += 1
        stats.frames += 1
        decided(by, frame)
        return frame

    def end_slice(st: _Slice, why: str):
        """Flush the slice's last (partial) frame; then the :class:`SliceEnd`."""
        del open_[st.number]
        ended[st.number] = (st.index, why)
        stats.slices_ended += 1
        prefix = "stream ended" if why == "the stream ended" else f"slice {st.number} ended ({why})"
        window = st.spokes
        if not markers and st.index > 0 and st.since_last and stride < spf:
            # sliding window: the newest full window still holds spokes no frame has shown
            log.warning("%s %d spokes after %s: flushing a last window", prefix, st.since_last,
                        where(st).replace(f"frame {st.index}", f"frame {st.index - 1}"))
            stats.partial_frames += 1
            stats.frames += 1
            yield _make_frame(st.index, window, clock(), True, st.number)
            st.index += 1
        else:
            pending = list(window)
            if not markers and st.index > 0:
                pending = pending[len(pending) - st.since_last:] if st.since_last else []
            if pending:
                by = plan.source if not markers or not state["marked"] else MARKERS
                frame = emit(st, pending, st.last_arrival if markers else clock(), by, f"{prefix} inside {where(st)}")
                if frame is not None:
                    yield frame
        window.clear()
        log.info("slice %d ended (%s) after %d frames", st.number, why, st.index)
        yield SliceEnd(st.number, st.index)

    def new_slice(number: int) -> _Slice:
        """The open state of ``number``, ending slices as the stack's order says."""
        if ended.get(number, (0, ""))[1] == "the next slice started":
            state["interleaved"] = True           # it comes back: slices alternate by frames, not one after another
        if current is not None and current.number in open_ and not state["interleaved"] and current.run_frames:
            log.info("slice %d started after slice %d's %d frames: slices are sequential, slice %d ended", number,
                     current.number, current.index, current.number)
            yield from end_slice(current, "the next slice started")
        if len(open_) >= MAX_OPEN_SLICES:
            oldest = min(open_.values(), key=lambda s: s.last_seen)
            log.warning("%d slices open: ending slice %d, the least recently fed", len(open_), oldest.number)
            yield from end_slice(oldest, f"more than {MAX_OPEN_SLICES} slices open")
        index = 0
        if number in ended:
            index, why = ended.pop(number)
            if why == "ACQ_LAST_IN_SLICE" and state["slice_flags"]:
                state["slice_flags"] = False
                log.warning("slice %d received spokes after its ACQ_LAST_IN_SLICE: the stream's slice-end flags "
                            "mark something else; slices end when the next starts or the stream ends", number)
            elif why == "the next slice started":
                log.warning("slice %d received spokes after the next slice had started: slices are interleaved "
                            "by frames; slice %d starts again (new coil maps)", number, number)
            else:
                log.warning("slice %d received spokes after it ended (%s): it starts again (new coil maps)",
                            number, why)
        if open_ or ended or number:
            state["multi"] = True
        if number not in seen_slices:
            seen_slices.add(number)
            stats.slices = len(seen_slices)
        st = open_[number] = _Slice(number, None if markers else spf, index)
        return st

    for item in items:
        if not isinstance(item, ismrmrd.Acquisition) or not is_imaging(item):
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
        idx = item.idx
        number = idx.slice
        if current is None or number != current.number or number not in open_:
            st = open_.get(number)
            if st is None:
                st = yield from new_slice(number)
            elif not state["interleaved"]:
                state["interleaved"] = True
                log.info("slice %d continues after slice %d's spokes: slices are interleaved", number,
                         current.number)
            st.run_frames = 0
            current = st
        else:
            st = current
        state["seen"] += 1
        st.last_seen = state["seen"]
        profile = st.counter(idx.kspace_encode_step_1)
        spoke = (item.data.copy(), acquisition_coordinates(item, protocol, ordering, profile), item)
        flags = item.flags
        if markers:
            repetition = idx.repetition
            if st.repetition is not None and repetition != st.repetition:
                state["marked"] = True
                if st.spokes:
                    frame = emit(st, list(st.spokes), st.last_arrival, MARKERS)
                    st.spokes.clear()
                    if frame is not None:
                        yield frame
            if flags & _REPETITION_MARKS:
                state["marked"] = True
                if flags & _FIRST_IN_REPETITION and st.spokes:
                    frame = emit(st, list(st.spokes), st.last_arrival, MARKERS)
                    st.spokes.clear()
                    if frame is not None:
                        yield frame
            st.repetition = repetition
            st.spokes.append(spoke)
            st.last_arrival = arrival
            n = len(st.spokes)
            by = None
            if flags & _ENDS_FRAME:
                by = MARKERS
            elif n >= spf and not state["marked"]:
                by = plan.source
            elif n >= limit:
                log.warning("slice %d: no frame marker after %d spokes: closing frame %d by count", st.number, n,
                            st.index)
                by = plan.source
            if by is not None:
                frame = emit(st, list(st.spokes), arrival, by)
                st.spokes.clear()
                if frame is not None:
                    yield frame
        else:
            st.spokes.append(spoke)
            st.since_last += 1
            if len(st.spokes) == spf and (st.index == 0 or st.since_last >= stride):
                frame = _make_frame(st.index, st.spokes, arrival, False, st.number)
                st.last_arrival = arrival
                st.index += 1
                st.run_frames += 1
                st.since_last = 0
                stats.frames += 1
                decided(plan.source, frame)
                yield frame
        if flags & _LAST_IN_SLICE and state["slice_flags"]:
            yield from end_slice(st, "ACQ_LAST_IN_SLICE")
    for st in list(open_.values()):
        yield from end_slice(st, "the stream ended")


def _make_frame(index, spokes, arrival, partial, slice_=0) -> Frame:
    spokes = list(spokes)
    kspace = np.stack([s[0] for s in spokes], axis=1)      # (C, S, R)
    coords = np.stack([s[1] for s in spokes])              # (S, R, 2)
    return Frame(index, kspace, coords, spokes[-1][2], arrival, partial, slice=slice_)
