"""Noise prewhitening, coil compression and the stream's coil-map service."""
import numpy as np
import pytest
import torch

from recon_core.coils import NoiseCovariance, pca_compression_matrix, prewhitening_matrix


def test_prewhitening_whitens_correlated_noise():
    rng = np.random.default_rng(0)
    mix = np.eye(6) + 0.4 * (rng.normal(size=(6, 6)) + 1j * rng.normal(size=(6, 6)))
    noise = mix @ (rng.normal(size=(6, 20000)) + 1j * rng.normal(size=(6, 20000)))
    cov = NoiseCovariance()
    for chunk in np.split(noise, 10, axis=1):
        cov.add(chunk, dwell_time_us=5.0)
    w = prewhitening_matrix(cov.matrix, acq_dwell_us=5.0, noise_dwell_us=5.0, receiver_bandwidth=0.5)
    white = w @ noise
    c = white @ white.conj().T / white.shape[1]
    np.testing.assert_allclose(c, np.eye(6), atol=0.05)      # scale sqrt(2 * 1 * 0.5) = 1


def test_prewhitening_bandwidth_scale_as_gadgetron():
    cov = np.eye(2, dtype=complex)
    w = prewhitening_matrix(cov, acq_dwell_us=2.0, noise_dwell_us=4.0, receiver_bandwidth=0.793)
    np.testing.assert_allclose(np.diag(w).real, np.sqrt(2 * 2.0 / 4.0 * 0.793), rtol=1e-6)


def test_pca_keeps_the_energy_of_low_rank_data():
    rng = np.random.default_rng(1)
    data = rng.normal(size=(12, 3)) @ rng.normal(size=(3, 500)) + 0j
    v = pca_compression_matrix(data, 3)
    kept = np.linalg.norm(v @ data) / np.linalg.norm(data)
    assert kept > 0.999


def test_lowres_maps_on_a_matrix_smaller_than_the_window():
    """16x16 coil images (under the default 24-line window): normalised maps, no error."""
    from recon_core.coils import lowres_maps

    g = np.random.default_rng(0)
    yy, xx = np.mgrid[-8:8, -8:8]
    obj = (yy ** 2 + xx ** 2 < 36).astype(float)
    sens = np.stack([np.exp(1j * (c + 1) * 0.1 * (xx + yy)) * (1 + 0.05 * c) for c in range(4)])
    maps = lowres_maps((sens * obj + 1e-3 * g.standard_normal((4, 16, 16))).astype(np.complex64))
    assert maps.shape == (4, 16, 16)
    rss = np.sqrt((np.abs(maps) ** 2).sum(0))
    assert np.allclose(rss[obj > 0][:10], 1.0, atol=1e-3)


def test_lowres_maps_with_support_are_zero_outside_the_body_and_keep_its_dark_inside():
    """Fallback maps with ``support``: a body whose inside is dark (lungs) in a noisy
    background keeps unit-norm maps over the whole body, dark part included, and zero
    maps in the background, where without it they are unit-norm noise."""
    from recon_core.coils import lowres_maps

    g = np.random.default_rng(1)
    yy, xx = np.mgrid[-32:32, -32:32]
    r2 = yy ** 2 + xx ** 2
    body = r2 < 24 ** 2
    obj = np.where(r2 < 12 ** 2, 0.05, 1.0) * body
    sens = np.stack([np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 2000.0) * np.exp(0.05j * (cx * xx + cy * yy) / 30)
                     for cy, cx in ((-30, 0), (30, 0), (0, -30), (0, 30))])
    noise = 0.02 * (g.standard_normal((4, 64, 64)) + 1j * g.standard_normal((4, 64, 64)))
    images = (sens * obj + noise).astype(np.complex64)
    plain = np.sqrt((np.abs(lowres_maps(images)) ** 2).sum(0))
    masked = np.sqrt((np.abs(lowres_maps(images, support=0.1)) ** 2).sum(0))
    background = r2 > 30 ** 2
    assert plain[background].mean() > 0.9                      # noise gets unit-norm maps
    assert masked[background].max() == 0.0
    assert np.allclose(masked[body], plain[body])              # inside the body: unchanged
    assert np.allclose(masked[r2 < 10 ** 2], 1.0, atol=1e-3)   # the dark inside is kept


