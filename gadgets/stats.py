"""Counters a chain keeps about one stream, shared by its gadgets and read by the summary."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

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
    #: what decided where frames begin and end (gadgets/frames.py: configuration, markers, header, default)
    frames_from: str = ""
    #: slices seen (idx.slice values) and slices ended (their state freed)
    slices: int = 0
    slices_ended: int = 0
    #: acquisitions that are not imaging spokes, by kind (dummy scan, navigator, ...): passed on, never framed
    non_imaging: dict = field(default_factory=dict)
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
    #: gradient delay the trajectories were corrected with, "dx,dy[,dxy] (source)" ("" if none)
    gradient_delay: str = ""
    #: images reconstructed with each kind of coil maps (espirit, lowres, fallback), and the
    #: first frame (its index) on ESPIRiT maps (-1: none)
    maps_used: dict = field(default_factory=dict)
    first_espirit_frame: int = -1

    def summary(self) -> dict:
        """Every counter, plus the per-frame lists summarised (latency percentiles, mean
        iterations) and ``unaccounted_frames`` (frames formed - images sent - counted skips;
        0 when every frame is accounted for)."""
        out = asdict(self)
        iterations, latencies = out.pop("iterations"), out.pop("latencies_ms")
        out.update(iterations_mean=float(sum(iterations) / len(iterations)) if iterations else 0.0,
                   latency_ms=latency_stats(latencies), latency_list=[float(x) for x in latencies],
                   unaccounted_frames=self.frames - self.images - self.skipped_frames)
        return out


def output_rate(times) -> float:
    """Images per second while the images came out: ``(n - 1) / (t_last - t_first)`` over the
    arrival times ``times`` (seconds, any order) of ``n`` images; 0 with fewer than two.

    This is the rate to set against the acquisition's frame rate to say whether a
    reconstruction keeps up. A connection's set-up and tear-down (handshake, the final CLOSE,
    joining the coil-map thread) are not output; they are in ``wall_s``, and a slow start
    shows in the first frames' latency."""
    t = sorted(times)
    return (len(t) - 1) / (t[-1] - t[0]) if len(t) >= 2 and t[-1] > t[0] else 0.0
