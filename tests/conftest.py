"""Shared fixtures: small simulated scans written once per session."""
from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def disc_scan(n: int, frames: int, coils: int, spokes: int):
    """A noise-free synthetic radial scan for the network tests: a disc growing by one pixel
    per frame, random coil maps (normalised), golden-angle spokes of ``2 n`` samples.

    Returns ``kspace (T, C, S, 2n)``, ``coords (T, S * 2n, 2)``, ``maps (C, n, n)``, ``obj (T, n, n)``."""
    import numpy as np

    from recon_core.reconstructors import make_operator
    from recon_core.trajectory import radial_coordinates, spoke_angles

    g = torch.Generator().manual_seed(0)
    angles = spoke_angles(np.arange(frames * spokes).reshape(frames, spokes), "golden", spokes)
    coords = torch.from_numpy(radial_coordinates(angles, 2 * n))
    maps = torch.randn(coils, n, n, dtype=torch.complex64, generator=g)
    maps = maps / maps.abs().pow(2).sum(0).sqrt()
    iy, ix = torch.meshgrid(torch.arange(n) - n / 2, torch.arange(n) - n / 2, indexing="ij")
    obj = torch.stack([((ix ** 2 + iy ** 2) < (n / 4 + f) ** 2).to(torch.complex64) for f in range(frames)])
    op = make_operator(coords, maps, toeplitz=False)
    kspace = (op.forward(obj) / op.sqrt_w[:, None, :]).reshape(frames, coils, spokes, 2 * n)   # unweighted
    return kspace, coords, maps, obj


@pytest.fixture(scope="module")
def one_thread():
    """The CPU is shared: one thread for a module's tests (``pytest.mark.usefixtures``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
