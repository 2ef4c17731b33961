"""Frames of a recorded file as the chain sees them (prewhitened, compressed, grouped,
gradient-delay corrected): for scoring data consistency and for building training sets
from ISMRMRD files (:mod:`gadgets.recorded_scans`)."""
from __future__ import annotations

from recon_core.mrd import open_dataset, protocol_from_header, read_acquisitions, read_header

from .compression import coil_compression
from .frames import Frame, frame_buffer, frame_plan
from .gradient_delay import gradient_delay_correction
from .noise import noise_adjust
from .stats import ChainStats


def load_frames(path: str, cfg):
    """Return ``(protocol, frames)``: the file's frames after the chain's input stages
    (gadgets/chain.py: prewhitening, coil compression, frames, gradient-delay correction),
    in stream order (``frame.slice`` and ``frame.index`` say which cine and frame)."""
    dset = open_dataset(path)
    try:
        header = read_header(dset)
        protocol = protocol_from_header(header)
        plan = frame_plan(cfg.spokes_per_frame, cfg.frame_stride, protocol)
        protocol.spokes_per_frame = plan.spokes
        stats = ChainStats()
        stream = noise_adjust(read_acquisitions(dset), header, stats, enabled=cfg.prewhiten)
        stream = coil_compression(stream, cfg.virtual_coils, cfg.compression_spokes, header_coils=protocol.coils)
        stream = frame_buffer(stream, protocol, cfg.ordering or protocol.ordering, plan, stats=stats,
                              min_partial_fraction=cfg.min_partial_fraction)
        stream = gradient_delay_correction(stream, cfg, stats)
        frames = [f for f in stream if isinstance(f, Frame)]
    finally:
        dset.close()
    return protocol, frames
