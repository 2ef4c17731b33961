"""The named axes of the shifted suite: one scan family per axis.

Every scan comes from this package's own object, coil, motion and noise models (none of
them used in training), with continuous spoke-by-spoke motion. A family pushes one factor
well outside the training distribution and keeps the others moderate:

=============  ==============================================================================
axis           what differs from the moderate setting
=============  ==============================================================================
``motion``     heart rate 95-130 bpm, ejection fraction 0.6-0.7, breathing 12-18 mm every 2.5-3.5 s
``snr``        image SNR 3-6 (training: 8-60)
``coils``      4-channel anterior-only, 16-, 20- and 32-channel anterior/posterior arrays, strong coupling
``anatomy``    finest texture, many thin vessels and trabeculae, a heart 0.6-0.8x the usual size
``trajectory`` tiny golden angle (pi / (phi + 6)) ordering
=============  ==============================================================================

Moderate setting: 13 golden-angle spokes per frame, TR 3 ms, 128x128, a 8- or 12-channel
anterior/posterior array, SNR 14-24, heart rate 60-85 bpm, breathing 4-8 mm every 4-5 s.
The ``val`` part (for tuning weights such as a CS lambda) and the ``test`` part (never
tuned on) differ only in their seeds.
"""
from __future__ import annotations

import numpy as np

from .acquisition import ScanSpec

AXES = ("motion", "snr", "coils", "anatomy", "trajectory")
PART_SEEDS = {"val": 70_000, "test": 80_000}
#: channel counts of the ``coils`` family, in turn (val and test start at different places)
COIL_COUNTS = {"val": (16, 20), "test": (4, 32, 20, 16)}


def moderate(rng: np.random.Generator, name: str, axis: str, seed: int, frames: int, matrix: int) -> ScanSpec:
    return ScanSpec(name=name, axis=axis, seed=seed, frames=frames, matrix=matrix,
                    coils=int(rng.choice([8, 12])), coupling=float(rng.uniform(0.1, 0.25)),
                    snr=float(rng.uniform(14, 24)), heart_rate_bpm=float(rng.uniform(60, 85)),
                    ejection_fraction=float(rng.uniform(0.5, 0.6)), breath_period_s=float(rng.uniform(4, 5)),
                    breath_mm=float(rng.uniform(4, 8)), detail=float(rng.uniform(0.3, 0.6)),
                    heart_scale=float(rng.uniform(0.9, 1.1)))


def family_spec(part: str, axis: str, index: int, frames: int = 32, matrix: int = 128) -> ScanSpec:
    """The ``index``-th scan of family ``axis`` in ``part`` (``val`` or ``test``)."""
    if part not in PART_SEEDS:
        raise ValueError(f"unknown suite part {part!r}; expected one of {sorted(PART_SEEDS)}")
    if axis not in AXES:
        raise ValueError(f"unknown axis {axis!r}; expected one of {AXES}")
    seed = PART_SEEDS[part] + 100 * AXES.index(axis) + index
    rng = np.random.default_rng(seed)
    spec = moderate(rng, f"{axis}_{index:02d}", axis, seed, frames, matrix)
    if axis == "motion":
        spec.heart_rate_bpm = float(rng.uniform(95, 130))
        spec.ejection_fraction = float(rng.uniform(0.6, 0.7))
        spec.breath_mm = float(rng.uniform(12, 18))
        spec.breath_period_s = float(rng.uniform(2.5, 3.5))
    elif axis == "snr":
        spec.snr = float(rng.uniform(3, 6))
    elif axis == "coils":
        counts = COIL_COUNTS[part]
        spec.coils = counts[index % len(counts)]
        spec.coupling = float(rng.uniform(0.25, 0.4))
    elif axis == "anatomy":
        spec.detail = float(rng.uniform(0.85, 1.0))
        spec.heart_scale = float(rng.uniform(0.6, 0.8))
    elif axis == "trajectory":
        spec.ordering = "tiny-golden"
    return spec


def suite_specs(part: str, per_axis: int, axes=AXES, frames: int = 32, matrix: int = 128) -> list[ScanSpec]:
    return [family_spec(part, axis, i, frames, matrix) for axis in axes for i in range(per_axis)]
