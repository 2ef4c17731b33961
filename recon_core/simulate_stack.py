"""What a scanner's stream carries beyond one clean cine: a stack of slices (sequential or
interleaved), non-imaging acquisitions (dummy scans, phase correction, navigators) and
headers without our ``spokes_per_frame`` user parameter. Built on :func:`recon_core.simulate.simulate`,
one slice at a time.

A stack (:func:`simulate_stack`): slice ``s`` is a scan of its own, with its own anatomy
and coil sensitivities (``simulate`` with seed ``seed + SLICE_SEED_STEP * s``) at its own
position (``z = (s - (S - 1) / 2) * slice_spacing_mm``). The receiver is the same for every
slice: one noise covariance (one coil mixing matrix, drawn from ``seed``), one noise level
``sigma = m0 * N / snr`` with ``m0`` the mean body magnitude of slice 0's reference, and the
noise scans at the start of the stream only. So each slice's :class:`SimulatedScan` is that
slice "scanned alone" with the same data: ``write_dataset(path, stack.slices[s])``.

Order of the stream (:func:`stream_acquisitions`):

- noise scans first, then per slice (``FIRST_IN_SLICE`` .. ``LAST_IN_SLICE``): its
  ``dummy_scans`` dummy scans (``ACQ_IS_DUMMYSCAN_DATA``, no trajectory, 3x the first
  spoke's signal: the transient before the steady state), one phase-correction acquisition
  if asked (``ACQ_IS_PHASECORR_DATA``, no trajectory), then its spokes, frame by frame
  (``idx.repetition``, ``FIRST/LAST_IN_REPETITION``, ``idx.kspace_encode_step_1`` counting
  the slice's spokes);
- ``sequential``: slice after slice; ``interleaved``: the slices' acquisitions alternate
  one by one (each slice is simulated with ``TR * slices``: its frames take that long);
- a navigator (``ACQ_IS_NAVIGATION_DATA``, a quarter of the samples, no trajectory) before
  every ``navigator_every``-th imaging spoke after the first;
- one acquisition per TR: ``acquisition_time_stamp`` counts the stream's position;
  ``ACQ_LAST_IN_MEASUREMENT`` on the last spoke.

With one slice and none of the extras this is exactly the stream ``simulate.acquisitions``
has always written.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import ismrmrd
import numpy as np

from .mrd import TICK_SECONDS, mark_spoke

#: seed step between slices (slice s of a stack is simulated with seed + SLICE_SEED_STEP * s)
SLICE_SEED_STEP = 7919
SLICE_ORDERS = ("sequential", "interleaved")
#: the transient signal of a dummy scan relative to the steady state (first spoke)
DUMMY_SIGNAL = 3.0


@dataclass
class SimulatedStack:
    """A multi-slice scan: ``slices[s]`` is slice ``s``'s :class:`~recon_core.simulate.SimulatedScan`
    (its ``noise`` and ``noise_covariance`` are the stack's); ``positions (S, 3)`` in mm."""
    config: object
    slices: list
    positions: np.ndarray

    @property
    def noise(self) -> np.ndarray:
        return self.slices[0].noise


def slice_positions(slices: int, spacing_mm: float) -> np.ndarray:
    """``(S, 3)`` slice centres in mm: along z, centred on 0."""
    z = (np.arange(slices) - (slices - 1) / 2.0) * spacing_mm
    return np.stack([np.zeros(slices), np.zeros(slices), z], axis=1)


def simulate_stack(cfg, progress=None) -> SimulatedStack:
    """Simulate ``cfg.slices`` slices (see the module docstring). ``progress(frames_done)``
    counts frames over all slices."""
    from .simulate import _coil_mixing, simulate

    if cfg.slice_order not in SLICE_ORDERS:
        raise ValueError(f"slice_order={cfg.slice_order!r}: expected one of {SLICE_ORDERS}")
    count = max(1, cfg.slices)
    tr = cfg.tr_ms * (count if cfg.slice_order == "interleaved" else 1)
    scans = []
    for s in range(count):
        done = s * cfg.frames
        one = dataclasses.replace(cfg, seed=cfg.seed + SLICE_SEED_STEP * s, snr=math.inf, noise_scans=0, tr_ms=tr,
                                  slices=1)
        scans.append(simulate(one, progress=(lambda n, d=done: progress(d + n)) if progress else None))
    rng = np.random.default_rng([cfg.seed, count])
    mixing, psi = _coil_mixing(rng, cfg.coils, cfg.coil_correlation)
    ref0 = scans[0].reference
    body = np.abs(ref0[0]) > 0.05 * np.abs(ref0[0]).max()
    sigma = float(np.abs(ref0[:, body]).mean()) * cfg.matrix / cfg.snr

    def noise(shape):
        z = (rng.normal(size=shape) + 1j * rng.normal(size=shape)) / math.sqrt(2)
        return sigma * np.einsum("ij,...jk->...ik", mixing, z)

    samples = scans[0].kspace.shape[-1]
    noise_scans = noise((cfg.noise_scans, cfg.coils, samples)).astype(np.complex64)
    out = []
    for scan in scans:
        t, c, s, r = scan.kspace.shape
        kspace = (scan.kspace + noise((t, c, s * r)).reshape(t, c, s, r)).astype(np.complex64)
        out.append(dataclasses.replace(scan, config=dataclasses.replace(scan.config, snr=cfg.snr,
                                                                        noise_scans=cfg.noise_scans),
                                       kspace=kspace, noise=noise_scans, noise_covariance=psi * sigma ** 2,
                                       extras={"sigma": sigma, "mixing": mixing}))
    return SimulatedStack(cfg, out, slice_positions(count, cfg.slice_spacing_mm))


def _geometry(acq, position) -> None:
    acq.read_dir[:] = (1.0, 0.0, 0.0)
    acq.phase_dir[:] = (0.0, 1.0, 0.0)
    acq.slice_dir[:] = (0.0, 0.0, 1.0)
    acq.position[:] = position


def _slice_items(scan, number: int, cfg, last_slice: bool):
    """One slice's acquisitions in time order, without time stamps and scan counters:
    ``(acquisition, is_spoke)``. ``last_slice``: its last spoke ends the measurement (sequential)."""
    t_frames, _, s, samples = scan.kspace.shape
    first = np.ascontiguousarray(scan.kspace[0, :, 0])
    extras = [(ismrmrd.ACQ_IS_DUMMYSCAN_DATA, (DUMMY_SIGNAL * first).astype(np.complex64))] * cfg.dummy_scans
    if cfg.phasecorr:
        extras.append((ismrmrd.ACQ_IS_PHASECORR_DATA, (first * np.exp(0.3j)).astype(np.complex64)))
    for k, (flag, data) in enumerate(extras):
        acq = ismrmrd.Acquisition.from_array(data)
        acq.set_flag(flag)
        acq.center_sample = samples // 2
        acq.idx.slice = number
        acq.idx.kspace_encode_step_2 = k if flag == ismrmrd.ACQ_IS_DUMMYSCAN_DATA else 0
        yield acq, False
    for f in range(t_frames):
        for p in range(s):
            traj = scan.coords[f, p] if cfg.include_traj else None
            acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(scan.kspace[f, :, p]), traj)
            acq.center_sample = samples // 2
            acq.idx.slice = number
            mark_spoke(acq, f, p, t_frames, s, last_in_measurement=last_slice)
            yield acq, True


