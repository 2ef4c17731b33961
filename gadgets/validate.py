"""Input validation gadget, the first stage of the chain: bad acquisitions never reach it.

Policies (each problem is logged at WARNING, the first few times per kind, and counted in
:class:`gadgets.stats.ChainStats`; the end of the stream logs a summary):

- **Dropped spokes** (``bad_spokes``, the reason in ``input_problems``): no data
  (zero samples or channels); a number of samples differing from the stream's (fixed by
  the first data spoke); NaN or Inf in the samples or the trajectory (dropped rather
  than zeroed: a zeroed spoke would tell the reconstruction "measured zero" at its
  k-space position); a profile counter ``idx.kspace_encode_step_1`` outside the header's
  ``encodingLimits`` when the angle has to be computed from it (a spoke with its own
  ``traj`` is kept, the counter is only a label then: counted in
  ``counter_out_of_range``). Frames are filled in arrival order, so a dropped spoke makes
  its frame take the next spoke instead: no frame is lost, later frames shift by one spoke.
  Noise scans with no data or non-finite samples are dropped (``bad_noise_scans``).
- **Duplicates** (``duplicate_spokes``): a spoke with the scan counter, profile counter
  and samples (compared on ~64 of them) of one among the last 1024 is dropped; equal
  counters with other samples are not a duplicate (streams that leave counters at zero).
- **Order and gaps**, by ``scan_counter`` over all acquisitions: a spoke older than one
  already received is kept in arrival order (``out_of_order_spokes``); a jump forward
  is a gap (``gaps``: jumps seen; ``missing_spokes``: acquisitions that never came, a late
  one fills its place). Warnings only: streams whose counters are not maintained (all
  zero) raise neither.
- **Not imaging spokes** (``non_imaging``, counted by kind, logged once per kind):
  acquisitions flagged as dummy scans, phase correction, navigators, RT/HP feedback,
  surface coil correction scans, parallel calibration or phase stabilization
  (``recon_core.mrd.NON_IMAGING_FLAGS``), of another encoding space than 0, and noise scans
  after the first imaging spoke. They are passed on unchecked (as Gadgetron's gadgets pass
  on what they do not use; the frame buffer passes them through, never into a frame);
  late noise scans go on to the noise stage, which does not use them.
- **Ending the stream** (``stream_error``, logged at ERROR): a coil count other than the
  stream's (fixed by its first acquisition, noise scans included), more coils than the
  header's ``receiverChannels`` (fewer is a warning: Gadgetron's CoilReductionGadget
  reduces the data without rewriting the header), a spoke with no trajectory when
  neither header nor configuration names the ordering, and any failure of the input
  itself (a truncated or unknown message, a closed or silent connection). The stage then
  ends its output as if the stream had ended: the frames complete before the fault (and a
  partial last frame with at least ``min_partial_fraction`` of its spokes) are
  reconstructed and sent; :func:`gadgets.entry.handle` raises :class:`StreamError` after.
"""
from __future__ import annotations

import logging
from collections import Counter, deque

import ismrmrd
import numpy as np

from recon_core.mrd import non_imaging_kind

log = logging.getLogger("rtcine.input")

#: each kind of problem is logged this many times, then only counted
LOG_FIRST = 5
#: spokes remembered for duplicate detection
DUPLICATE_WINDOW = 1024


class StreamError(RuntimeError):
    """The input stream was ended early; the frames complete before were reconstructed."""


def _limits(header):
    try:
        lim = header.encoding[0].encodingLimits.kspace_encoding_step_1
        lo, hi = int(lim.minimum), int(lim.maximum)
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return (lo, hi) if hi > lo else None


def _has_traj(acq) -> bool:
    return acq.trajectory_dimensions >= 2 and acq.traj.shape[0] == acq.number_of_samples


