"""The real Gadgetron 4.7.2 in the loop: every chain in chains/ through a running server.

A Gadgetron server is started once for the module (``tests/gadgetron_fixture.py``); data
go in with Gadgetron's own ``gadgetron_ismrmrd_client`` and with our scanner emulator
(``rtcine replay --server``). Without Gadgetron these tests skip (fail under ``CI``).

Numbers measured on the scan below (64x64, 8 coils, 8 frames of 13 golden-angle spokes,
SNR 30, seed 3), mean PSNR in the body mask against the simulated reference:

- local ``gadgets.replay.replay`` (wait_for_maps): CG-SENSE 24.48 dB, gridding 21.69 dB;
  the server gives the same images (1e-6 relative). Thresholds: 3 dB below. A wrong
  trajectory (tiny-golden angles for golden data) gives 14 dB, a constant image 15 dB.
- native chain (NoiseAdjustGadget + PCACoilGadget/CoilReductionGadget to 8 coils) against
  our all-Python chain: 133 dB (the same images). For scale: leaving the prewhitening out
  gives 34.8 dB against the prewhitened images, compressing to 6 virtual coils 48.6 dB;
  so the bound is 60 dB.

Gadgetron needs a header with no ``<version>`` and a DEVICE_SUBJECT_SESSION_MEAS
measurementID; ``recon_core.mrd.make_header`` writes one, and
``test_simulated_file_goes_through_as_written`` checks the file exactly as ``rtcine simulate``
wrote it (``make_gadgetron_ready`` remains for files from elsewhere).
"""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import h5py
import ismrmrd
import numpy as np
import pytest

from gadgetron_fixture import (REPO, free_port, gadgetron_log, gadgetron_server,  # noqa: F401  (fixtures)
                               is_listening, server_env, stop_process_group)
from gadgets.images import image_frame
from recon_core.evaluation import body_mask
from recon_core.metrics import psnr

CHAINS_DIR = os.path.join(REPO, "chains")
CHAINS = sorted(glob.glob(os.path.join(CHAINS_DIR, "*.xml")))
FRAMES, COILS, MATRIX, SPOKES, SEED = 8, 8, 64, 13, 3
MIN_PSNR = {"cgsense": 21.5, "gridding": 18.5, "imunne": 23.0}  # imunne measured 25.2 dB locally (cgsense 24.5)
SAME_IMAGES_DB = 60.0
#: gadgetron_ismrmrd_client names its output group after the local time, e.g. "2026-11-22 00:36:41"
CLIENT_GROUP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")
#: a 4-part measurementID (device_subject_session_measurement): Gadgetron derives the storage
#: subject from it, which NoiseAdjustGadget needs to store the noise covariance
MEASUREMENT_ID = re.compile(r"^[^_]*_[^_]*_[^_]*_[^_]*$")


def chain_config(path: str):
    """The ReconConfig our gadget builds from the chain's <configuration> (its preset resolved)."""
    from gadgets.entry import config_from_xml

    return config_from_xml(ET.parse(path).getroot().find(".//external/configuration"))


def chain_recon(path: str) -> str:
    return chain_config(path).recon


def header_problems(xml: str) -> list[str]:
    """Why Gadgetron 4.7.2 would refuse an ISMRMRD header for our chains (empty: none)."""
    import ismrmrd.xsd as xsd

    header = xsd.CreateFromDocument(xml)
    problems = []
    if header.version is not None:
        problems.append(f"<version>{header.version}</version>: Gadgetron's ISMRMRD 1.14 refuses to pass a header "
                        "of another schema version to an external module ('XML header version does not match "
                        "library schema version'); leave <version> out")
    info = header.measurementInformation
    subject = header.subjectInformation.patientID if header.subjectInformation is not None else None
    if info is None or not info.measurementID:
        problems.append("no measurementInformation/measurementID (NoiseAdjustGadget needs it)")
    elif not MEASUREMENT_ID.match(info.measurementID) and not subject:
        problems.append(f"measurementID {info.measurementID!r} is not DEVICE_SUBJECT_SESSION_MEAS and there is no "
                        "subjectInformation/patientID: Gadgetron's storage has no subject, NoiseAdjustGadget "
                        "fails with 'Unknown error'")
    return problems


