"""Training, validation and held-out test sets from the simulator.

Each scan is prepared the way the chain sees it: prewhitened with the covariance of its
noise scans (Gadgetron's formula), ESPIRiT maps from the pooled first
``calibration_frames`` frames (in the train and val splits cropped to the object as the
chain crops them, ``ReconConfig.espirit_support``). Its training target is the reference
in the coil maps' phase convention: ``target = (S_esp^H W S_true) * rho``, i.e. what a
perfect SENSE reconstruction with these maps returns (ESPIRiT maps carry an arbitrary
smooth phase, and prewhitening changes intensity weighting; a magnitude reference alone
cannot say so).

Splits (the held-out split uses seeds never seen in training):

- ``train``: seeds 1000+, golden, tiny-golden or linear ordering, 9-21 spokes per frame,
  4-16 coils in a ring or in anterior/posterior panels, SNR 3-60 (log-uniform), coil
  noise correlation 0-0.5, motion within a frame (each spoke rendered at its own time) in
  70% of the scans, texture amplitude 0.5-2.5x and a fine texture of 0-8%; 35% of the
  objects from the texture family (:mod:`recon_core.texture_phantom`: random regions,
  thin curves, power-law texture, warped by a beat and breathing), the rest cardiac;
- ``val``: seeds 5000+, same distribution;
- ``test``: seeds 9000+, the standard protocol (13 golden-angle spokes, 8 coils,
  128x128, SNR 30), plus ``test-ood``: tiny-golden ordering, 12 coils, SNR 12.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict

import numpy as np

from ..coils import NoiseCovariance, estimate_maps, prewhitening_matrix
from ..config import ReconConfig
from ..simulate import DWELL_US, SimulationConfig, simulate


#: file-name tag of a split's current distribution, so that scans of an earlier one in the
#: same folder are never mixed in (v2: the widened training distribution above; v3: the same
#: with a share of the scans on the texture object family; v4: the same scans, their ESPIRiT
#: maps cropped to the object as the chain's, ReconConfig.espirit_support)
SPLIT_VERSIONS = {"train": "-v4", "val": "-v4"}
#: the splits whose maps are cropped to the object (the held-out test splits keep ESPIRiT's own
#: crop, so that their published numbers stay comparable)
CROPPED_SPLITS = ("train", "val")
#: share of the train and val scans whose object is the texture family (recon_core.texture_phantom)
TEXTURE_SHARE = 0.35
#: frames per simulated scan unless asked otherwise; other lengths carry ``_f<frames>`` in
#: their file names (:func:`split_file`)
SCAN_FRAMES = 16


def split_configs(split: str, count: int, frames: int = SCAN_FRAMES, matrix: int = 128) -> list[SimulationConfig]:
    """The simulation settings of ``count`` scans of a split."""
    base = {"train": 1000, "val": 5000, "test": 9000, "test-ood": 9500}[split]
    out = []
    for i in range(count):
        rng = np.random.default_rng(base + i)
        if split in ("train", "val"):
            spokes = int(rng.choice([9, 11, 13, 15, 17, 21]))
            cfg = SimulationConfig(
                frames=frames, matrix=matrix, seed=base + i,
                coils=int(rng.choice([4, 6, 8, 10, 12, 16])),
                spokes_per_frame=spokes,
                snr=float(np.exp(rng.uniform(np.log(3), np.log(60)))),
                trajectory=str(rng.choice(["golden", "golden", "tiny-golden", "linear"])),
                coil_correlation=float(rng.uniform(0.0, 0.5)),
                motion_samples=spokes if rng.uniform() < 0.7 else 1,
                coil_layout=str(rng.choice(["ring", "ring", "panels"])),
                texture=float(rng.uniform(0.5, 2.5)), fine_texture=float(rng.uniform(0.0, 0.08)),
                object="texture" if rng.uniform() < TEXTURE_SHARE else "cardiac")   # drawn last: the rest as in v2
        elif split == "test":
            cfg = SimulationConfig(frames=frames, matrix=matrix, seed=base + i, coils=8, spokes_per_frame=13,
                                   snr=30.0, trajectory="golden")
        else:
            cfg = SimulationConfig(frames=frames, matrix=matrix, seed=base + i, coils=12, spokes_per_frame=13,
                                   snr=12.0, trajectory="tiny-golden")
        out.append(cfg)
    return out


def prepare(cfg: SimulationConfig, calibration_frames: int = 10, support: float = 0.0) -> dict:
    """Simulate and prepare one scan: arrays ``kspace (T, C, S, R)``, ``coords (T, S, R, 2)``,
    ``maps (C, N, N)``, ``target (T, N, N)``, ``reference (T, N, N)``. ``support`` > 0 crops
    the maps to the object (:func:`recon_core.coils.espirit_maps`); the target is then zero
    outside it as well."""
    scan = simulate(cfg)
    cov = NoiseCovariance()
    for k in scan.noise:
        cov.add(k, DWELL_US)
    w = prewhitening_matrix(cov.matrix, DWELL_US, DWELL_US)
    kspace = np.einsum("ij,tjsr->tisr", w, scan.kspace).astype(np.complex64)
    t, c, s, r = kspace.shape
    calib = min(calibration_frames, t)
    maps = estimate_maps(kspace[:calib].transpose(0, 2, 1, 3).reshape(-1, c, r),
                         scan.coords[:calib].reshape(-1, r, 2), (cfg.matrix, cfg.matrix), "espirit",
                         support=support)
    s_eff = np.einsum("ij,jyx->iyx", w, scan.true_maps)
    projection = (np.conj(maps) * s_eff).sum(0)
    return {"kspace": kspace, "coords": scan.coords, "maps": maps,
            "target": (projection[None] * scan.reference).astype(np.complex64),
            "reference": scan.reference, "config": np.array(str(asdict(cfg)))}


def split_file(split: str, seed, frames: int = SCAN_FRAMES) -> str:
    """The file name of a split's prepared scan: ``<split><version>_<seed>[_f<frames>].npz``
    (``seed`` may be a glob pattern such as ``"*"``)."""
    length = "" if frames == SCAN_FRAMES else f"_f{frames}"
    return f"{split}{SPLIT_VERSIONS.get(split, '')}_{seed}{length}.npz"


def split_files(directory: str, split: str, frames: int = SCAN_FRAMES) -> list[str]:
    """The sorted paths of the split's prepared scans of ``frames`` frames in ``directory``
    (:func:`split_file` names, any seed; scans of other lengths are not listed)."""
    name = re.compile(re.escape(split_file(split, "SEED", frames)).replace("SEED", r"\d+"))
    if not os.path.isdir(directory):
        return []
    return sorted(os.path.join(directory, f) for f in os.listdir(directory) if name.fullmatch(f))


def build_split(directory: str, split: str, count: int, frames: int = SCAN_FRAMES, matrix: int = 128,
                progress=None) -> list[str]:
    """Write the split's prepared scans as ``.npz`` files (no pickle) into ``directory``;
    existing files are kept, so an interrupted build resumes (named by :func:`split_file`:
    another length is never reused)."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for i, cfg in enumerate(split_configs(split, count, frames, matrix)):
        path = os.path.join(directory, split_file(split, cfg.seed, frames))
        if not os.path.exists(path):
            tmp = path + ".tmp.npz"
            np.savez(tmp, **prepare(cfg, support=ReconConfig.espirit_support if split in CROPPED_SPLITS else 0.0))
            os.replace(tmp, path)
        paths.append(path)
        if progress:
            progress(i + 1)
    return paths


def load_scan(path: str) -> dict:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