def test_espirit_thread_runs_at_lower_cpu_priority():
    """ESPIRiT's thread yields the cores to the preparation and solver threads at the scan's
    start (Linux: its nice value is ESPIRIT_NICE above the chain's, capped at 19)."""
    import os
    import threading

    import pytest

    from gadgets import coilmaps

    if not hasattr(os, "getpriority"):
        pytest.skip("no per-thread priorities on this platform")
    service = coilmaps.CoilMapService((16, 16), "espirit", calibration_frames=2)
    try:
        mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        worker = service._executor.submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())).result()
    finally:
        service.close()
    assert worker == min(19, mine + coilmaps.ESPIRIT_NICE)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine     # the chain's own thread unchanged


@pytest.mark.parametrize("espirit_seconds", [0.0, 0.4])
def test_espirit_lag_installs_the_maps_at_the_same_frame_however_long_espirit_takes(monkeypatch, espirit_seconds):
    """``lag = 3`` with calibration at frame 2: frames 1-4 get the fallback maps and frame 5
    on the ESPIRiT maps, whether ESPIRiT is done at once (not installed early) or still
    running at frame 5 (waited for), so an unpaced replay does not depend on the CPU."""
    import time
    from types import SimpleNamespace

    from gadgets import coilmaps

    def compute(self, data, coords, method, grid=0):
        if method == "espirit":
            time.sleep(espirit_seconds)
        return torch.full((2, 8, 8), 1.0 if method == "espirit" else 0.5, dtype=torch.complex64)

    monkeypatch.setattr(coilmaps.CoilMapService, "_compute", compute)
    monkeypatch.setattr(coilmaps, "warm_up_espirit", lambda: 0.0)
    service = coilmaps.CoilMapService((8, 8), "espirit", calibration_frames=2, lag=3)
    sources = []
    try:
        for index in range(7):
            service.add(SimpleNamespace(index=index, kspace=np.zeros((2, 4, 16), np.complex64),
                                        coords=np.zeros((4, 16, 2), np.float32)))
            time.sleep(0.05 if index == 2 else 0.0)      # a fast ESPIRiT is surely done by frame 4
            maps, source = service.current()
            sources.append(source)
            assert float(maps.real.mean()) == (1.0 if source == "espirit" else 0.5)
    finally:
        service.close()
    assert sources == ["fallback"] * 4 + ["espirit"] * 3


def test_espirit_on_a_coarser_grid_gives_the_full_grids_maps():
    """grid=64 for a 128 matrix (the stream's first maps): inside the common support the
    maps are the full grid's (coil-summed correlation > 0.999 everywhere but the 1% worst
    pixels), and the support differs in at most 3% of the pixels (its edge)."""
    from recon_core.coils import calibration_images, espirit_maps
    from recon_core.simulate import SimulationConfig, simulate

    scan = simulate(SimulationConfig(frames=4, coils=8, matrix=128, snr=20.0, seed=3))
    t, c, s, r = scan.kspace.shape
    images = calibration_images(scan.kspace.transpose(0, 2, 1, 3).reshape(-1, c, r),
                                scan.coords.reshape(-1, r, 2), (128, 128))
    full, coarse = espirit_maps(images), espirit_maps(images, grid=64)
    assert coarse.shape == full.shape and coarse.dtype == np.complex64
    s_full, s_coarse = (np.abs(full) ** 2).sum(0) > 0.5, (np.abs(coarse) ** 2).sum(0) > 0.5
    assert s_full.mean() > 0.2 and (s_full != s_coarse).mean() < 0.03
    corr = np.abs((full.conj() * coarse).sum(0))[s_full & s_coarse]
    assert np.percentile(corr, 1) > 0.999
    with pytest.raises(ValueError, match="grid=16"):
        espirit_maps(images, grid=16)