def make_gadgetron_ready(path: str) -> list[str]:
    """Fix what :func:`header_problems` finds in the file's header (in place); return the problems."""
    import ismrmrd.xsd as xsd

    from recon_core.mrd import header_to_xml

    dset = ismrmrd.Dataset(path, "dataset", create_if_needed=False)
    try:
        xml = dset.read_xml_header()
        xml = xml.decode() if isinstance(xml, bytes) else xml
        problems = header_problems(xml)
        if problems:
            header = xsd.CreateFromDocument(xml)
            header.version = None
            info = header.measurementInformation
            if not MEASUREMENT_ID.match(info.measurementID or ""):
                info.measurementID = "rtcinesim_phantom_session_" + (info.measurementID or "0").replace("_", "")
            dset.write_xml_header(header_to_xml(header))
    finally:
        dset.close()
    return problems


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """``(path, reference (T, N, N), header problems fixed)``: a small simulated scan whose
    header Gadgetron accepts."""
    from recon_core.simulate import SimulationConfig, simulate, write_dataset

    sim = simulate(SimulationConfig(frames=FRAMES, coils=COILS, matrix=MATRIX, spokes_per_frame=SPOKES, snr=30,
                                    seed=SEED))
    path = str(tmp_path_factory.mktemp("scan") / "scan.h5")
    write_dataset(path, sim)
    fixed = make_gadgetron_ready(path)
    return path, sim.reference, fixed


def read_client_output(path: str):
    """Images of a gadgetron_ismrmrd_client output file: ``(group name, [images])``."""
    with h5py.File(path, "r") as f:
        groups = list(f.keys())
    assert len(groups) == 1, f"expected one group in {path}, found {groups}"
    dset = ismrmrd.Dataset(path, groups[0], create_if_needed=False)
    try:
        series = list(dset.list())
        assert series == ["image_0"], f"expected the image series image_0 in {path}/{groups[0]}, found {series}"
        images = [dset.read_image("image_0", i) for i in range(dset.number_of_images("image_0"))]
    finally:
        dset.close()
    return groups[0], images


def mean_psnr(images, reference, mask) -> float:
    return float(np.mean([psnr(image_frame(i), r, mask) for i, r in zip(images, reference)]))


class ChainRun:
    def __init__(self, proc, group, images, log):
        self.proc, self.group, self.images, self.log = proc, group, images, log


@pytest.fixture(scope="module")
def rtcine_serve(tmp_path_factory):
    """Start ``rtcine serve`` on a free port (for the <connect> chain); stopped at the end."""
    procs = []

    def start():
        port = free_port()
        log_path = str(tmp_path_factory.mktemp("serve") / "serve.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "rtcine", "-v", "serve", "--port", str(port)],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=server_env(os.path.dirname(sys.executable)), start_new_session=True)
        procs.append(proc)
        for _ in range(600):
            if is_listening(port):
                return port, log_path
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"rtcine serve did not listen on {port}:\n{open(log_path).read()}")

    yield start
    for proc in procs:
        stop_process_group(proc)


@pytest.fixture(scope="module")
def run_chain(gadgetron_server, scan, rtcine_serve, tmp_path_factory):
    """``run_chain(chain_path, cached=True) -> ChainRun``: send the scan through a chain
    with gadgetron_ismrmrd_client (a <connect> chain gets an `rtcine serve` of its own)."""
    cache = {}
    out_dir = tmp_path_factory.mktemp("out")

    def run(chain_path, cached=True):
        if cached and chain_path in cache:
            return cache[chain_path]
        name = os.path.splitext(os.path.basename(chain_path))[0]
        sent = chain_path
        serve_log = None
        tree = ET.parse(chain_path)
        connect = tree.getroot().find(".//external/connect")
        if connect is not None:
            port, serve_log = rtcine_serve()
            connect.set("port", str(port))
            sent = str(out_dir / f"{name}_port{port}.xml")
            tree.write(sent)
        out = str(out_dir / f"{name}_{len(os.listdir(out_dir))}.h5")
        mark = gadgetron_server.mark()
        proc = gadgetron_server.send(scan[0], sent, out)
        log = gadgetron_server.wait_for_log("Connection state: [FINISHED]", mark)
        if serve_log is not None:
            log += "\n--- rtcine serve ---\n" + open(serve_log).read()
        group, images = read_client_output(out) if os.path.exists(out) else (None, [])
        result = ChainRun(proc, group, images, log)
        cache[chain_path] = result
        return result

    return run


