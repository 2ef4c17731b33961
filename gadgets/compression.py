"""PCA coil compression gadget."""
from __future__ import annotations

import logging

import ismrmrd
import numpy as np

from recon_core.coils import pca_compression_matrix
from recon_core.mrd import is_imaging, is_noise

from .feeder import ARRIVAL

log = logging.getLogger("rtcine.compression")


def _compress(acq: ismrmrd.Acquisition, matrix: np.ndarray) -> ismrmrd.Acquisition:
    data = (matrix @ acq.data).astype(np.complex64)
    out = ismrmrd.Acquisition(acq.getHead())
    out.resize(number_of_samples=acq.number_of_samples, active_channels=data.shape[0],
               trajectory_dimensions=acq.trajectory_dimensions)
    out.data[:] = data
    if acq.trajectory_dimensions:
        out.traj[:] = acq.traj
    arrival = getattr(acq, ARRIVAL, None)
    if arrival is not None:
        setattr(out, ARRIVAL, arrival)
    return out


def coil_compression(items, virtual_coils: int, training_spokes: int = 64, header_coils: int = 0):
    """Compress imaging spokes to ``virtual_coils`` principal components computed from the
    first ``training_spokes`` of them (held back until then, then released in order; other
    items are held with them, non-imaging acquisitions pass uncompressed).
    ``virtual_coils=0`` passes everything unchanged, and so does a stream whose header
    announces ``0 < header_coils <= virtual_coils`` (nothing to compress, no spokes held)."""
    if virtual_coils <= 0:
        yield from items
        return
    if 0 < header_coils <= virtual_coils:
        log.info("virtual_coils=%d >= the header's %d coils: no compression", virtual_coils, header_coils)
        yield from items
        return
    held: list = []
    matrix = None

    def release():
        nonlocal matrix
        data = np.concatenate([a.data for a in held if isinstance(a, ismrmrd.Acquisition) and is_imaging(a)],
                              axis=1)
        if virtual_coils >= data.shape[0]:
            log.info("virtual_coils=%d >= %d receive coils: no compression", virtual_coils, data.shape[0])
            matrix = np.eye(data.shape[0], dtype=np.complex64)
        else:
            matrix = pca_compression_matrix(data, virtual_coils)
            log.info("PCA coil compression %d -> %d coils", data.shape[0], virtual_coils)
        for a in held:
            yield _compress(a, matrix) if isinstance(a, ismrmrd.Acquisition) and is_imaging(a) else a
        held.clear()

    for item in items:
        is_data = isinstance(item, ismrmrd.Acquisition) and is_imaging(item)
        if matrix is None:
            if isinstance(item, ismrmrd.Acquisition) and is_noise(item):
                yield item
                continue
            held.append(item)
            if is_data and sum(isinstance(a, ismrmrd.Acquisition) and is_imaging(a) for a in held) >= training_spokes:
                yield from release()
            continue
        yield _compress(item, matrix) if is_data else item
    if held and matrix is None and any(isinstance(a, ismrmrd.Acquisition) and is_imaging(a) for a in held):
        yield from release()
    else:
        yield from held
