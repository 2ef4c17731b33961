"""Noise prewhitening gadget: noise acquisitions in, prewhitened data acquisitions out."""
from __future__ import annotations

import logging

import ismrmrd
import numpy as np

from recon_core.coils import DEFAULT_RECEIVER_NOISE_BANDWIDTH, NoiseCovariance, prewhitening_matrix
from recon_core.mrd import is_imaging, is_noise

log = logging.getLogger("rtcine.noise")


def noise_adjust(items, header, stats, enabled: bool = True):
    """Consume noise acquisitions; prewhiten every later acquisition (as Gadgetron's
    NoiseAdjustGadget: Cholesky of the covariance, bandwidth scaled). Without noise scans
    the data pass unchanged (logged once). With ``enabled=False`` noise scans are
    still consumed (a chain whose native gadgets prewhitened gets none). Noise scans after
    the first data acquisition are consumed unused; other non-imaging acquisitions (dummy
    scans, navigators, ...) pass unchanged."""
    asi = header.acquisitionSystemInformation
    bandwidth = (asi.relativeReceiverNoiseBandwidth if asi is not None and asi.relativeReceiverNoiseBandwidth
                 else DEFAULT_RECEIVER_NOISE_BANDWIDTH)
    cov = NoiseCovariance()
    matrix = None
    decided = False
    for item in items:
        if not isinstance(item, ismrmrd.Acquisition):
            yield item
            continue
        if is_noise(item):
            stats.noise_acquisitions += 1
            if enabled and not decided:
                cov.add(item.data, item.sample_time_us)
            continue
        if not is_imaging(item):
            yield item
            continue
        if not decided:
            decided = True
            if enabled and cov.samples:
                matrix = prewhitening_matrix(cov.matrix, item.sample_time_us, cov.dwell_time_us, bandwidth)
                log.info("prewhitening from %d noise samples of %d coils", cov.samples, matrix.shape[0])
            elif enabled:
                log.warning("no noise acquisitions before the first data acquisition: data are not prewhitened")
        if matrix is not None:
            if item.data.shape[0] != matrix.shape[0]:
                raise ValueError(f"acquisition {item.scan_counter} has {item.data.shape[0]} coils, "
                                 f"the noise scans had {matrix.shape[0]}")
            item.data[:] = (matrix @ item.data).astype(np.complex64)
        yield item