def test_chains_exist():
    names = {os.path.basename(c) for c in CHAINS}
    assert {"rtcine_cgsense.xml", "rtcine_gridding.xml", "rtcine_native_prewhiten.xml",
            "rtcine_connect.xml"} <= names


@pytest.mark.parametrize("chain", CHAINS, ids=[os.path.basename(c) for c in CHAINS])
def test_chain_through_real_gadgetron(chain, run_chain, scan, gadgetron_server, gadgetron_log):
    """One image per frame, in order, with our meta, and the quality of a working operator."""
    path, reference, _ = scan
    run = run_chain(chain)
    print(run.proc.stdout[-2000:], run.proc.stderr[-2000:])
    assert run.proc.returncode == 0, run.proc.stderr
    assert run.group is not None and CLIENT_GROUP.match(run.group), run.group
    images = run.images
    assert len(images) == FRAMES, f"{len(images)} images for {FRAMES} frames"
    assert [i.getHead().image_index for i in images] == list(range(1, FRAMES + 1))
    recon = chain_recon(chain)
    assert recon in MIN_PSNR, f"measure a PSNR threshold for recon={recon} (see the module docstring)"
    used = set()
    for img in images:
        assert img.getHead().image_type == ismrmrd.IMTYPE_COMPLEX
        assert tuple(img.getHead().matrix_size) == (MATRIX, MATRIX, 1)
        # <execute> with overload=reduce: frames that arrived while Python started are more than
        # 0.5 s late and get their gridding image (gadgets.recon.OverloadGuard), saying so
        catch_up = "rtcine_overload" in img.meta.keys() and img.meta["rtcine_overload"] == "catch-up"
        assert img.meta["rtcine_recon"] == ("gridding" if catch_up else recon)
        used.add(img.meta["rtcine_recon"])
        assert float(img.meta["rtcine_latency_ms"]) >= 0
        assert img.meta["GADGETRON_DataRole"] == "Image"
        # a chain that does not wait for the ESPIRiT maps shows its first frames with the
        # fallback maps (this 8-frame scan ends before the 10 calibration frames are in)
        waits = chain_config(chain).wait_for_maps
        assert img.meta["rtcine_coil_maps"] in (("espirit",) if waits else ("espirit", "fallback"))
    quality = mean_psnr(images, reference, body_mask(reference))
    print(f"{os.path.basename(chain)}: mean PSNR {quality:.2f} dB")
    assert quality > min(MIN_PSNR[r] for r in used)
    assert f"{FRAMES * SPOKES} spokes, {FRAMES} frames, {FRAMES} images" in run.log
    if "NoiseAdjustGadget" in open(chain).read():
        assert "prewhitening from" not in run.log        # Gadgetron prewhitened; ours stayed off
    assert gadgetron_server.alive()


def test_native_prewhitening_matches_python_chain(run_chain, scan, gadgetron_log):
    """NoiseAdjustGadget + PCA coil rotation + our CG-SENSE == our prewhitening + CG-SENSE."""
    _, reference, _ = scan
    native = run_chain(os.path.join(CHAINS_DIR, "rtcine_native_prewhiten.xml")).images
    python = run_chain(os.path.join(CHAINS_DIR, "rtcine_cgsense.xml")).images
    assert len(native) == len(python) == FRAMES
    mask = body_mask(reference)
    between = float(np.mean([psnr(image_frame(a), image_frame(b), mask) for a, b in zip(native, python)]))
    q_native, q_python = mean_psnr(native, reference, mask), mean_psnr(python, reference, mask)
    print(f"native vs python {between:.1f} dB; against the reference {q_native:.2f} / {q_python:.2f} dB")
    assert between > SAME_IMAGES_DB
    assert abs(q_native - q_python) < 0.5


