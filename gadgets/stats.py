"""Counters a chain keeps about one stream, shared by its gadgets and read by the summary."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from recon_core.metrics import latency_stats

log = logging.getLogger("rtcine")


@dataclass
class ChainStats:
    noise_acquisitions: int = 0
    spokes: int = 0
    frames: int = 0
    images: int = 0
    partial_frames: int = 0
    dropped_spokes: int = 0
    skipped_frames: int = 0
    skipped: list = field(default_factory=list)
    reduced_frames: int = 0
    passed_through: int = 0
    iterations: list = field(default_factory=list)
    latencies_ms: list = field(default_factory=list)
    errors: list = field(default_factory=list)

    def summary(self) -> dict:
        return {"noise_acquisitions": self.noise_acquisitions, "spokes": self.spokes, "frames": self.frames,
                "images": self.images, "partial_frames": self.partial_frames,
                "dropped_spokes": self.dropped_spokes, "skipped_frames": self.skipped_frames,
                "skipped": list(self.skipped), "reduced_frames": self.reduced_frames,
                "iterations_mean": float(sum(self.iterations) / len(self.iterations)) if self.iterations else 0.0,
                "passed_through": self.passed_through, "latency_ms": latency_stats(self.latencies_ms),
                "latency_list": [float(x) for x in self.latencies_ms],
                "errors": list(self.errors)}
