"""Shared fixtures: small simulated scans written once per session."""
from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def small_scan():
    """64x64, 8 coils, 13 golden-angle spokes per frame, 16 frames, SNR 30 (in memory)."""
    from recon_core.simulate import SimulationConfig, simulate

    return simulate(SimulationConfig(frames=16, coils=8, matrix=64, spokes_per_frame=13, snr=30, seed=11))


@pytest.fixture(scope="session")
def small_file(tmp_path_factory, small_scan):
    """The same scan as an ISMRMRD file (with acq.traj and references)."""
    from recon_core.simulate import write_dataset

    path = str(tmp_path_factory.mktemp("data") / "small.h5")
    write_dataset(path, small_scan)
    return path


@pytest.fixture(scope="session")
def small_file_notraj(tmp_path_factory):
    """The same protocol and seed without acq.traj (angles from header + counters)."""
    from recon_core.simulate import SimulationConfig, simulate, write_dataset

    path = str(tmp_path_factory.mktemp("data") / "small_notraj.h5")
    write_dataset(path, simulate(SimulationConfig(frames=16, coils=8, matrix=64, spokes_per_frame=13, snr=30,
                                                  seed=11, include_traj=False)))
    return path
