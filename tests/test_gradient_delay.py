"""Gradient delays: RING estimates the simulated delays, the chain corrects them (auto or
given) through run_chain, `rtcine replay`, `rtcine serve` and the real Gadgetron, and BART's
``estdelay`` agrees on the same data.

Scans: 64x64, 8 coils, 13 golden-angle spokes per frame, SNR 30, seed 3. Measured (CG-SENSE,
ESPIRiT maps from 4 frames, body ROI): delay-free 24.5 dB; delays 1.5,-1: off 20.0, auto 24.7;
estimates within 0.01 samples of the truth, BART's within 0.03 (benchmarks/gradient_delay.py).
"""
import functools
import os
import subprocess
import sys

import ismrmrd
import numpy as np
import pytest
from gadgetron_fixture import gadgetron_log, gadgetron_server  # noqa: F401  (fixtures)

from gadgets.chain import run_chain
from gadgets.stats import ChainStats
from recon_core.bart_io import bart_available, kspace_to_bart, traj_to_bart, write_cfl
from recon_core.config import ConfigError, ReconConfig
from recon_core.evaluation import body_mask
from recon_core.gradient_delay import GradientDelay, delayed_coordinates, estimate_delay, from_bart
from recon_core.metrics import psnr
from recon_core.mrd import header_to_xml, make_header
from recon_core.simulate import SimulationConfig, acquisitions, simulate
from recon_core.trajectory import density_compensation, radial_coordinates, spoke_angles

MATRIX, COILS, SPOKES = 64, 8, 13
TOLERANCE = 0.15            # samples


@functools.lru_cache(maxsize=None)
def scan(delay=(0.0, 0.0), frames=4, trajectory="golden", include_traj=True, seed=3):
    return simulate(SimulationConfig(frames=frames, coils=COILS, matrix=MATRIX, spokes_per_frame=SPOKES, snr=30,
                                     seed=seed, trajectory=trajectory, include_traj=include_traj,
                                     gradient_delay=delay))


@pytest.mark.parametrize("delay", [(0.0, 0.0), (1.5, -1.0), (2.0, 2.0), (-2.0, 0.5), (0.7, -2.0), (0.5, -0.5, 0.8)])
@pytest.mark.parametrize("trajectory", ["golden", "tiny-golden"])
def test_ring_estimates_the_delay(delay, trajectory):
    s = scan(delay, frames=2, trajectory=trajectory)
    truth = GradientDelay(*delay)
    for kspace, coords in ((s.kspace, s.coords), (s.kspace[0], s.coords[0])):   # two frames, one frame
        est = estimate_delay(kspace, coords)
        assert est is not None
        np.testing.assert_allclose([est.x, est.y, est.xy], [truth.x, truth.y, truth.xy], atol=TOLERANCE)


def test_corrected_coordinates_are_the_sampled_ones():
    """The correction moves each spoke by -dk S n: along it by the projected delay and across
    it when the axes' delays differ (a spoke along x moves by dx samples along x only)."""
    coords = radial_coordinates(np.array([0.0, np.pi / 2, np.pi / 4]), 2 * MATRIX)
    d = GradientDelay(1.5, -1.0)
    out = delayed_coordinates(coords, d)
    dk = 1.0 / (2 * MATRIX)
    np.testing.assert_allclose(out[0] - coords[0], np.broadcast_to([-1.5 * dk, 0.0], out[0].shape), atol=1e-7)
    np.testing.assert_allclose(out[1] - coords[1], np.broadcast_to([0.0, 1.0 * dk], out[1].shape), atol=1e-7)
    shift = -dk * np.array([1.5, -1.0]) / np.sqrt(2)
    np.testing.assert_allclose(out[2] - coords[2], np.broadcast_to(shift, out[2].shape), atol=1e-7)


def test_density_of_spokes_beside_the_centre():
    """Spokes corrected for unequal delays miss k = 0; their weights still integrate a
    centred Gaussian (the bulk of MR k-space energy) to within 2 %."""
    samples = 2 * MATRIX
    coords = radial_coordinates(spoke_angles(np.arange(130), "golden", SPOKES), samples)
    for delay in [(0.0, 0.0), (1.5, -1.0), (2.0, -2.0)]:
        c = delayed_coordinates(coords, GradientDelay(*delay)).astype(np.float64)
        w = density_compensation(c)
        for width in (2.0, 4.0):
            sigma = width / samples
            total = (w * np.exp(-(c ** 2).sum(-1) / sigma ** 2)).sum()
            assert total == pytest.approx(np.pi * sigma ** 2, rel=0.03), (delay, width)