def _interleave(generators):
    """Round robin over ``generators`` until all are exhausted."""
    active = list(generators)
    while active:
        for g in list(active):
            try:
                yield next(g)
            except StopIteration:
                active.remove(g)


def stream_acquisitions(stack: SimulatedStack, dwell_us: float):
    """Yield the stack as a scanner streams it (see the module docstring)."""
    cfg = stack.config
    scans = stack.slices
    interleaved = cfg.slice_order == "interleaved" and len(scans) > 1
    counter = 0
    for k in range(stack.noise.shape[0]):
        acq = ismrmrd.Acquisition.from_array(stack.noise[k])
        acq.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
        acq.sample_time_us = dwell_us
        acq.scan_counter = counter
        _geometry(acq, stack.positions[0])
        counter += 1
        yield acq
    gens = [_slice_items(scan, s, cfg, last_slice=not interleaved and s == len(scans) - 1)
            for s, scan in enumerate(scans)]
    items = _interleave(gens) if interleaved else (item for g in gens for item in g)
    tr = cfg.tr_ms * 1e-3
    position = 0                       # acquisitions after the noise scans: one per TR
    spokes = 0
    last = held = None                 # the latest spoke; the acquisition not yet yielded
    for acq, is_spoke in items:
        if is_spoke and cfg.navigator_every and spokes and spokes % cfg.navigator_every == 0:
            nav = ismrmrd.Acquisition.from_array(np.ascontiguousarray(
                last.data[:, last.number_of_samples * 3 // 8: last.number_of_samples * 5 // 8]))
            nav.set_flag(ismrmrd.ACQ_IS_NAVIGATION_DATA)
            nav.idx.slice = last.idx.slice
            nav.center_sample = nav.number_of_samples // 2
            if held is not None:
                yield held
            held = _stamped(nav, stack, scans[last.idx.slice], counter, position, tr, dwell_us)
            counter += 1
            position += 1
        if is_spoke:
            spokes += 1
            last = acq
        if held is not None:
            yield held
        held = _stamped(acq, stack, scans[acq.idx.slice], counter, position, tr, dwell_us)
        counter += 1
        position += 1
    if held is not None:
        if interleaved:
            held.set_flag(ismrmrd.ACQ_LAST_IN_MEASUREMENT)       # the stream's last spoke
        yield held


def _stamped(acq, stack, scan, counter: int, position: int, tr: float, dwell_us: float):
    t = (position + 1) * tr
    rr = 60.0 / scan.heart_rate_bpm
    acq.sample_time_us = dwell_us
    acq.scan_counter = counter
    acq.acquisition_time_stamp = int(round(t / TICK_SECONDS))
    acq.physiology_time_stamp[0] = int(round((t % rr) / TICK_SECONDS))
    _geometry(acq, stack.positions[acq.idx.slice])
    return acq


def reference_images(stack: SimulatedStack, fov_mm: float):
    """Every slice's fully sampled reference frames as ISMRMRD images (complex64): slice by
    slice, ``slice``, ``position``, ``image_series_index = slice``, ``image_index = frame + 1``."""
    for s, scan in enumerate(stack.slices):
        for f, frame in enumerate(scan.reference):
            img = ismrmrd.Image.from_array(frame[None], transpose=False)
            head = img.getHead()
            head.image_index = f + 1
            head.repetition = f
            head.slice = s
            head.image_series_index = s
            head.position[:] = stack.positions[s]
            head.read_dir[:] = (1.0, 0.0, 0.0)
            head.phase_dir[:] = (0.0, 1.0, 0.0)
            head.slice_dir[:] = (0.0, 0.0, 1.0)
            head.image_type = ismrmrd.IMTYPE_COMPLEX
            head.field_of_view[:] = (fov_mm, fov_mm, 8.0)
            img.setHead(head)
            yield img


def simulate_scan(cfg, progress=None):
    """:func:`recon_core.simulate.simulate` for one slice, :func:`simulate_stack` for more."""
    if cfg.slices > 1:
        return simulate_stack(cfg, progress)
    from .simulate import simulate
    return simulate(cfg, progress)
