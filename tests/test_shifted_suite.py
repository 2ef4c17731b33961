"""The shifted generalization suite (recon_core/shifted_suite) and the streaming CS peer
(recon: cs): files the chain reads, at the SNR, coil count and motion asked for; a CS
stream with one image per frame that beats CG-SENSE on a noisy scan."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gadgets.frames_from_file import load_frames
from gadgets.images import image_frame
from gadgets.replay import replay
from recon_core.config import ReconConfig
from recon_core.evaluation import score
from recon_core.mrd import is_noise, open_dataset, read_acquisitions, read_header, read_images
from recon_core.shifted_suite import acquire, family_spec, write_scan
from recon_core.shifted_suite.acquisition import REFERENCE_GROUP
from recon_core.shifted_suite.noise import measured_snr

pytestmark = pytest.mark.usefixtures("one_thread")


def small(axis: str, **changes):
    spec = family_spec("test", axis, 0, frames=4, matrix=48)
    return dataclasses.replace(spec, spokes_per_frame=9, **changes)


@pytest.fixture(scope="module")
def coil_file(tmp_path_factory):
    spec = small("coils", coils=20, snr=5.0)
    scan = acquire(spec)
    path = str(tmp_path_factory.mktemp("suite") / "coils.h5")
    write_scan(path, scan)
    return spec, scan, path


def test_suite_file_is_read_by_the_chain(coil_file):
    spec, _, path = coil_file
    protocol, frames = load_frames(path, ReconConfig())
    assert protocol.coils == 20 and protocol.matrix == 48
    assert len(frames) == spec.frames
    assert all(f.kspace.shape == (20, spec.spokes_per_frame, 96) for f in frames)
    reference = read_images(path, REFERENCE_GROUP)
    assert len(reference) == spec.frames and image_frame(reference[0]).shape == (48, 48)


def test_suite_snr_measured_from_its_noise_scans(coil_file):
    spec, _, path = coil_file
    dset = open_dataset(path)
    try:
        read_header(dset)
        noise = np.stack([a.data.copy() for a in read_acquisitions(dset) if is_noise(a)])
    finally:
        dset.close()
    reference = np.stack([image_frame(i) for i in read_images(path, REFERENCE_GROUP)])
    assert noise.shape == (spec.noise_scans, 20, 96)
    assert measured_snr(noise, reference) == pytest.approx(spec.snr, rel=0.1)


def test_noise_is_correlated_across_coils(coil_file):
    _, scan, _ = coil_file
    psi = np.cov(scan.noise.transpose(1, 0, 2).reshape(20, -1))
    off = np.abs(psi - np.diag(np.diag(psi))).max() / np.abs(np.diag(psi)).mean()
    assert off > 0.05


def test_object_moves_within_a_frame():
    spec = small("motion")
    scan = acquire(spec)
    thorax = scan.extras["thorax"]
    rel, peak = [], []
    for times in scan.spoke_times:                                  # each frame: first vs last spoke (24 ms)
        a, b = thorax.render(times[0]), thorax.render(times[-1])
        rel.append(np.linalg.norm(a - b) / np.linalg.norm(a))
        peak.append(np.abs(a - b).max() / np.abs(a).max())
    assert min(rel) > 0.002                                        # every frame: the object moved during it
    assert max(peak) > 0.1                                          # edges moved by a good part of a pixel


def test_unknown_coil_count_is_refused():
    with pytest.raises(ValueError, match="no coil array of 7 channels"):
        acquire(small("coils", coils=7))


def _stream(path, **keys):
    cfg = ReconConfig.from_mapping({"window": 2, "lookahead": 1, "coil_maps": "lowres",
                                    "calibration_frames": 6, **keys})
    summary = replay(path, cfg)
    return np.stack([image_frame(i) for i in summary["images_list"]]), summary


def test_streaming_cs_one_image_per_frame_and_beats_cgsense(tmp_path):
    from recon_core.simulate import SimulationConfig, simulate, write_dataset

    scan = simulate(SimulationConfig(frames=8, coils=4, matrix=32, spokes_per_frame=9, snr=6.0, seed=3))
    path = str(tmp_path / "noisy.h5")
    write_dataset(path, scan)
    cs, summary = _stream(path, recon="cs", cs_lambda=0.03)                 # 3 iterations per window
    assert len(cs) == 8 and summary["images"] == 8
    cg, _ = _stream(path, recon="cgsense")
    psnr_cs = score(cs, scan.reference)["mean"]["psnr"]
    psnr_cg = score(cg, scan.reference)["mean"]["psnr"]
    assert psnr_cs > psnr_cg + 1.0, (psnr_cs, psnr_cg)          # measured: 26.4 vs 22.3 dB


def test_compare_no_cache_recomputes_every_result(tmp_path):
    """``rtcine compare --no-cache`` reconstructs every (method, scan) pair again, not only the
    first: entries already in the cache file are kept in it but never read back as results."""
    import json
    import os

    from rtcine.suite_compare import CACHE, Runner

    for name in ("a.h5", "b.h5"):
        write_scan(str(tmp_path / name), acquire(small("motion")))
    stale = {"psnr": -1.0, "ssim": -1.0}
    runner = Runner(str(tmp_path), "recon_core/models", log=lambda *a: None)
    keys = [runner.key("gridding", n) for n in ("a.h5", "b.h5")]
    with open(tmp_path / CACHE, "w") as f:
        json.dump({k: stale for k in keys} | {"other": stale}, f)
    fresh = Runner(str(tmp_path), "recon_core/models", log=lambda *a: None, use_cache=False)
    results = [fresh.run("gridding", n) for n in ("a.h5", "b.h5")]
    assert all(r["psnr"] > 10 for r in results), results
    on_disk = json.load(open(os.path.join(tmp_path, CACHE)))
    assert on_disk["other"] == stale and all(on_disk[k]["psnr"] > 10 for k in keys)
    cached = Runner(str(tmp_path), "recon_core/models", log=lambda *a: None)
    assert cached.run("gridding", "b.h5") == results[1]


def test_compare_set_overrides_the_streaming_settings(tmp_path):
    """``rtcine compare --suite ... --set KEY=VALUE``: typed, checked like the chain's settings,
    applied to the streaming methods and cached apart from the preset's results; an unknown
    key is refused with its name."""
    import subprocess
    import sys

    from rtcine.cmd_compare import stream_overrides
    from rtcine.suite_compare import Runner

    write_scan(str(tmp_path / "a.h5"), acquire(small("motion")))
    assert stream_overrides(["cs_iterations=1", "first_maps_grid=48"]) == {"cs_iterations": 1, "first_maps_grid": 48}
    preset = Runner(str(tmp_path), "recon_core/models", log=lambda *a: None, paced=False)
    one = Runner(str(tmp_path), "recon_core/models", log=lambda *a: None, paced=False,
                 stream_overrides=stream_overrides(["cs_iterations=1"]))
    assert preset.key("cs-stream", "a.h5", 0.02) != one.key("cs-stream", "a.h5", 0.02)
    assert preset.key("gridding", "a.h5") == one.key("gridding", "a.h5")
    full, cut = preset.run("cs-stream", "a.h5", 0.02), one.run("cs-stream", "a.h5", 0.02)
    assert full["psnr"] > 10 and cut["psnr"] > 10 and full["psnr"] != cut["psnr"]
    r = subprocess.run([sys.executable, "-m", "rtcine", "compare", "--suite", "shifted", "--suite-dir", str(tmp_path),
                        "--set", "first_maps_gird=48"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "first_maps_gird" in r.stderr, r.stderr[-2000:]


def test_compare_offline_rows_run_on_the_chains_cropped_maps(tmp_path, monkeypatch):
    """The suite's offline methods reconstruct on the maps the chain uses (ESPIRiT cropped to the
    object): the loader's maps are zero in part of the air ESPIRiT's own crop keeps, and their
    cached results are keyed by the crop, so results on other maps are never read back."""
    from recon_core.coils import calibration_images, espirit_maps
    from rtcine.suite_compare import Runner, load_scan_file

    write_scan(str(tmp_path / "a.h5"), acquire(small("motion")))
    scan = load_scan_file(str(tmp_path / "a.h5"))
    k, c = scan["kspace"][:10], scan["coords"][:10]
    t, nc, s, r = k.shape
    images = calibration_images(k.transpose(0, 2, 1, 3).reshape(-1, nc, r), c.reshape(-1, r, 2),
                                scan["maps"].shape[-2:])
    plain = (abs(espirit_maps(images)) ** 2).sum(0) > 0
    kept = (abs(scan["maps"]) ** 2).sum(0) > 0
    assert not (kept & ~plain).any() and (plain & ~kept).sum() > 0.05 * plain.sum()
    runner = Runner(str(tmp_path), "recon_core/models", log=lambda *a: None)
    cropped = runner.key("cs", "a.h5", 0.01)
    monkeypatch.setattr(ReconConfig, "espirit_support", 0.0)
    assert runner.key("cs", "a.h5", 0.01) != cropped