@functools.lru_cache(maxsize=None)
def run(delay, gradient_delay, include_traj=True):
    """CG-SENSE through the chain of a 6-frame scan with ``delay``: (mean PSNR in the body,
    the images' meta, stats.gradient_delay)."""
    s = scan(delay, frames=6, include_traj=include_traj)
    cfg = ReconConfig.from_mapping(dict(recon="cgsense", coil_maps="espirit", wait_for_maps=True,
                                        calibration_frames=4, gradient_delay=gradient_delay))
    stats = ChainStats()
    hdr = ismrmrd.xsd.CreateFromDocument(header_to_xml(make_header(s.config.protocol())))
    images = [o for o in run_chain(iter(acquisitions(s)), hdr, cfg, stats) if isinstance(o, ismrmrd.Image)]
    assert len(images) == s.config.frames
    x = np.stack([np.asarray(i.data)[0, 0] for i in images])
    mask = body_mask(s.reference)
    value = float(np.mean([psnr(a, b, mask) for a, b in zip(x, s.reference)]))
    return value, [dict((k, i.meta[k]) for k in i.meta.keys()) for i in images], stats.gradient_delay


@pytest.mark.parametrize("delay", [(1.5, -1.0), (-2.0, 2.0)])
def test_auto_correction_restores_the_delay_free_image(delay):
    clean = run((0.0, 0.0), "auto")[0]
    off = run(delay, "off")[0]
    auto, meta, source = run(delay, "auto")
    assert auto > clean - 0.5, (auto, clean)
    assert off < clean - 2.0, (off, clean)
    est = [float(v) for v in meta[-1]["rtcine_gradient_delay"].split(",")]
    np.testing.assert_allclose(est[:2], delay, atol=TOLERANCE)
    assert source.endswith("(RING)")


def test_auto_keeps_a_delay_free_scan():
    auto, meta, _ = run((0.0, 0.0), "auto")
    off, meta_off, _ = run((0.0, 0.0), "off")
    assert auto > off - 0.05
    assert all(abs(float(v)) < 0.05 for v in meta[-1]["rtcine_gradient_delay"].split(","))
    assert all("rtcine_gradient_delay" not in m for m in meta_off)


def test_given_delay_corrects_trajectories_from_counters():
    """An explicit "dx,dy" is used as given, also when the spokes carry no acq.traj."""
    given, meta, source = run((1.5, -1.0), "1.5,-1.0", include_traj=False)
    off = run((1.5, -1.0), "off", include_traj=False)[0]
    assert given > off + 2.0
    assert meta[0]["rtcine_gradient_delay"] == "1.500,-1.000,0.000"
    assert source == "1.500,-1.000 (configuration)"


@pytest.mark.parametrize("value", ["sometimes", "1.5", "1,2,3,4", "a,b", "nan,1", "40,0", 1.5])
def test_bad_gradient_delay_is_named(value):
    with pytest.raises(ConfigError, match="gradient_delay"):
        ReconConfig.from_mapping({"gradient_delay": value})


def test_gradient_delay_values_from_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("recon: cgsense\ngradient_delay: off\n")             # YAML reads off as false
    assert ReconConfig.from_yaml(str(p)).gradient_delay == "off"
    p.write_text("recon: cgsense\ngradient_delay: [1.5, -1.0]\n")
    assert ReconConfig.from_yaml(str(p)).gradient_delay == "1.5,-1.0"


