"""Spoke-by-spoke acquisition of the shifted suite and its ISMRMRD file.

Every spoke ``n`` is acquired at its own time ``t_n = n * TR``: the object is rendered at
``t_n`` on a grid twice as fine as the matrix, multiplied by the coil maps and sampled
along that spoke by a type-2 NUFFT (finufft, tolerance ``EPS``), so the heart contracts
and the diaphragm moves during a frame. Fine pixel ``j`` sits at ``j - N - 1/2`` fine
pixels from the centre, which puts every 2x2 block centred on its coarse pixel; the phase
factor ``exp(i pi (k_x + k_y))`` (``k`` in cycles per fine pixel) accounts for it. The
reference of frame ``f`` is the 2x2 block average of the object at the mean time of the
frame's spokes (what a reconstruction stamped with that time should show), weighted by
the combined coil sensitivity ``sqrt(S^H Psi^-1 S)`` (:func:`combined_sensitivity`): the
image a fully sampled SENSE reconstruction with unit-norm maps gives of a non-uniform
array, shading included, scaled so that its mean magnitude in the body (as :func:`.noise.noise_sigma` finds it)
is the object's: the SNR of :mod:`.noise` refers to the object, and the file's reference
and noise scans give it back.

File: ISMRMRD header from :func:`recon_core.mrd.make_header`; noise scans first, then one
acquisition per spoke with ``acq.traj``, time stamps, the ECG phase in
``physiology_time_stamp[0]`` and the frame index in ``idx.repetition``; the references as
complex images in ``/dataset/reference`` (as ``rtcine evaluate`` reads them).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import ismrmrd
import numpy as np

from ..mrd import TICK_SECONDS, RadialProtocol, header_to_xml, make_header, mark_spoke
from ..trajectory import radial_coordinates, spoke_angles
from .anatomy import Canvas, Thorax
from .coil_array import array_loops, sensitivities
from .motion import CardiacMotion, RespiratoryMotion
from .noise import correlated_noise, noise_mixing, noise_sigma

#: finufft tolerance and fine-grid oversampling of the acquisition (1.25: 3x faster than 2 at 32
#: channels; the tolerance is kept either way, far below the noise of any scan of the suite)
EPS = 1e-5
UPSAMPFAC = 1.25
DWELL_US = 2.5
REFERENCE_GROUP = "reference"


@dataclass
class ScanSpec:
    """Everything that defines one scan of the suite (seeded, reproducible)."""
    name: str
    axis: str
    seed: int
    frames: int = 32
    matrix: int = 128
    spokes_per_frame: int = 13
    ordering: str = "golden"
    tr_ms: float = 3.0
    coils: int = 12
    coupling: float = 0.2
    snr: float = 18.0
    heart_rate_bpm: float = 70.0
    ejection_fraction: float = 0.55
    breath_period_s: float = 4.5
    breath_mm: float = 6.0
    detail: float = 0.5
    heart_scale: float = 1.0
    noise_scans: int = 8
    fov_mm: float = 300.0


@dataclass
class ShiftedScan:
    """``kspace (T, C, S, R)``, ``coords (T, S, R, 2)``, ``reference (T, N, N)`` complex64,
    ``noise (K, C, R)``, ``spoke_times (T, S)`` s, ``ecg (T, S)`` s since the last beat
    onset, ``maps (C, N, N)`` the true sensitivities on the matrix, ``sigma`` the noise level;
    ``extras``: ``mixing`` (noise mixing ``L``), ``thorax`` (the object, renderable at any time), ``loops``."""
    spec: ScanSpec
    kspace: np.ndarray
    coords: np.ndarray
    reference: np.ndarray
    noise: np.ndarray
    spoke_times: np.ndarray
    ecg: np.ndarray
    maps: np.ndarray
    sigma: float
    extras: dict = field(default_factory=dict)


def _finufft_plan(shape, coils):
    import finufft

    return finufft.Plan(2, shape, n_trans=coils, eps=EPS, dtype="complex128", nthreads=1, upsampfac=UPSAMPFAC)


def acquire(spec: ScanSpec) -> ShiftedScan:
    """Simulate the scan ``spec`` spoke by spoke (see the module docstring)."""
    rng = np.random.default_rng(spec.seed)
    n, s, t = spec.matrix, spec.spokes_per_frame, spec.frames
    fine, samples = 2 * n, 2 * n
    tr = spec.tr_ms * 1e-3
    times = np.arange(t * s).reshape(t, s) * tr
    duration = float(times[-1, -1]) + tr
    cardiac = CardiacMotion.draw(rng, spec.heart_rate_bpm, duration)
    breathing = RespiratoryMotion.draw(rng, spec.breath_period_s, duration)
    thorax = Thorax(int(rng.integers(2 ** 31)), fine, cardiac, breathing, detail=spec.detail,
                    heart_scale=spec.heart_scale, ejection_fraction=spec.ejection_fraction,
                    breath_mm=spec.breath_mm, fov_mm=spec.fov_mm)

    canvas = Canvas(fine)
    half_fov_m = spec.fov_mm / 2000.0
    x = canvas.axis[None, :] * half_fov_m * np.ones((fine, 1))
    y = canvas.axis[:, None] * half_fov_m * np.ones((1, fine))
    body_mask = np.abs(thorax.render(0.0)) > 0.02
    loops = array_loops(rng, spec.coils, x, y, body_mask)
    maps_fine = sensitivities(loops, x, y, body_mask).astype(np.complex128)
    mixing = noise_mixing(rng, loops, spec.coupling)
    shading = combined_sensitivity(maps_fine, mixing @ mixing.conj().T)

    angles = spoke_angles(np.arange(t * s).reshape(t, s), spec.ordering, s)
    coords = radial_coordinates(angles, samples)                          # (T, S, R, 2) cycles / coarse pixel
    kspace = np.empty((t, spec.coils, s, samples), np.complex64)
    reference = np.empty((t, n, n), np.complex64)
    objects = np.empty((t, n, n), np.complex64)
    plan = _finufft_plan((fine, fine), spec.coils)
    for f in range(t):
        for p in range(s):
            obj = thorax.render(float(times[f, p])).astype(np.complex128)
            k = coords[f, p].astype(np.float64) / 2.0                      # cycles / fine pixel
            plan.setpts(2 * np.pi * k[:, 1], 2 * np.pi * k[:, 0])
            y_sp = plan.execute(maps_fine * obj[None])                      # (C, R)
            kspace[f, :, p] = y_sp * np.exp(1j * np.pi * (k[:, 0] + k[:, 1]))[None] / 4.0
        ref = thorax.render(float(times[f].mean()))
        objects[f] = ref.reshape(n, 2, n, 2).mean(axis=(1, 3))
        reference[f] = (ref * shading).reshape(n, 2, n, 2).mean(axis=(1, 3))
    sigma = noise_sigma(objects, spec.snr)
    reference *= sigma / noise_sigma(reference, spec.snr)       # the file's reference gives back the SNR
    kspace = kspace + correlated_noise(rng, mixing, sigma, (t, s, spec.coils, samples)).transpose(0, 2, 1, 3)
    noise = correlated_noise(rng, mixing, sigma, (spec.noise_scans, spec.coils, samples))
    maps = maps_fine.reshape(spec.coils, n, 2, n, 2).mean(axis=(2, 4)).astype(np.complex64)
    ecg = cardiac.time_since_onset(times)
    return ShiftedScan(spec, kspace.astype(np.complex64), coords, reference, noise, times, ecg, maps, sigma,
                       extras={"mixing": mixing, "thorax": thorax, "loops": loops})


def combined_sensitivity(maps: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """``sqrt(S^H Psi^-1 S)`` per pixel for maps ``(C, Y, X)`` and noise covariance ``Psi``:
    the intensity weighting of the SNR-optimal (Roemer) combination, which a SENSE
    reconstruction of prewhitened data with unit-norm maps (ESPIRiT) returns."""
    inv = np.linalg.inv(psi)
    return np.sqrt(np.maximum(np.einsum("iyx,ij,jyx->yx", maps.conj(), inv, maps).real, 0.0))


def protocol(spec: ScanSpec) -> RadialProtocol:
    return RadialProtocol(matrix=spec.matrix, samples=2 * spec.matrix, coils=spec.coils,
                          spokes_per_frame=spec.spokes_per_frame, ordering=spec.ordering, tr_ms=spec.tr_ms,
                          fov_mm=spec.fov_mm, frames=spec.frames)


def _geometry(acq):
    acq.read_dir[:] = (1.0, 0.0, 0.0)
    acq.phase_dir[:] = (0.0, 1.0, 0.0)
    acq.slice_dir[:] = (0.0, 0.0, 1.0)


def write_scan(path: str, scan: ShiftedScan) -> None:
    """Write ``scan`` as an ISMRMRD file (see the module docstring)."""
    spec = scan.spec
    header = make_header(protocol(spec), measurement_id=f"shiftedsuite_{spec.axis}_{spec.seed}_0001")
    t, _, s, samples = scan.kspace.shape
    dset = ismrmrd.Dataset(path, "dataset", create_if_needed=True)
    try:
        dset.write_xml_header(header_to_xml(header))
        counter = 0
        for k in range(scan.noise.shape[0]):
            acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(scan.noise[k]))
            acq.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
            acq.sample_time_us = DWELL_US
            acq.scan_counter = counter
            _geometry(acq)
            dset.append_acquisition(acq)
            counter += 1
        for f in range(t):
            for p in range(s):
                acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(scan.kspace[f, :, p]),
                                                     np.ascontiguousarray(scan.coords[f, p]))
                acq.sample_time_us = DWELL_US
                acq.center_sample = samples // 2
                acq.scan_counter = counter
                acq.acquisition_time_stamp = int(round(scan.spoke_times[f, p] / TICK_SECONDS))
                acq.physiology_time_stamp[0] = int(round(scan.ecg[f, p] / TICK_SECONDS))
                mark_spoke(acq, f, p, t, s)
                _geometry(acq)
                dset.append_acquisition(acq)
                counter += 1
        for f, frame in enumerate(scan.reference):
            img = ismrmrd.Image.from_array(frame[None], transpose=False)
            head = img.getHead()
            head.image_index = f + 1
            head.repetition = f
            head.image_type = ismrmrd.IMTYPE_COMPLEX
            head.field_of_view[:] = (spec.fov_mm, spec.fov_mm, 8.0)
            head.acquisition_time_stamp = int(round(scan.spoke_times[f].mean() / TICK_SECONDS))
            img.setHead(head)
            dset.append_image(REFERENCE_GROUP, img)
    finally:
        dset.close()

