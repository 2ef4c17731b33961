"""Replay a recorded ISMRMRD file through the chain, as Gadgetron would run it."""
from __future__ import annotations

import dataclasses
import logging
import os
import time

import ismrmrd

from recon_core.mrd import TICK_SECONDS, open_dataset, protocol_from_header, read_acquisitions, read_header

from .chain import run_chain
from .feeder import ThreadedSource, paced
from .frames import frame_plan
from .stats import ChainStats, output_rate

log = logging.getLogger("rtcine.replay")
OUTPUT_GROUP = "images"


def open_output(out: str, source: str | None = None) -> ismrmrd.Dataset:
    """The ISMRMRD file ``out`` for writing, new: an existing file is replaced (logged), so a
    second run does not append a second copy of the images. ``source`` (the input file) is
    never replaced: writing into it raises :class:`ValueError`."""
    if os.path.exists(out):
        if source is not None and os.path.exists(source) and os.path.samefile(out, source):
            raise ValueError(f"--out {out} is the input file: choose another output file")
        log.warning("%s exists: replacing it", out)
        os.remove(out)
    return ismrmrd.Dataset(out, "dataset", create_if_needed=True)


def replay(path: str, cfg, out: str | None = None, realtime: bool = False, speed: float = 1.0,
           progress: bool = False, sink=None, warm: bool | None = None) -> dict:
    """Run the chain on the file ``path``; write images to ``out`` (group ``images``; an
    existing file is replaced, see :func:`open_output`).

    ``realtime`` paces the acquisitions by their time stamps (``speed`` x scanner pace) on
    a reader thread, so latencies are counted from when each spoke was due. ``warm``
    (default: ``realtime``) first does what a running server has done before a scan
    (:func:`gadgets.recon.warm_up` for this file's protocol: ESPIRiT's import and first run,
    the reconstructor built once, a network's first calls), so that the clock starts warm.
    Without ``realtime`` the file is read as fast as the chain takes it: there is no
    scanner to keep up with, so the real-time budget is off (``deadline_ms`` 0, ``overload``
    none): the configuration's full schedule, the same images on a fast or a busy machine.
    ``sink`` is an optional callable receiving every output image. Returns the summary
    dictionary.
    """
    if not realtime and (cfg.deadline_ms or cfg.overload != "none"):
        log.info("replay as fast as possible: no deadline (deadline_ms %g) and no overload policy (%s), there is "
                 "no scanner pace to keep up with", cfg.deadline_ms, cfg.overload)
        cfg = cfg.replace(deadline_ms=0.0, overload="none")
    dset = open_dataset(path)
    header = read_header(dset)
    protocol = protocol_from_header(header)
    if realtime if warm is None else warm:
        from .recon import warm_up
        t_warm = time.perf_counter()
        warm_up(cfg, dataclasses.replace(protocol, spokes_per_frame=frame_plan(cfg.spokes_per_frame, cfg.frame_stride,
                                                                              protocol).spokes))
        log.info("warmed up in %.2f s", time.perf_counter() - t_warm)
    total = dset.number_of_acquisitions()
    source = read_acquisitions(dset)
    if progress:
        from tqdm import tqdm
        source = tqdm(source, total=total, unit="acq", desc="replay", leave=False)
    reader = None
    if realtime:
        # bounded: at most queue_size frames of spokes wait between the reader and the chain
        spf = frame_plan(cfg.spokes_per_frame, cfg.frame_stride, protocol).spokes
        source = reader = ThreadedSource(paced(source, TICK_SECONDS, speed), maxsize=cfg.queue_size * spf)
    stats = ChainStats()
    try:
        writer = open_output(out, path) if out else None
    except BaseException:
        dset.close()
        raise
    if writer is not None:
        writer.write_xml_header(dset.read_xml_header())
    images, image_times = [], []
    t0 = time.perf_counter()
    try:
        for item in run_chain(source, header, cfg, stats):
            if isinstance(item, ismrmrd.Image):
                if writer is not None:
                    writer.append_image(OUTPUT_GROUP, item)
                if sink is not None:
                    sink(item)
                images.append(item)
                image_times.append(time.perf_counter())
    finally:
        wall = time.perf_counter() - t0
        if reader is not None:
            reader.close()
        dset.close()
        if writer is not None:
            writer.close()
    summary = stats.summary()
    stride = frame_plan(cfg.spokes_per_frame, cfg.frame_stride, protocol).stride
    summary.update(recon=cfg.recon, wall_s=wall, output_fps=output_rate(image_times),
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
        f"output {s['output_fps']:.1f} frames/s (first to last image) vs acquisition {s['acquisition_fps']:.1f} frames/s "
        f"(ratio {ratio:.2f}){' at scanner pace' if s['realtime'] else ', as fast as possible'}",
    ]
    if s.get("slices", 0) > 1 or s.get("frames_from"):
        lines.append(f"frames from {s.get('frames_from') or '-'}"
                     + (f"; {s['slices']} slices, each its own cine" if s.get("slices", 0) > 1 else ""))
    if s.get("non_imaging"):
        lines.append("non-imaging acquisitions passed on, not framed: "
                     + ", ".join(f"{k} x{v}" for k, v in s["non_imaging"].items()))
    if s.get("gradient_delay"):
        lines.append(f"gradient delay x,y[,xy] in readout samples: {s['gradient_delay']}; trajectories corrected")
    if s.get("maps_used"):
        first = s.get("first_espirit_frame", -1)
        lines.append("coil maps: " + ", ".join(f"{k} x{v}" for k, v in s["maps_used"].items())
                     + (f" (ESPIRiT from frame {first})" if first >= 0 else " (no frame on ESPIRiT maps)"))
    if s.get("output"):
        lines.append(f"images written to {s['output']} (group /dataset/{OUTPUT_GROUP})")
    return "\n".join(lines)