def validate_stream(items, header, protocol, ordering, stats):
    """Yield the acquisitions and other items of ``items`` that the chain can use (see the
    module docstring for what is dropped, counted or ends the stream)."""
    limits = _limits(header)
    coils = samples = None
    last_counter = None
    seen: dict = {}
    missing: set = set()
    order: deque = deque()
    logged: Counter = Counter()
    received = 0

    def note(kind, message, counter=None):
        stats.input_problems[kind] = stats.input_problems.get(kind, 0) + 1
        if counter:
            setattr(stats, counter, getattr(stats, counter) + 1)
        logged[kind] += 1
        if logged[kind] <= LOG_FIRST:
            more = " (further ones are counted, not logged)" if logged[kind] == LOG_FIRST else ""
            log.warning("%s%s", message, more)

    def fatal(message):
        stats.stream_error = message
        stats.errors.append(message)
        log.error("%s: ending the stream; the %d frames complete so far are reconstructed and sent",
                  message, stats.frames)

    it = iter(items)
    try:
        while True:
            try:
                item = next(it)
            except StopIteration:
                break
            except Exception as exc:  # the input failed: keep what arrived before
                fatal(f"the input failed after {received} acquisitions: {type(exc).__name__}: {exc}")
                break
            if not isinstance(item, ismrmrd.Acquisition):
                yield item
                continue
            received += 1
            sc = item.scan_counter
            kind = non_imaging_kind(item)
            noise = kind == "noise scan"
            spoke = kind is None
            if noise and samples is not None:
                kind = "noise scan after the data started"
            if kind is not None and kind != "noise scan":
                stats.non_imaging[kind] = stats.non_imaging.get(kind, 0) + 1
                if stats.non_imaging[kind] == 1:
                    log.info("%s acquisitions (first: acquisition %d) are not imaging spokes: passed on, "
                             "not framed (counted in non_imaging)", kind, sc)
            if spoke:
                key = (sc, item.idx.kspace_encode_step_1)
                flat = item.data.ravel()
                digest = hash(flat[::max(1, flat.size // 64)].tobytes())   # ~64 values: cheap at any size
                if seen.get(key) == digest:
                    note("duplicate", f"acquisition {sc} (profile {key[1]}) is a duplicate: dropped",
                         "duplicate_spokes")
                    continue
                seen[key] = digest
                order.append(key)
                if len(order) > DUPLICATE_WINDOW:
                    seen.pop(order.popleft(), None)
            if last_counter is not None:
                if sc < last_counter:
                    if sc in missing:              # a late arrival fills (part of) a gap
                        missing.discard(sc)
                        stats.missing_spokes -= 1
                    if spoke:
                        note("out of order", f"acquisition {sc} arrived after acquisition {last_counter}: "
                             "kept, in arrival order", "out_of_order_spokes")
                elif sc > last_counter + 1:
                    jump = sc - last_counter - 1
                    stats.missing_spokes += jump
                    if jump <= DUPLICATE_WINDOW:
                        missing.update(range(last_counter + 1, sc))
                        while len(missing) > DUPLICATE_WINDOW:
                            missing.discard(min(missing))
                    note("gap", f"gap in the scan counter: {jump} acquisition(s) missing between "
                         f"{last_counter} and {sc}", "gaps")
            last_counter = sc if last_counter is None else max(last_counter, sc)
            if not (noise or spoke):
                yield item                     # non-imaging acquisitions pass through unchecked
                continue
            what = "noise scan" if noise else "acquisition"
            c, r = item.active_channels, item.number_of_samples
            if c == 0 or r == 0:
                note("no data", f"{what} {sc} has no data ({c} channels x {r} samples): dropped",
                     "bad_noise_scans" if noise else "bad_spokes")
                continue
            if coils is None:
                if c > protocol.coils:
                    fatal(f"{what} {sc} has {c} coils, more than the header's receiverChannels {protocol.coils}")
                    break
                if c < protocol.coils:
                    log.warning("%s %d has %d coils, the header's receiverChannels says %d (coils reduced "
                                "upstream?): the stream has %d coils", what, sc, c, protocol.coils, c)
                coils = c
            elif c != coils:
                fatal(f"{what} {sc} has {c} coils, the stream has {coils}")
                break
            if noise:
                if not np.isfinite(item.data).all():
                    note("non-finite noise", f"noise scan {sc} has NaN or Inf samples: dropped", "bad_noise_scans")
                    continue
                yield item
                continue
            if samples is None:
                samples = r
                if r != protocol.samples:
                    log.warning("acquisition %d has %d samples, the header's encoded matrix says %d: the "
                                "stream has %d samples per spoke", sc, r, protocol.samples, r)
            elif r != samples:
                note("samples", f"acquisition {sc} has {r} samples, the stream has {samples}: dropped",
                     "bad_spokes")
                continue
            if not np.isfinite(item.data).all():
                note("non-finite", f"acquisition {sc} has NaN or Inf samples: dropped", "bad_spokes")
                continue
            has_traj = _has_traj(item)
            if has_traj and not np.isfinite(item.traj).all():
                note("non-finite trajectory", f"acquisition {sc} has NaN or Inf in its trajectory: dropped",
                     "bad_spokes")
                continue
            if not has_traj and ordering is None:
                fatal(f"acquisition {sc} has no trajectory and neither the header nor the configuration names "
                      "the radial ordering (set 'ordering' to golden, tiny-golden or linear)")
                break
            e1 = item.idx.kspace_encode_step_1
            if limits is not None and not limits[0] <= e1 <= limits[1]:
                stats.counter_out_of_range += 1
                if has_traj:
                    note("counter range", f"acquisition {sc}: profile counter {e1} is outside the header's "
                         f"encodingLimits {limits[0]}..{limits[1]}: kept (it carries its own trajectory)")
                else:
                    note("counter range", f"acquisition {sc}: profile counter {e1} is outside the header's "
                         f"encodingLimits {limits[0]}..{limits[1]} and gives its angle: dropped", "bad_spokes")
                    continue
            yield item
    finally:
        if stats.non_imaging:
            log.info("non-imaging acquisitions passed on, not framed: %s",
                     ", ".join(f"{k} x{v}" for k, v in stats.non_imaging.items()))
        if stats.input_problems:
            log.warning("input problems: %s; %d bad spokes and %d duplicates dropped, %d out of order, "
                        "%d gaps (%d acquisitions missing)",
                        ", ".join(f"{k} x{v}" for k, v in stats.input_problems.items()), stats.bad_spokes,
                        stats.duplicate_spokes, stats.out_of_order_spokes, stats.gaps, stats.missing_spokes)
