"""Replay a recorded ISMRMRD file through the chain, as Gadgetron would run it."""
from __future__ import annotations

import logging
import time

import ismrmrd

from recon_core.mrd import TICK_SECONDS, open_dataset, protocol_from_header, read_acquisitions, read_header

from .chain import run_chain
from .feeder import ThreadedSource, paced
from .stats import ChainStats

log = logging.getLogger("rtcine.replay")
OUTPUT_GROUP = "images"


def replay(path: str, cfg, out: str | None = None, realtime: bool = False, speed: float = 1.0,
           progress: bool = False, sink=None) -> dict:
    """Run the chain on the file ``path``; write images to ``out`` (group ``images``).

    ``realtime`` paces the acquisitions by their time stamps (``speed`` x scanner pace) on
    a reader thread, so latencies are counted from when each spoke was due. ``sink`` is an
    optional callable receiving every output image. Returns the summary dictionary.
    """
    dset = open_dataset(path)
    header = read_header(dset)
    protocol = protocol_from_header(header)
    total = dset.number_of_acquisitions()
    source = read_acquisitions(dset)
    if progress:
        from tqdm import tqdm
        source = tqdm(source, total=total, unit="acq", desc="replay", leave=False)
    reader = None
    if realtime:
        # bounded: at most queue_size frames of spokes wait between the reader and the chain
        spf = cfg.spokes_per_frame or protocol.spokes_per_frame or 13
        source = reader = ThreadedSource(paced(source, TICK_SECONDS, speed), maxsize=cfg.queue_size * spf)
    stats = ChainStats()
    writer = ismrmrd.Dataset(out, "dataset", create_if_needed=True) if out else None
    if writer is not None:
        writer.write_xml_header(dset.read_xml_header())
    images = []
    t0 = time.perf_counter()
    try:
        for item in run_chain(source, header, cfg, stats):
            if isinstance(item, ismrmrd.Image):
                if writer is not None:
                    writer.append_image(OUTPUT_GROUP, item)
                if sink is not None:
                    sink(item)
                images.append(item)
    finally:
        wall = time.perf_counter() - t0
        if reader is not None:
            reader.close()
        dset.close()
        if writer is not None:
            writer.close()
    summary = stats.summary()
    spf = cfg.spokes_per_frame or protocol.spokes_per_frame or 13
    stride = cfg.frame_stride or spf
    summary.update(recon=cfg.recon, wall_s=wall, output_fps=len(images) / wall if wall > 0 else 0.0,
                   acquisition_fps=1000.0 / (protocol.tr_ms * stride) if protocol.tr_ms else float("nan"),
                   realtime=realtime, output=out,
                   input_queue_bound=reader.bound if reader else 0,
                   input_queue_high_water=reader.high_water if reader else 0)
    summary["images_list"] = images
    return summary


def format_summary(s: dict) -> str:
    lat = s["latency_ms"]
    ratio = s["output_fps"] / s["acquisition_fps"] if s["acquisition_fps"] == s["acquisition_fps"] else float("nan")
    lines = [
        f"recon {s['recon']}: {s['spokes']} spokes -> {s['frames']} frames in, {s['images']} images out"
        + (f" ({s['partial_frames']} partial)" if s["partial_frames"] else "")
        + (f", {s['dropped_spokes']} trailing spokes not reconstructed" if s["dropped_spokes"] else ""),
        f"latency (last spoke -> image) p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, max {lat['max']:.1f} ms",
        f"output {s['output_fps']:.1f} frames/s vs acquisition {s['acquisition_fps']:.1f} frames/s "
        f"(ratio {ratio:.2f}){' at scanner pace' if s['realtime'] else ', as fast as possible'}",
    ]
    if s.get("output"):
        lines.append(f"images written to {s['output']} (group /dataset/{OUTPUT_GROUP})")
    return "\n".join(lines)
