"""Physiological motion of the shifted suite, as functions of continuous time (seconds).

Cardiac: the RR interval varies beat to beat (each beat's length drawn around the mean
heart rate); within a beat the left-ventricular cavity follows a volume curve with a
fast ejection, a rapid-filling phase, diastasis and an atrial kick. ``contraction(t)`` is
0 at end-diastole and 1 at end-systole.

Respiration: the Lujan model ``s(t) = cos^(2n)(pi t / P - phi)``, 1 at end-expiration
lingering (n = 2 or 3), with the period ``P`` drifting slowly from cycle to cycle.
``breathing(t)`` is 0 at end-expiration and 1 at end-inspiration.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CardiacMotion:
    """Beat boundaries ``onsets`` (s, increasing, covering the scan) and the fraction of
    the RR interval ``systole`` taken by ejection."""
    onsets: np.ndarray
    systole: float = 0.35

    @classmethod
    def draw(cls, rng: np.random.Generator, heart_rate_bpm: float, duration_s: float,
             variability: float = 0.04) -> "CardiacMotion":
        """Beats of mean rate ``heart_rate_bpm`` and relative RR standard deviation
        ``variability``, starting at a random point of a cycle before ``t = 0``."""
        rr = 60.0 / heart_rate_bpm
        start = -rng.uniform(0.0, rr)
        count = int(np.ceil((duration_s - start) / (rr * (1 - 3 * variability)))) + 2
        lengths = rr * np.clip(1 + variability * rng.normal(size=count), 0.7, 1.3)
        return cls(start + np.concatenate([[0.0], np.cumsum(lengths)]),
                   systole=float(np.clip(0.35 + 0.1 * (heart_rate_bpm - 70) / 60, 0.3, 0.45)))

    def phase(self, t) -> np.ndarray:
        """Fraction ``[0, 1)`` of the current RR interval at times ``t`` (s)."""
        t = np.asarray(t, dtype=np.float64)
        k = np.clip(np.searchsorted(self.onsets, t, side="right") - 1, 0, len(self.onsets) - 2)
        return (t - self.onsets[k]) / (self.onsets[k + 1] - self.onsets[k])

    def time_since_onset(self, t) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        k = np.clip(np.searchsorted(self.onsets, t, side="right") - 1, 0, len(self.onsets) - 2)
        return t - self.onsets[k]

    def contraction(self, t) -> np.ndarray:
        """0 at end-diastole, 1 at end-systole: smooth ejection over ``systole`` of the RR,
        rapid filling (70 % of the volume back in 0.25 RR), diastasis, atrial kick."""
        p = self.phase(t)
        s = self.systole
        eject = 0.5 - 0.5 * np.cos(np.pi * np.clip(p / s, 0, 1))
        q = np.clip((p - s) / (1 - s), 0, 1)                       # diastole, 0..1
        rapid = 0.7 * (1 - np.exp(-q / 0.12)) / (1 - np.exp(-1 / 0.12))
        kick = 0.3 * np.clip((q - 0.75) / 0.25, 0, 1) ** 2 * (3 - 2 * np.clip((q - 0.75) / 0.25, 0, 1))
        return np.where(p < s, eject, 1 - rapid - kick)


@dataclass
class RespiratoryMotion:
    """Cycle starts ``onsets`` (s) and the Lujan exponent ``n``."""
    onsets: np.ndarray
    n: int = 2

    @classmethod
    def draw(cls, rng: np.random.Generator, period_s: float, duration_s: float) -> "RespiratoryMotion":
        start = -rng.uniform(0.0, period_s)
        count = int(np.ceil((duration_s - start) / (0.8 * period_s))) + 2
        lengths = period_s * np.clip(1 + 0.1 * rng.normal(size=count), 0.7, 1.4)
        return cls(start + np.concatenate([[0.0], np.cumsum(lengths)]), n=int(rng.choice([2, 3])))

    def breathing(self, t) -> np.ndarray:
        """0 at end-expiration, 1 at end-inspiration."""
        t = np.asarray(t, dtype=np.float64)
        k = np.clip(np.searchsorted(self.onsets, t, side="right") - 1, 0, len(self.onsets) - 2)
        p = (t - self.onsets[k]) / (self.onsets[k + 1] - self.onsets[k])
        return 1.0 - np.cos(np.pi * p) ** (2 * self.n)
