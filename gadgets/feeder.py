"""Input side of a chain: a reader thread that stamps each item's arrival time.

The latency of a frame is measured from the moment its last spoke *arrived* (was
received from the scanner or, in a paced replay, was due), not from the moment the
chain got round to it. So items are read on a thread of their own, stamped with
``time.perf_counter()`` in ``item._rtcine_arrival``, and queued for the chain.
"""
from __future__ import annotations

import os
import queue
import threading
import time

ARRIVAL = "_rtcine_arrival"
_END = object()


def arrival_time(item, clock=time.perf_counter) -> float:
    return getattr(item, ARRIVAL, None) or clock()


def paced(acquisitions, tick_seconds: float, speed: float = 1.0):
    """Yield acquisitions at the pace of their ``acquisition_time_stamp`` (ticks of
    ``tick_seconds``), as a scanner would send them; ``speed`` > 1 replays faster. Each
    is stamped with its due time as its arrival: a bounded queue downstream may hold the
    reader back, but a scanner does not wait, so latency counts from when it was due."""
    start = None
    t0 = None
    for acq in acquisitions:
        stamp = getattr(acq, "acquisition_time_stamp", None)
        if stamp is not None:
            if start is None:
                start, t0 = time.perf_counter(), stamp
            due = start + (stamp - t0) * tick_seconds / speed
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            try:   # the scanner sent it at its due time, whether or not we could take it then
                setattr(acq, ARRIVAL, due)
            except AttributeError:
                pass
        yield acq


class ThreadedSource:
    """Iterate ``source`` on a thread, stamping arrival; iterate this object to consume.

    ``maxsize`` bounds the queue (0: unbounded). An exception raised by the source is
    re-raised in the consumer after the items that came before it. ``stamp=False`` for a
    stage further down the chain (items were stamped when they arrived).
    """

    def __init__(self, source, maxsize: int = 0, stamp: bool = True, name: str = "rtcine-reader"):
        self._queue: queue.Queue = queue.Queue(maxsize)
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self.bound = maxsize
        self.high_water = 0
        self._stamp = stamp
        self._thread = threading.Thread(target=self._run, args=(source,), daemon=True, name=name)
        self._thread.start()

    def _run(self, source):
        try:
            for item in source:
                try:
                    if self._stamp and getattr(item, ARRIVAL, None) is None:
                        setattr(item, ARRIVAL, time.perf_counter())
                except AttributeError:
                    pass
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        self.high_water = max(self.high_water, self._queue.qsize())
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as exc:  # forwarded to the consumer
            self._error = exc
        finally:
            while not self._stop.is_set():
                try:
                    self._queue.put(_END, timeout=0.1)
                    break
                except queue.Full:
                    continue

    def close(self) -> None:
        """Stop reading (the consumer gave up); a blocked reader thread ends within 0.1 s."""
        self._stop.set()

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is _END:
                if self._error is not None:
                    raise self._error
                return
            yield item


def stream_clock(items, tick_seconds: float, start: float | None = None, waiting=None, clock=time.perf_counter):
    """Stamp each acquisition's arrival, counting a backlog that waited out of sight, for a
    stream read from a socket (``<execute>``: the spokes wait in the socket while Python
    imports torch and loads the model; a reader held up by a full queue).

    ``waiting()`` says whether the next item is already there before it is read (the
    socket is readable). An acquisition read at the *live edge* (nothing was waiting) arrived
    when it was read, and anchors the stream's time stamps (``acquisition_time_stamp``,
    ticks of ``tick_seconds``: a scanner stamps each acquisition as it acquires it) to this
    clock. One read from a *backlog* (it was waiting) arrived, by its stamp, ``stamp -
    anchor stamp`` after the anchor (never later than it was read). The first anchor is
    ``start`` (when the stream began, if known: for ``<execute>``, when Gadgetron started this
    process), else the first read. So a stream whose sender is slow (every item read at the
    live edge) is not taken as late, and one drained from a backlog is. A stamp that goes back
    (midnight, a new clock) re-anchors; items without a stamp arrive when read; without
    ``waiting``, every read is at the live edge (arrival = read time after the first)."""
    offset = None
    last = None
    iterator = iter(items)
    while True:
        backlog = bool(waiting()) if waiting is not None else False
        try:
            item = next(iterator)
        except StopIteration:
            return
        now = clock()
        arrival = now
        stamp = getattr(item, "acquisition_time_stamp", 0)
        if stamp:
            t = stamp * tick_seconds
            if offset is None:
                offset = (start if start is not None and start <= now else now) - t
            elif not backlog or t < last:
                offset = now - t
            last = t
            arrival = min(now, t + offset)
        try:
            if getattr(item, ARRIVAL, None) is None:
                setattr(item, ARRIVAL, arrival)
        except AttributeError:
            pass
        yield item


def process_start(clock=time.perf_counter) -> float | None:
    """When this process started, on ``clock``'s scale (Linux: from /proc; None elsewhere)."""
    try:
        with open("/proc/self/stat") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19])     # field 22: starttime, in clock ticks
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        age = uptime - started / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return clock() - max(0.0, age)