@pytest.mark.parametrize("grid", [0, 64])
def test_espirit_maps_with_support_cut_the_air_and_keep_the_whole_body(grid):
    """``support=0.05`` (the chain's ``espirit_support``) on a 10-frame calibration of a
    low-SNR scan: the maps stay ESPIRiT's wherever they are kept, every pixel of the object in
    any frame (dark lungs included) is kept, and at least a third of the air ESPIRiT's crop
    left inside its support is cut."""
    from scipy.ndimage import binary_fill_holes

    from recon_core.coils import calibration_images, espirit_maps
    from recon_core.simulate import SimulationConfig, simulate

    scan = simulate(SimulationConfig(frames=10, coils=8, matrix=128, snr=8.0, seed=5))
    t, c, s, r = scan.kspace.shape
    images = calibration_images(scan.kspace.transpose(0, 2, 1, 3).reshape(-1, c, r),
                                scan.coords.reshape(-1, r, 2), (128, 128))
    plain, cut = espirit_maps(images, grid=grid), espirit_maps(images, grid=grid, support=0.05)
    kept = (np.abs(cut) ** 2).sum(0) > 0
    assert np.array_equal(cut[:, kept], plain[:, kept])
    ref = np.abs(scan.reference)
    obj = (ref > 0.02 * ref.max(axis=(1, 2), keepdims=True)).any(0)
    assert kept[binary_fill_holes(obj)].all()
    air = ((np.abs(plain) ** 2).sum(0) > 0) & ~obj
    assert air.sum() > 500 and (air & ~kept).sum() > air.sum() / 3


def test_first_maps_come_early_and_the_full_maps_replace_them(monkeypatch):
    """first_frames=2 (lag 1), calibration_frames=4 (lag 3): fallback for frames 0-1, the
    first maps (computed on the coarse grid) from frame 2, the full ones from frame 6; with
    wait-style use (first_frames=0) only the full ones."""
    from types import SimpleNamespace

    from gadgets import coilmaps

    grids = []

    def compute(self, data, coords, method, grid=0):
        if method == "espirit":
            grids.append(grid)
            return torch.full((2, 8, 8), 2.0 if grid else 1.0, dtype=torch.complex64)
        return torch.full((2, 8, 8), 0.5, dtype=torch.complex64)

    monkeypatch.setattr(coilmaps.CoilMapService, "_compute", compute)
    monkeypatch.setattr(coilmaps, "warm_up_espirit", lambda: 0.0)
    for first, expected in ((2, [0.5] * 2 + [2.0] * 4 + [1.0] * 2), (0, [0.5] * 6 + [1.0] * 2)):
        grids.clear()
        service = coilmaps.CoilMapService((8, 8), "espirit", calibration_frames=4, lag=3, first_frames=first,
                                          first_grid=32, first_lag=1)
        seen = []
        try:
            for index in range(8):
                service.add(SimpleNamespace(index=index, kspace=np.zeros((2, 4, 16), np.complex64),
                                            coords=np.zeros((4, 16, 2), np.float32)))
                seen.append(float(service.current()[0].real.mean()))
        finally:
            service.close()
        assert seen == expected
        assert grids == ([32, 0] if first else [0])


@pytest.mark.parametrize("header_coils, held", [(8, False), (12, True), (0, True)])
def test_coil_compression_holds_spokes_only_when_the_header_has_more_coils_than_asked(header_coils, held):
    """virtual_coils=8: a stream whose header announces at most 8 coils passes straight
    through (its first spoke leaves before the second is read); with more coils, or no
    count in the header, the first 4 training spokes are held for the PCA matrix."""
    import ismrmrd

    from gadgets.compression import coil_compression

    rng = np.random.default_rng(0)
    pulled = []

    def spokes():
        for i in range(6):
            acq = ismrmrd.Acquisition.from_array((rng.normal(size=(8, 32)) + 1j * rng.normal(size=(8, 32)))
                                                 .astype(np.complex64))
            pulled.append(i)
            yield acq

    out = coil_compression(spokes(), 8, training_spokes=4, header_coils=header_coils)
    first = next(out)
    assert len(pulled) == (4 if held else 1)
    rest = list(out)
    assert len(rest) == 5 and first.data.shape == (8, 32)
