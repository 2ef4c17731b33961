"""Simulated multi-coil golden-angle radial cine: k-space, ISMRMRD stream and references.

The object is rendered on a grid twice as fine as the reconstruction matrix and
sampled by a NUFFT on that fine grid (the reconstruction uses the coarse one, so the
simulation does not commit the "inverse crime"); the reference frame is the 2x2 block
average of the fine object. One spoke per TR; each frame is rendered at the centre time
of its spokes, or, with ``motion_samples`` > 1, each group of a frame's spokes at the group's
own time (motion within a frame; ``motion_samples = spokes_per_frame``: spoke by spoke);
the reference is always the object at the frame's centre time.

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

from .gradient_delay import GradientDelay, delayed_coordinates
from .mrd import RadialProtocol, header_to_xml, make_header
from .nufft import nufft_forward
from .phantom import DynamicPhantom, coil_sensitivities, random_anatomy
from .texture_phantom import TexturePhantom, random_texture_object
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
    #: times per frame the object is rendered (1: at the frame's centre; spokes_per_frame: per spoke)
    motion_samples: int = 1
    #: coil arrangement (phantom.COIL_LAYOUTS)
    coil_layout: str = "ring"
    #: the object: cardiac (recon_core.phantom) or texture (recon_core.texture_phantom, no
    #: anatomical template); texture and fine_texture below apply to the cardiac one
    object: str = "cardiac"
    #: amplitude of the smooth texture (1: as drawn) and std of a fine-grained one
    texture: float = 1.0
    fine_texture: float = 0.0
    #: gradient delays (dx, dy[, dxy]) in readout samples (recon_core.gradient_delay): the
    #: k-space is sampled on the delayed trajectory, the acquisitions carry the nominal one
    gradient_delay: tuple = (0.0, 0.0)
    #: what a scanner's stream carries (recon_core.simulate_stack): slices (each its own anatomy,
    #: coils and position), their order (sequential or interleaved) and spacing; the header
    #: without the spokes_per_frame user parameter (spf_header=False: frames from the markers);
    #: dummy scans and a phase-correction acquisition at the start of each slice; a navigator
    #: every navigator_every spokes (0: none)
    slices: int = 1
    slice_order: str = "sequential"
    slice_spacing_mm: float = 10.0
    spf_header: bool = True
    dummy_scans: int = 0
    phasecorr: bool = False
    navigator_every: int = 0

    def protocol(self) -> RadialProtocol:
        return RadialProtocol(matrix=self.matrix, samples=self.oversampling * self.matrix, coils=self.coils,
                              spokes_per_frame=self.spokes_per_frame, ordering=self.trajectory,
                              tr_ms=self.tr_ms, fov_mm=self.fov_mm, frames=self.frames, slices=self.slices)


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
    if cfg.object == "texture":
        anatomy = random_texture_object(rng)
        phantom = TexturePhantom(anatomy, fine)
    elif cfg.object == "cardiac":
        anatomy = random_anatomy(rng)
        phantom = DynamicPhantom(anatomy, fine, cfg.texture, cfg.fine_texture)
    else:
        raise ValueError(f"object={cfg.object!r}: expected cardiac or texture")
    maps = torch.from_numpy(coil_sensitivities(rng, cfg.coils, fine, cfg.coil_layout))
    mixing, psi = _coil_mixing(rng, cfg.coils, cfg.coil_correlation)

    profiles = np.arange(t_frames * s).reshape(t_frames, s)
    angles = spoke_angles(profiles, cfg.trajectory, s)
    coords = radial_coordinates(angles, samples)                             # (T, S, R, 2)
    sampled = delayed_coordinates(coords, GradientDelay(*cfg.gradient_delay))  # where the samples are
    tr = cfg.tr_ms * 1e-3
    frame_times = (profiles.mean(1) + 0.5) * tr

    kspace = np.empty((t_frames, cfg.coils, s, samples), np.complex64)
    reference = np.empty((t_frames, n, n), np.complex64)
    groups = np.array_split(np.arange(s), max(1, min(cfg.motion_samples, s)))
    for f in range(t_frames):
        obj = phantom.render(frame_times[f])
        reference[f] = obj.reshape(n, 2, n, 2).mean(axis=(1, 3))
        for spokes in groups:
            if len(groups) > 1:               # the object while these spokes were acquired
                obj = phantom.render((profiles[f, spokes].mean() + 0.5) * tr)
            k_fine = torch.from_numpy(sampled[f, spokes].reshape(1, -1, 2) / 2.0)
            y = nufft_forward((maps * torch.from_numpy(obj))[None], k_fine)[0] / 4.0
            kspace[f][:, spokes] = y.numpy().reshape(cfg.coils, len(spokes), samples)
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


def acquisitions(scan):
    """Yield the scan (a :class:`SimulatedScan`, or a stack from
    :func:`recon_core.simulate_stack.simulate_stack`) as ISMRMRD acquisitions: noise scans,
    then one acquisition per TR in time order (spokes with their frame and slice markers,
    and the non-imaging acquisitions the configuration asks for; see
    :mod:`recon_core.simulate_stack`)."""
    from .simulate_stack import SimulatedStack, slice_positions, stream_acquisitions

    if not isinstance(scan, SimulatedStack):
        scan = SimulatedStack(scan.config, [scan], slice_positions(1, 0.0))
    yield from stream_acquisitions(scan, DWELL_US)


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


def write_dataset(path: str, scan) -> None:
    """Write header, acquisitions and the reference image group to an ISMRMRD HDF5 file
    (a stack: every slice's references, with their ``slice``)."""
    from .simulate_stack import SimulatedStack
    from .simulate_stack import reference_images as stack_references

    cfg = scan.config
    protocol = cfg.protocol()
    protocol.slices = len(scan.slices) if isinstance(scan, SimulatedStack) else 1
    dset = ismrmrd.Dataset(path, "dataset", create_if_needed=True)
    try:
        dset.write_xml_header(header_to_xml(make_header(protocol, spf_parameter=cfg.spf_header)))
        for acq in acquisitions(scan):
            dset.append_acquisition(acq)
        references = stack_references(scan, cfg.fov_mm) if isinstance(scan, SimulatedStack) else reference_images(scan)
        for img in references:
            dset.append_image(REFERENCE_GROUP, img)
    finally:
        dset.close()
