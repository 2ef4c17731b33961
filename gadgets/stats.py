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
    # input validation (gadgets/validate.py)
    bad_spokes: int = 0
    bad_noise_scans: int = 0
    duplicate_spokes: int = 0
    out_of_order_spokes: int = 0
    gaps: int = 0
    missing_spokes: int = 0
    counter_out_of_range: int = 0
    input_problems: dict = field(default_factory=dict)
    #: why the stream was ended early ("" if it was not); the frames complete before still gave images
    stream_error: str = ""
    #: why the asked reconstruction was replaced by CG-SENSE ("" if it was not)
    fallback: str = ""

    def summary(self) -> dict:
        return {"noise_acquisitions": self.noise_acquisitions, "spokes": self.spokes, "frames": self.frames,
                "images": self.images, "partial_frames": self.partial_frames,
                "dropped_spokes": self.dropped_spokes, "skipped_frames": self.skipped_frames,
                "skipped": list(self.skipped), "reduced_frames": self.reduced_frames,
                "iterations_mean": float(sum(self.iterations) / len(self.iterations)) if self.iterations else 0.0,
                "passed_through": self.passed_through, "latency_ms": latency_stats(self.latencies_ms),
                "latency_list": [float(x) for x in self.latencies_ms],
                "errors": list(self.errors),
                "bad_spokes": self.bad_spokes, "bad_noise_scans": self.bad_noise_scans,
                "duplicate_spokes": self.duplicate_spokes, "out_of_order_spokes": self.out_of_order_spokes,
                "gaps": self.gaps, "missing_spokes": self.missing_spokes,
                "counter_out_of_range": self.counter_out_of_range, "input_problems": dict(self.input_problems),
                "stream_error": self.stream_error, "fallback": self.fallback,
                # frames formed vs images sent: every frame is an image or a counted skip
                "unaccounted_frames": self.frames - self.images - self.skipped_frames}