BAD_CHAINS = [  # (change to rtcine_cgsense.xml, what our module logs in Gadgetron's log)
    (('name="recon" value="cgsense"', 'name="recon" value="magic"'),
     "rtcine chain failed after 0 images: ConfigError: recon='magic': expected one of"),
    (('name="cg_iterations"', 'name="cg_iteration"'),
     "rtcine chain failed after 0 images: ConfigError: unknown configuration key(s) ['cg_iteration']"),
]


def test_bad_chains_are_reported_and_server_goes_on(run_chain, gadgetron_server, tmp_path, gadgetron_log):
    """A bad value, an unknown key: no images, the reason in Gadgetron's log, and the
    server serves the next client (a good chain right after gives all its images)."""
    good = os.path.join(CHAINS_DIR, "rtcine_cgsense.xml")
    text = open(good).read()
    for k, ((old, new), expected) in enumerate(BAD_CHAINS):
        assert old in text
        bad = tmp_path / f"bad_chain_{k}.xml"
        bad.write_text(text.replace(old, new))
        run = run_chain(str(bad), cached=False)
        assert run.proc.returncode == 0          # gadgetron_ismrmrd_client itself does not fail
        assert run.images == []
        assert expected in run.log, run.log
        assert gadgetron_server.alive()
    after = run_chain(os.path.join(CHAINS_DIR, "rtcine_gridding.xml"), cached=False)
    assert [i.getHead().image_index for i in after.images] == list(range(1, FRAMES + 1))


def test_rtcine_replay_to_real_server(scan, gadgetron_server, run_chain, tmp_path, gadgetron_log):
    """`rtcine replay IN --server HOST:PORT --chain chains/rtcine_cgsense.xml --out OUT`."""
    path, reference, _ = scan
    out = str(tmp_path / "replay_out.h5")
    chain = os.path.join(CHAINS_DIR, "rtcine_cgsense.xml")
    proc = subprocess.run([sys.executable, "-m", "rtcine", "replay", path, "--server", gadgetron_server.address,
                           "--chain", chain, "--out", out], capture_output=True, text=True, timeout=300,
                          env=gadgetron_server.env)
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stderr
    assert f"{FRAMES * SPOKES} spokes -> {FRAMES} frames in, {FRAMES} images out" in proc.stdout
    assert "latency (last spoke -> image) p50" in proc.stdout
    assert "images written to" in proc.stdout
    dset = ismrmrd.Dataset(out, "dataset", create_if_needed=False)
    try:
        images = [dset.read_image("images", i) for i in range(dset.number_of_images("images"))]
        assert b"measurementInformation" in dset.read_xml_header()
    finally:
        dset.close()
    assert [i.getHead().image_index for i in images] == list(range(1, FRAMES + 1))
    assert mean_psnr(images, reference, body_mask(reference)) > MIN_PSNR["cgsense"]
    # the same images as Gadgetron's own client gets through the same chain
    theirs = run_chain(chain).images
    for a, b in zip(images, theirs):
        assert psnr(image_frame(a), image_frame(b)) > SAME_IMAGES_DB