@pytest.mark.skipif(not bart_available(), reason="bart is not installed")
@pytest.mark.parametrize("delay", [(1.5, -1.0), (0.0, 0.0), (-0.5, 2.0, 0.6)])
def test_bart_estdelay_agrees(tmp_path, delay):
    """``bart estdelay -R`` on the same spokes (BART layout, see recon_core/bart_io.py;
    -r 8: intersections searched within +-4 samples, as ours)."""
    s = scan(delay, frames=2, trajectory="tiny-golden")
    t, c, n, r = s.kspace.shape
    kspace = s.kspace.transpose(1, 0, 2, 3).reshape(1, c, t * n, r)       # all spokes as one frame
    coords = s.coords.reshape(1, t * n, r, 2)
    write_cfl(os.path.join(tmp_path, "k"), kspace_to_bart(kspace))
    write_cfl(os.path.join(tmp_path, "t"), traj_to_bart(coords, MATRIX))
    out = subprocess.run(["bart", "estdelay", "-R", "-r", "8", "t", "k"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, check=True)
    theirs = from_bart(out.stdout.strip().splitlines()[-1])
    ours = estimate_delay(s.kspace, s.coords)
    truth = GradientDelay(*delay)
    for est in (theirs, ours):
        np.testing.assert_allclose([est.x, est.y, est.xy], [truth.x, truth.y, truth.xy], atol=TOLERANCE)
    np.testing.assert_allclose([ours.x, ours.y, ours.xy], [theirs.x, theirs.y, theirs.xy], atol=TOLERANCE)


# -- the same delayed scan through `rtcine replay`, `rtcine serve` and the real Gadgetron, with
# no gradient_delay key (auto): within 0.5 dB of the delay-free scan through the local chain

DELAY = (1.5, -1.0)
#: the chain keys of run() (nothing about gradient delays)
KEYS = {"recon": "cgsense", "coil_maps": "espirit", "wait_for_maps": "true", "calibration_frames": "4"}


def delayed_file(folder) -> str:
    from recon_core.simulate import write_dataset

    path = os.path.join(str(folder), "delayed.h5")
    if not os.path.exists(path):
        write_dataset(path, scan(DELAY, frames=6))
    return path


def roi_psnr(images) -> float:
    s = scan(DELAY, frames=6)
    images = sorted(images, key=lambda i: i.getHead().image_index)
    assert len(images) == s.config.frames
    mask = body_mask(s.reference)
    return float(np.mean([psnr(np.asarray(i.data)[0, 0], r, mask) for i, r in zip(images, s.reference)]))


def assert_corrected(images):
    assert roi_psnr(images) > run((0.0, 0.0), "auto")[0] - 0.5
    est = [float(v) for v in images[-1].meta["rtcine_gradient_delay"].split(",")]
    np.testing.assert_allclose(est[:2], DELAY, atol=TOLERANCE)


def test_delayed_scan_through_rtcine_replay(tmp_path):
    from recon_core.mrd import read_images

    out = str(tmp_path / "out.h5")
    args = [a for k, v in KEYS.items() for a in ("--set", f"{k}={v}")]
    proc = subprocess.run([sys.executable, "-m", "rtcine", "replay", delayed_file(tmp_path), *args, "--out", out],
                          capture_output=True, text=True, timeout=300, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("gradient delay x,y[,xy] in readout samples: "))
    np.testing.assert_allclose([float(v) for v in line.split(": ")[1].split()[0].split(",")[:2]], DELAY, atol=TOLERANCE)
    assert_corrected(read_images(out, "images"))


def test_delayed_scan_through_rtcine_serve():
    from stream_helpers import exchange, images_of, message_bytes, start_server

    s = scan(DELAY, frames=6)
    config = "<configuration>" + "".join(f'<property name="{k}" value="{v}"/>' for k, v in KEYS.items()) \
        + "</configuration>"
    port, thread, _ = start_server(connections=1)
    got = images_of(exchange(port, message_bytes(config, header_to_xml(make_header(s.config.protocol())),
                                                 list(acquisitions(s)))))
    thread.join(30)
    assert_corrected(got)


@pytest.mark.parametrize("chain", ["rtcine_cgsense.xml"])
def test_delayed_scan_through_real_gadgetron(chain, tmp_path, gadgetron_server, gadgetron_log):
    import xml.etree.ElementTree as ET

    import h5py

    tree = ET.parse(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "chains", chain))
    conf = tree.getroot().find(".//external/configuration")
    for prop in list(conf.iter("property")):
        if prop.get("name") in KEYS or prop.get("name") == "gradient_delay":
            conf.remove(prop)
    for k, v in KEYS.items():
        ET.SubElement(conf, "property", name=k, value=v)
    sent = str(tmp_path / chain)
    tree.write(sent)
    out = str(tmp_path / "out.h5")
    mark = gadgetron_server.mark()
    proc = gadgetron_server.send(delayed_file(tmp_path), sent, out)
    log = gadgetron_server.wait_for_log("Connection state: [FINISHED]", mark)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(out, "r") as f:
        (group,) = list(f.keys())
    dset = ismrmrd.Dataset(out, group, create_if_needed=False)
    try:
        images = [dset.read_image("image_0", i) for i in range(dset.number_of_images("image_0"))]
    finally:
        dset.close()
    assert_corrected(images)
    assert "samples (RING, " in log                                   # logged in Gadgetron's log
    assert gadgetron_server.alive()


@pytest.mark.parametrize("delay, seed", [((4.5, 0.0), 2), ((4.5, 0.0), 3), ((6.0, -6.0), 3)])
def test_delay_beyond_the_search_is_not_guessed(delay, seed):
    """Delays beyond what RING's +-4 sample search can see give the right estimate (when
    enough intersections stay inside) or none: never a wrong one."""
    s = scan(delay, frames=2, seed=seed)
    est = estimate_delay(s.kspace, s.coords)
    if est is not None:
        np.testing.assert_allclose([est.x, est.y], delay, atol=TOLERANCE)
