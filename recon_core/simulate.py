"""Simulated multi-coil golden-angle radial cine: k-space, ISMRMRD stream and references.

The object is rendered on a grid twice as fine as the reconstruction matrix and
sampled by a NUFFT on that fine grid (the reconstruction uses the coarse one, so the
simulation does not commit the "inverse crime"); the reference frame is the 2x2 block
average of the fine object. One spoke per TR; each frame is rendered at the centre time
of its spokes (no motion within a frame).

Noise: complex Gaussian, correlated across coils with a random covariance ``Psi``
(mean diagonal 1), standard deviation ``sigma = m * N / snr`` where ``m`` is the mean
reference magnitude in the body: ``snr`` is the image SNR that a fully sampled Cartesian
acquisition of the same object would have. Noise-only acquisitions come first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import ismrmrd
import numpy as np
import torch

from .mrd import TICK_SECONDS, RadialProtocol, header_to_xml, make_header
from .nufft import nufft_forward
from .phantom import DynamicPhantom, coil_sensitivities, random_anatomy
from .trajectory import radial_coordinates, spoke_angles

#: Readout dwell time of the simulated acquisitions (microseconds).
DWELL_US = 2.5
REFERENCE_GROUP = "reference"


@dataclass
class SimulationConfig:
    frames: int = 40
    coils: int = 8
    matrix: int = 128
    spokes_per_frame: int = 13
    snr: float = 30.0
    seed: int = 0
    trajectory: str = "golden"
    include_traj: bool = True
    tr_ms: float = 3.0
    noise_scans: int = 4
    coil_correlation: float = 0.3
    oversampling: int = 2
    fov_mm: float = 300.0

    def protocol(self) -> RadialProtocol:
        return RadialProtocol(matrix=self.matrix, samples=self.oversampling * self.matrix, coils=self.coils,
                              spokes_per_frame=self.spokes_per_frame, ordering=self.trajectory,
                              tr_ms=self.tr_ms, fov_mm=self.fov_mm, frames=self.frames)


@dataclass
class SimulatedScan:
    """In-memory result. ``kspace (T, C, S, R)``, ``coords (T, S, R, 2)``, ``reference
    (T, N, N)`` complex64, ``noise (K, C, R)`` noise scans, ``frame_times`` (T,) seconds,
    ``true_maps (C, N, N)`` the simulated sensitivities on the recon grid (before the
    coil noise mixing, which prewhitening undoes up to a unitary rotation)."""
    config: SimulationConfig
    kspace: np.ndarray
    coords: np.ndarray
    reference: np.ndarray
    noise: np.ndarray
    noise_covariance: np.ndarray
    frame_times: np.ndarray
    heart_rate_bpm: float = 0.0
    true_maps: np.ndarray | None = None
    extras: dict = field(default_factory=dict)


def _coil_mixing(rng, coils, rho):
    a = np.eye(coils) + rho * (rng.normal(size=(coils, coils)) + 1j * rng.normal(size=(coils, coils))) / math.sqrt(
        2 * coils)
    psi = a @ a.conj().T
    scale = math.sqrt(np.real(np.trace(psi)) / coils)
    return a / scale, psi / scale ** 2


def simulate(cfg: SimulationConfig, progress=None) -> SimulatedScan:
    """Simulate one scan. ``progress`` is an optional callable ``progress(frames_done)``."""
    rng = np.random.default_rng(cfg.seed)
    n, s, t_frames = cfg.matrix, cfg.spokes_per_frame, cfg.frames
    samples = cfg.oversampling * n
    fine = 2 * n
    anatomy = random_anatomy(rng)
    phantom = DynamicPhantom(anatomy, fine)
    maps = torch.from_numpy(coil_sensitivities(rng, cfg.coils, fine))
    mixing, psi = _coil_mixing(rng, cfg.coils, cfg.coil_correlation)

    profiles = np.arange(t_frames * s).reshape(t_frames, s)
    angles = spoke_angles(profiles, cfg.trajectory, s)
    coords = radial_coordinates(angles, samples)                             # (T, S, R, 2)
    tr = cfg.tr_ms * 1e-3
    frame_times = (profiles.mean(1) + 0.5) * tr

    kspace = np.empty((t_frames, cfg.coils, s, samples), np.complex64)
    reference = np.empty((t_frames, n, n), np.complex64)
    for f in range(t_frames):
        obj = phantom.render(frame_times[f])
        reference[f] = obj.reshape(n, 2, n, 2).mean(axis=(1, 3))
        k_fine = torch.from_numpy(coords[f].reshape(1, -1, 2) / 2.0)
        y = nufft_forward((maps * torch.from_numpy(obj))[None], k_fine)[0] / 4.0
        kspace[f] = y.numpy().reshape(cfg.coils, s, samples)
        if progress:
            progress(f + 1)

    body = np.abs(reference[0]) > 0.05 * np.abs(reference[0]).max()
    sigma = float(np.abs(reference[:, body]).mean()) * n / cfg.snr

    def noise(shape):
        z = (rng.normal(size=shape) + 1j * rng.normal(size=shape)) / math.sqrt(2)
        return sigma * np.einsum("ij,...jk->...ik", mixing, z)

    kspace = (kspace + noise(kspace.shape[:-3] + (cfg.coils, s * samples)).reshape(kspace.shape)).astype(
        np.complex64)
    noise_scans = noise((cfg.noise_scans, cfg.coils, samples)).astype(np.complex64)
    true_maps = maps.numpy().reshape(cfg.coils, n, 2, n, 2).mean(axis=(2, 4))
    return SimulatedScan(cfg, kspace, coords, reference, noise_scans, psi * sigma ** 2, frame_times,
                         heart_rate_bpm=anatomy.heart_rate_bpm, true_maps=true_maps.astype(np.complex64),
                         extras={"sigma": sigma, "mixing": mixing})


def _set_geometry(acq):
    acq.read_dir[:] = (1.0, 0.0, 0.0)
    acq.phase_dir[:] = (0.0, 1.0, 0.0)
    acq.slice_dir[:] = (0.0, 0.0, 1.0)
    acq.position[:] = (0.0, 0.0, 0.0)


def acquisitions(scan: SimulatedScan):
    """Yield the scan as ISMRMRD acquisitions: noise scans, then one per spoke in time order."""
    cfg = scan.config
    samples = scan.kspace.shape[-1]
    counter = 0
    for k in range(scan.noise.shape[0]):
        acq = ismrmrd.Acquisition.from_array(scan.noise[k])
        acq.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
        acq.sample_time_us = DWELL_US
        acq.scan_counter = counter
        _set_geometry(acq)
        counter += 1
        yield acq
    tr = cfg.tr_ms * 1e-3
    rr = 60.0 / scan.heart_rate_bpm
    t_frames, _, s, _ = scan.kspace.shape
    for f in range(t_frames):
        for p in range(s):
            n = f * s + p
            t = (n + 1) * tr
            traj = scan.coords[f, p] if cfg.include_traj else None
            acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(scan.kspace[f, :, p]), traj)
            acq.sample_time_us = DWELL_US
            acq.center_sample = samples // 2
            acq.scan_counter = counter
            acq.acquisition_time_stamp = int(round(t / TICK_SECONDS))
            acq.physiology_time_stamp[0] = int(round((t % rr) / TICK_SECONDS))
            acq.idx.kspace_encode_step_1 = n
            acq.idx.repetition = f
            _set_geometry(acq)
            if p == 0:
                acq.set_flag(ismrmrd.ACQ_FIRST_IN_REPETITION)
            if p == s - 1:
                acq.set_flag(ismrmrd.ACQ_LAST_IN_REPETITION)
            if n == 0:
                acq.set_flag(ismrmrd.ACQ_FIRST_IN_SLICE)
            if n == t_frames * s - 1:
                acq.set_flag(ismrmrd.ACQ_LAST_IN_SLICE)
                acq.set_flag(ismrmrd.ACQ_LAST_IN_MEASUREMENT)
            counter += 1
            yield acq


def reference_images(scan: SimulatedScan):
    """The fully sampled reference frames as ISMRMRD images (complex64, one per frame)."""
    for f, frame in enumerate(scan.reference):
        img = ismrmrd.Image.from_array(frame[None], transpose=False)
        head = img.getHead()
        head.image_index = f + 1
        head.repetition = f
        head.image_type = ismrmrd.IMTYPE_COMPLEX
        head.field_of_view[:] = (scan.config.fov_mm, scan.config.fov_mm, 8.0)
        img.setHead(head)
        yield img


def write_dataset(path: str, scan: SimulatedScan) -> None:
    """Write header, acquisitions and the reference image group to an ISMRMRD HDF5 file."""
    dset = ismrmrd.Dataset(path, "dataset", create_if_needed=True)
    try:
        dset.write_xml_header(header_to_xml(make_header(scan.config.protocol())))
        for acq in acquisitions(scan):
            dset.append_acquisition(acq)
        for img in reference_images(scan):
            dset.append_image(REFERENCE_GROUP, img)
    finally:
        dset.close()