def test_client_at_scanner_pace_summarises_like_replay(scan, gadgetron_server, gadgetron_log):
    """replay_to_server(realtime=True) returns replay()'s summary keys, counts and latencies."""
    from gadgets.client import replay_to_server
    from gadgets.replay import format_summary, replay
    from recon_core.config import ReconConfig

    path = scan[0]
    summary = replay_to_server(path, gadgetron_server.address, os.path.join(CHAINS_DIR, "rtcine_gridding.xml"),
                               realtime=True)
    local = replay(path, ReconConfig(recon="gridding", coil_maps="lowres"))     # for its keys and counts
    assert set(local) <= set(summary), set(local) - set(summary)
    assert summary["errors"] == []
    assert (summary["frames"], summary["images"], summary["spokes"]) == (FRAMES, FRAMES, FRAMES * SPOKES)
    assert summary["noise_acquisitions"] == local["noise_acquisitions"]
    assert summary["latency_ms"]["n"] == FRAMES and summary["latency_ms"]["p50"] > 0
    assert summary["recon"] == "gridding" and summary["realtime"] is True
    assert summary["acquisition_fps"] == pytest.approx(local["acquisition_fps"])
    # the chain's own latency is part of the end-to-end one
    assert summary["latency_ms"]["p50"] >= summary["chain_latency_ms"]["p50"] * 0.9
    text = format_summary(summary)
    assert f"{FRAMES} frames in, {FRAMES} images out" in text and "at scanner pace" in text


def test_simulated_file_goes_through_as_written(tmp_path, gadgetron_server, gadgetron_log):
    """`rtcine simulate` output, unmodified, through the native chain (needs a header
    Gadgetron accepts: no <version>, a DEVICE_SUBJECT_SESSION_MEAS measurementID)."""
    path = str(tmp_path / "as_written.h5")
    proc = subprocess.run([sys.executable, "-m", "rtcine", "simulate", path, "--frames", str(FRAMES), "--coils",
                           str(COILS), "--matrix", str(MATRIX), "--seed", str(SEED), "-q"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    dset = ismrmrd.Dataset(path, "dataset", create_if_needed=False)
    xml = dset.read_xml_header()
    dset.close()
    problems = header_problems(xml.decode() if isinstance(xml, bytes) else xml)
    assert not problems, "recon_core.mrd.make_header writes a header Gadgetron refuses: " + "; ".join(problems)
    out = str(tmp_path / "as_written_out.h5")
    run = gadgetron_server.send(path, os.path.join(CHAINS_DIR, "rtcine_native_prewhiten.xml"), out)
    assert run.returncode == 0, run.stderr
    assert len(read_client_output(out)[1]) == FRAMES


def test_gadgetron_errors_reach_the_client(scan, gadgetron_server, tmp_path, gadgetron_log):
    """Gadgetron's own errors come back as TEXT messages: our client reports them. Here
    NoiseAdjustGadget cannot store the noise covariance (a measurementID Gadgetron cannot
    split into device, subject, session)."""
    import shutil

    import ismrmrd.xsd as xsd

    from gadgets.client import replay_to_server
    from recon_core.mrd import header_to_xml

    path = str(tmp_path / "no_subject.h5")
    shutil.copy(scan[0], path)
    dset = ismrmrd.Dataset(path, "dataset", create_if_needed=False)
    header = xsd.CreateFromDocument(dset.read_xml_header())
    header.measurementInformation.measurementID = "no_subject"
    dset.write_xml_header(header_to_xml(header))
    dset.close()
    summary = replay_to_server(path, gadgetron_server.address,
                               os.path.join(CHAINS_DIR, "rtcine_native_prewhiten.xml"))
    assert summary["images"] == 0 and summary["frames"] == FRAMES and summary["skipped_frames"] == FRAMES
    assert any("NoiseAdjust" in e and "ERROR" in e for e in summary["errors"]), summary["errors"]
    assert gadgetron_server.alive()


def test_client_names_a_chain_on_the_server(scan, gadgetron_server, gadgetron_log):
    """A bare chain name goes as CONFIG_FILE (the client's -c): Gadgetron's stock
    default.xml (its C++ Cartesian chain, one image per repetition) runs; a missing name
    comes back as Gadgetron's error."""
    from gadgets.client import replay_to_server

    summary = replay_to_server(scan[0], gadgetron_server.address, "default.xml", timeout=120)
    assert summary["errors"] == [] and summary["images"] == FRAMES
    assert summary["chain"] == "server chain default.xml"
    summary = replay_to_server(scan[0], gadgetron_server.address, "no_such_chain.xml", timeout=120)
    assert summary["images"] == 0
    assert any("ERROR" in e for e in summary["errors"]), summary["errors"]
    assert gadgetron_server.alive()
