"""Reconstruction gadget: frames in, (frame, image, info) out, with the coil-map service.

A *frame reconstructor* has two methods:

- ``push(frame, maps) -> list[(frame, image (Y, X) complex64 numpy, info dict)]``: take
  one frame; return the frames whose images are ready (classical methods return the
  frame at once; windowed networks may return earlier frames);
- ``flush() -> list[...]``: the images still held at the end of the stream.
"""
from __future__ import annotations

import logging
import time

import torch

from recon_core import reconstructors as rc

from .coilmaps import CoilMapService
from .frames import Frame

log = logging.getLogger("rtcine.recon")


class ClassicalRecon:
    """Gridding or CG-SENSE, one frame at a time."""

    def __init__(self, name: str, cfg, device: torch.device):
        self.name, self.cfg, self.device = name, cfg, device

    def push(self, frame: Frame, maps: torch.Tensor):
        kspace = torch.from_numpy(frame.kspace[None]).to(self.device)
        coords = torch.from_numpy(frame.coords[None]).to(self.device)
        if self.name == "gridding":
            image = rc.gridding(kspace, coords, maps)
            info = {"recon": "gridding"}
        else:
            image = rc.cg_sense(kspace, coords, maps, self.cfg.cg_iterations, self.cfg.cg_lambda)
            info = {"recon": "cgsense", "iterations": self.cfg.cg_iterations}
        return [(frame, image[0].cpu().numpy(), info)]

    def flush(self):
        return []


#: name -> factory(cfg, device, protocol); networks register themselves here.
RECONSTRUCTORS = {
    "gridding": lambda cfg, device, protocol: ClassicalRecon("gridding", cfg, device),
    "cgsense": lambda cfg, device, protocol: ClassicalRecon("cgsense", cfg, device),
}


def make_reconstructor(cfg, device, protocol):
    if cfg.recon not in RECONSTRUCTORS:
        # networks live in recon_core.networks and register on import
        from recon_core.networks import streaming  # noqa: F401  (registers "imunne")
        RECONSTRUCTORS.update(streaming.RECONSTRUCTORS)
    return RECONSTRUCTORS[cfg.recon](cfg, device, protocol)


def reconstruct_frames(items, cfg, protocol, stats, clock=time.perf_counter):
    """Turn :class:`Frame` items into ``(frame, image, info)`` tuples; pass others through.

    ``info`` carries the recon name, the coil-map source and the latency in ms from the
    frame's last spoke to the moment its image is ready.
    """
    device = torch.device(cfg.device)
    shape = (protocol.matrix, protocol.matrix)
    maps = CoilMapService(shape, cfg.coil_maps, cfg.calibration_frames, cfg.coil_map_refresh, cfg.device)
    recon = make_reconstructor(cfg, device, protocol)
    held: list[Frame] = []

    def finish(results, source):
        now = clock()
        for frame, image, info in results:
            info = dict(info, coil_maps=source, latency_ms=(now - frame.arrival) * 1e3)
            stats.latencies_ms.append(info["latency_ms"])
            if "iterations" in info:
                stats.iterations.append(info["iterations"])
            yield frame, image, info

    def run(frame):
        current, source = maps.current()
        yield from finish(recon.push(frame, current), source)

    try:
        for item in items:
            if not isinstance(item, Frame):
                yield item
                continue
            maps.add(item)
            held.append(item)
            if cfg.wait_for_maps and not maps.ready():
                if not maps.pending:
                    continue
                maps.finish()
            batch, held = held, []
            for frame in batch:
                yield from run(frame)
        if held:
            maps.finish()
            for frame in held:
                yield from run(frame)
        yield from finish(recon.flush(), maps.source)
    finally:
        maps.close()
