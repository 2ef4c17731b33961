"""The chain: ISMRMRD items in, ISMRMRD images (and passed-through items) out.

    acquisitions -> validate_stream -> noise_adjust -> coil_compression -> frame_buffer -> gradient_delay_correction
        -> reconstruct_frames -> make_image

``validate_stream`` drops, counts and logs bad acquisitions and ends the stream early on
faults it cannot step over (then the frames complete before are still reconstructed and
``stats.stream_error`` says why; see gadgets/validate.py). The same function runs inside
Gadgetron (``gadgets.entry.reconstruct``), behind ``rtcine serve`` and in ``rtcine replay``.
"""
from __future__ import annotations

import logging

from recon_core.mrd import protocol_from_header

from .compression import coil_compression
from .frames import DEFAULT_SPOKES_PER_FRAME, Frame, frame_buffer, frame_plan
from .gradient_delay import gradient_delay_correction
from .images import make_image
from .noise import noise_adjust
from .recon import reconstruct_frames
from .stats import ChainStats
from .validate import validate_stream

log = logging.getLogger("rtcine.chain")

__all__ = ["DEFAULT_SPOKES_PER_FRAME", "run_chain"]


def run_chain(items, header, cfg, stats: ChainStats | None = None):
    """Yield output items for the input ``items``; counters go to ``stats``. With
    ``cfg.view_url`` every image is also forwarded (non-blocking) to a live viewer."""
    stats = stats if stats is not None else ChainStats()
    out = _run_chain(items, header, cfg, stats)
    if cfg.view_url:
        from .viewer import forward_to_viewer
        out = forward_to_viewer(out, cfg.view_url)
    yield from out


def _run_chain(items, header, cfg, stats: ChainStats):
    protocol = protocol_from_header(header)
    plan = frame_plan(cfg.spokes_per_frame, cfg.frame_stride, protocol)
    protocol.spokes_per_frame = plan.spokes       # the count linear angles and the overload guard use
    ordering = cfg.ordering or protocol.ordering
    log.info("chain: recon=%s, matrix %d, %d coils%s, %d slice(s) in the header, device %s",
             cfg.recon, protocol.matrix, protocol.coils,
             f" -> {cfg.virtual_coils} virtual" if cfg.virtual_coils else "", protocol.slices, cfg.device)
    log.info("frames from: %s", plan.describe())
    stream = validate_stream(items, header, protocol, ordering, stats)
    stream = noise_adjust(stream, header, stats, enabled=cfg.prewhiten)
    stream = coil_compression(stream, cfg.virtual_coils, cfg.compression_spokes, header_coils=protocol.coils)
    stream = frame_buffer(stream, protocol, ordering, plan, stats=stats, min_partial_fraction=cfg.min_partial_fraction)
    stream = gradient_delay_correction(stream, cfg, stats)
    for out in reconstruct_frames(stream, cfg, protocol, stats):
        if isinstance(out, tuple) and isinstance(out[0], Frame):
            frame, image, info = out
            stats.images += 1
            yield make_image(frame, image, protocol, info)
        else:
            yield out
    if stats.frames != stats.images + stats.skipped_frames:
        log.error("%d frames formed but %d images made and %d frames skipped", stats.frames, stats.images,
                  stats.skipped_frames)
