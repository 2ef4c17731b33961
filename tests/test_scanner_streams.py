"""Streams as a scanner sends them, made by our simulator's options: frames from the stream's
markers (no ``spokes_per_frame`` in the header), non-imaging acquisitions (dummy scans, phase
correction, navigators), and multi-slice stacks (sequential and interleaved), through
``run_chain``, ``rtcine replay`` and ``rtcine serve`` with no frame or slice configuration.

The scans are small (32x32, 4 coils, 8 frames of 8 spokes per slice, 3 slices). Each slice of
a stack is compared with the same slice scanned alone (the same data written as a one-slice
file, :mod:`recon_core.simulate_stack`). The slices differ only where the chain is
deliberately stream-wide (one gradient-delay estimate for the stack, from its first
frames); measured per-slice PSNR, stack against alone (CG-SENSE, ESPIRiT maps from the
slice's first 4 frames): within 0.1 dB.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import ismrmrd
import numpy as np
import pytest
import torch
from gadgetron_fixture import gadgetron_log, gadgetron_server  # noqa: F401  (fixtures)
from stream_helpers import exchange, images_of, message_bytes, start_server

from gadgets.chain import run_chain
from gadgets.frames import MARKERS, SliceEnd, frame_buffer, frame_plan
from gadgets.images import image_frame
from gadgets.stats import ChainStats
from recon_core.config import ReconConfig
from recon_core.evaluation import score
from recon_core.mrd import (header_to_xml, make_header, open_dataset, protocol_from_header, read_acquisitions,
                            read_header)
from recon_core.simulate import SimulationConfig, simulate, write_dataset
from recon_core.simulate_stack import simulate_stack

torch.set_num_threads(1)

FRAMES, COILS, MATRIX, SPOKES, SLICES, SEED = 8, 4, 32, 8, 3, 21
#: recon set explicitly (the default may change); nothing about frames or slices is configured
CFG = ReconConfig(recon="cgsense", wait_for_maps=True, calibration_frames=4, cg_iterations=6)
#: for the tests of single-slice framing: synchronous low-resolution maps (no ESPIRiT wait)
FAST = CFG.replace(coil_maps="lowres")
SAME_DB = 0.5


def sim_config(**kw) -> SimulationConfig:
    base = dict(frames=FRAMES, coils=COILS, matrix=MATRIX, spokes_per_frame=SPOKES, snr=30, seed=SEED, noise_scans=4)
    base.update(kw)
    return SimulationConfig(**base)


def file_items(path):
    dset = open_dataset(path)
    try:
        return read_header(dset), list(read_acquisitions(dset))
    finally:
        dset.close()


def run_file(path, cfg=CFG):
    header, items = file_items(path)
    stats = ChainStats()
    imgs = images_of(run_chain(iter(items), header, cfg, stats))
    return imgs, stats


def by_slice(imgs) -> dict:
    out: dict = {}
    for img in imgs:
        out.setdefault(img.getHead().slice, []).append(img)
    return out


def roi_psnr(imgs, reference) -> float:
    return score(np.stack([image_frame(i) for i in imgs]), reference, roi=True)["mean"]["psnr"]


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
    """``order -> (stack file, stack, [alone file per slice])``: 3-slice stacks with no
    spokes_per_frame in the header, 5 dummy scans and a phase correction per slice and a
    navigator every 20 spokes; each slice also written alone (same data, same extras)."""
    folder = tmp_path_factory.mktemp("stacks")
    out = {}
    for order in ("sequential", "interleaved"):
        stack = simulate_stack(sim_config(slices=SLICES, slice_order=order, spf_header=False, dummy_scans=5,
                                          phasecorr=True, navigator_every=20))
        path = str(folder / f"{order}.h5")
        write_dataset(path, stack)
        alone = []
        for s, scan in enumerate(stack.slices):
            alone.append(str(folder / f"{order}_slice{s}.h5"))
            write_dataset(alone[-1], scan)
        out[order] = (path, stack, alone)
    return out


@pytest.fixture(scope="module")
def alone_results(stacks):
    """``(order, slice) -> (images, PSNR)`` of each slice scanned alone."""
    results = {}
    for order, (_, stack, alone) in stacks.items():
        for s, path in enumerate(alone):
            imgs, stats = run_file(path)
            assert len(imgs) == FRAMES and stats.slices == 1
            results[order, s] = (imgs, roi_psnr(imgs, stack.slices[s].reference))
    return results


# -- frames from the stream's markers ------------------------------------------------------------

def test_simulator_writes_markers_without_the_header_parameter(stacks):
    path, _, _ = stacks["sequential"]
    header, items = file_items(path)
    protocol = protocol_from_header(header)
    assert protocol.spokes_per_frame == 0 and protocol.slices == SLICES
    assert (protocol.limits_spokes, protocol.limits_repetitions) == (FRAMES * SPOKES, FRAMES)
    spokes = [a for a in items if a.is_flag_set(ismrmrd.ACQ_LAST_IN_REPETITION)]
    assert len(spokes) == FRAMES * SLICES
    kinds = [ismrmrd.ACQ_IS_DUMMYSCAN_DATA, ismrmrd.ACQ_IS_PHASECORR_DATA, ismrmrd.ACQ_IS_NAVIGATION_DATA]
    assert [sum(a.is_flag_set(k) for a in items) for k in kinds] == [5 * SLICES, SLICES,
                                                                      (FRAMES * SPOKES * SLICES - 1) // 20]


@pytest.mark.parametrize("header_kind, frames_from", [
    ("no spokes_per_frame", MARKERS),
    ("no spokes_per_frame, no repetition limits", MARKERS),   # the default 13 would cut 4 frames wrong
])
def test_frames_follow_the_markers(tmp_path, header_kind, frames_from):
    """Without the header's spokes_per_frame (and without encodingLimits' repetitions: a
    default of 13 spokes) the frames are the stream's 8-spoke repetitions."""
    scan = simulate(sim_config())
    path = str(tmp_path / "scan.h5")
    write_dataset(path, scan)
    header, items = file_items(path)
    header.encoding[0].trajectoryDescription.userParameterLong = [
        p for p in header.encoding[0].trajectoryDescription.userParameterLong if p.name != "spokes_per_frame"]
    if "no repetition" in header_kind:
        header.encoding[0].encodingLimits.repetition.maximum = 0
        assert frame_plan(0, 0, protocol_from_header(header)).spokes == 13
    stats = ChainStats()
    imgs = images_of(run_chain(iter(items), header, FAST, stats))
    assert len(imgs) == FRAMES and stats.frames_from == frames_from
    assert [i.meta["rtcine_spokes"] for i in imgs] == [str(SPOKES)] * FRAMES
    reference, _ = run_file(path, FAST)      # the header's own spokes_per_frame: the same frames
    for a, b in zip(imgs, reference):
        np.testing.assert_allclose(image_frame(a), image_frame(b), atol=1e-4 * np.abs(image_frame(b)).max())


def test_configuration_overrides_the_markers(tmp_path):
    scan = simulate(sim_config())
    path = str(tmp_path / "scan.h5")
    write_dataset(path, scan)
    imgs, stats = run_file(path, FAST.replace(spokes_per_frame=16))
    assert len(imgs) == FRAMES // 2 and stats.frames_from == "configuration"
    assert all(i.meta["rtcine_spokes"] == "16" for i in imgs)


def test_without_markers_the_header_count_decides(tmp_path):
    scan = simulate(sim_config())
    path = str(tmp_path / "scan.h5")
    write_dataset(path, scan)
    header, items = file_items(path)
    for a in items:                          # a stream that marks nothing
        a.idx.repetition = 0
        a.clear_flag(ismrmrd.ACQ_FIRST_IN_REPETITION)
        a.clear_flag(ismrmrd.ACQ_LAST_IN_REPETITION)
    header.encoding[0].trajectoryDescription.userParameterLong = []
    stats = ChainStats()
    imgs = images_of(run_chain(iter(items), header, FAST, stats))
    assert len(imgs) == FRAMES and stats.frames_from.startswith("header encodingLimits (64 spokes / 8 repetitions)")


def _remarked(items, sizes):
    """The spokes of ``items`` regrouped into frames of ``sizes`` spokes (repetition counter
    and FIRST/LAST_IN_REPETITION rewritten), as a scanner whose frames differ in length."""
    spokes = [a for a in items if not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
    assert sum(sizes) == len(spokes)
    n = 0
    for f, size in enumerate(sizes):
        for p in range(size):
            a = spokes[n]
            a.idx.repetition = f
            a.clear_flag(ismrmrd.ACQ_FIRST_IN_REPETITION)
            a.clear_flag(ismrmrd.ACQ_LAST_IN_REPETITION)
            if p == 0:
                a.set_flag(ismrmrd.ACQ_FIRST_IN_REPETITION)
            if p == size - 1:
                a.set_flag(ismrmrd.ACQ_LAST_IN_REPETITION)
            n += 1
    return items


SIZES = [8, 6, 10, 8, 7, 9, 8, 8]


@pytest.mark.parametrize("recon", ["cgsense", "imunne"])
def test_frames_of_different_lengths_are_each_reconstructed_right(tmp_path, recon):
    """Frames closed by markers at 6..10 spokes: each gets its own trajectory and density
    weights (a network window of unequal frames is padded with zero-weight samples)."""
    scan = simulate(sim_config())
    path = str(tmp_path / "scan.h5")
    write_dataset(path, scan)
    header, items = file_items(path)
    _remarked(items, SIZES)
    header.encoding[0].trajectoryDescription.userParameterLong = []
    cfg = FAST if recon == "cgsense" else FAST.replace(recon="imunne", window=3, lookahead=1, max_iterations=3)
    stats = ChainStats()
    imgs = images_of(run_chain(iter(items), header, cfg, stats))
    assert [int(i.meta["rtcine_spokes"]) for i in imgs] == SIZES
    assert [i.getHead().image_index for i in imgs] == list(range(1, len(SIZES) + 1))
    assert stats.partial_frames == 2         # the 6- and 7-spoke frames: fewer than the 8 the header expects
    # each image against the object at its own frames' time: as good as an 8-spoke frame's
    starts = np.cumsum([0] + SIZES[:-1])
    for img, start, size in zip(imgs, starts, SIZES):
        f = min(int((start + size / 2) // SPOKES), FRAMES - 1)
        assert np.isfinite(image_frame(img)).all()
        quality = score(image_frame(img)[None], scan.reference[f:f + 1], roi=True)["mean"]["psnr"]
        assert quality > 16.0, (start, size, quality)


# -- non-imaging acquisitions --------------------------------------------------------------------

def test_dummy_scans_phase_correction_and_navigators_never_enter_a_frame(tmp_path, caplog):
    """Every frame comes back, with the images of the same scan without the extras."""
    caplog.set_level(logging.INFO)
    clean, extras = str(tmp_path / "clean.h5"), str(tmp_path / "extras.h5")
    write_dataset(clean, simulate(sim_config()))
    write_dataset(extras, simulate(sim_config(dummy_scans=5, phasecorr=True, navigator_every=20)))
    want, _ = run_file(clean, FAST)
    got, stats = run_file(extras, FAST)
    assert len(got) == FRAMES and stats.frames == FRAMES and not stats.stream_error
    assert stats.non_imaging == {"dummy scan": 5, "phase correction": 1, "navigator": 3}
    assert stats.bad_spokes == 0 and stats.input_problems == {}
    for a, b in zip(got, want):
        np.testing.assert_allclose(image_frame(a), image_frame(b), atol=1e-4 * np.abs(image_frame(b)).max())
    assert sum("dummy scan acquisitions (first: acquisition 4) are not imaging spokes" in r.getMessage()
               for r in caplog.records) == 1
    assert any("non-imaging acquisitions passed on, not framed: dummy scan x5, phase correction x1, navigator x3"
               in r.getMessage() for r in caplog.records)


def test_non_imaging_acquisitions_are_passed_on(tmp_path):
    path = str(tmp_path / "extras.h5")
    write_dataset(path, simulate(sim_config(dummy_scans=2, navigator_every=30)))
    header, items = file_items(path)
    out = list(run_chain(iter(items), header, CFG.replace(recon="gridding", coil_maps="lowres")))
    passed = [o for o in out if isinstance(o, ismrmrd.Acquisition)]
    assert sum(a.is_flag_set(ismrmrd.ACQ_IS_DUMMYSCAN_DATA) for a in passed) == 2
    assert sum(a.is_flag_set(ismrmrd.ACQ_IS_NAVIGATION_DATA) for a in passed) == 2
    assert not any(isinstance(o, SliceEnd) for o in out)


# -- slices ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack_results(stacks):
    """``order -> (images, stats)`` of each stack through the chain."""
    return {order: run_file(path) for order, (path, _, _) in stacks.items()}


@pytest.mark.parametrize("order", ["sequential", "interleaved"])
def test_every_slice_is_its_own_cine(stacks, stack_results, alone_results, order):
    path, stack, _ = stacks[order]
    imgs, stats = stack_results[order]
    assert stats.frames_from == MARKERS and stats.slices == SLICES and stats.slices_ended == SLICES
    assert stats.non_imaging == {"dummy scan": 5 * SLICES, "phase correction": SLICES,
                                 "navigator": (FRAMES * SPOKES * SLICES - 1) // 20}
    groups = by_slice(imgs)
    assert sorted(groups) == list(range(SLICES)) and len(imgs) == FRAMES * SLICES
    for s, mine in groups.items():
        heads = [i.getHead() for i in mine]
        assert [h.image_index for h in heads] == list(range(1, FRAMES + 1))
        assert {h.image_series_index for h in heads} == {s}                     # set * slices + slice
        assert {tuple(np.round(h.position, 3)) for h in heads} == {tuple(stack.positions[s])}
        assert {i.meta["rtcine_slice"] for i in mine} == {str(s)}
        theirs, alone_db = alone_results[order, s]
        stack_db = roi_psnr(mine, stack.slices[s].reference)
        print(f"{order} slice {s}: {stack_db:.2f} dB in the stack, {alone_db:.2f} dB alone")
        assert abs(stack_db - alone_db) < SAME_DB
        assert stack_db > 17.0


def test_an_ended_slice_frees_its_state(stacks, monkeypatch):
    """Sequential stack: a slice's coil-map service is closed when it ends (at most one other
    is open beside it), and its SliceEnd comes before the next slice's first frame."""
    import gadgets.recon as recon

    open_now, most = set(), [0]

    class Counted(recon.CoilMapService):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            open_now.add(id(self))
            most[0] = max(most[0], len(open_now))

        def close(self):
            open_now.discard(id(self))
            super().close()

    monkeypatch.setattr(recon, "CoilMapService", Counted)
    imgs, _ = run_file(stacks["sequential"][0])
    assert len(imgs) == FRAMES * SLICES and most[0] <= 2 and not open_now
    header, items = file_items(stacks["sequential"][0])
    protocol = protocol_from_header(header)
    order = [(type(o).__name__, o.slice) for o in frame_buffer(iter(items), protocol, "golden",
                                                               frame_plan(0, 0, protocol), stats=ChainStats())
             if type(o).__name__ in ("Frame", "SliceEnd")]
    expected = []
    for s in range(SLICES):
        expected += [("Frame", s)] * FRAMES + [("SliceEnd", s)]
    assert order == expected


def assert_same(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.getHead().image_index == b.getHead().image_index
        np.testing.assert_allclose(image_frame(a), image_frame(b), atol=1e-4 * np.abs(image_frame(b)).max())


def test_sequential_slices_without_slice_flags_end_when_the_next_starts(stacks, stack_results):
    path, stack, _ = stacks["sequential"]
    header, items = file_items(path)
    for a in items:
        a.clear_flag(ismrmrd.ACQ_LAST_IN_SLICE)
        a.clear_flag(ismrmrd.ACQ_FIRST_IN_SLICE)
    stats = ChainStats()
    imgs = images_of(run_chain(iter(items), header, CFG, stats))
    assert len(imgs) == FRAMES * SLICES and stats.slices_ended == SLICES and stats.partial_frames == 0
    assert_same(imgs, stack_results["sequential"][0])


def test_stack_through_rtcine_replay_and_evaluate(stacks, alone_results, tmp_path):
    """`rtcine replay STACK --recon cgsense --set wait_for_maps=true --out OUT`, then
    `rtcine evaluate OUT --reference STACK --roi --json`: every slice scored on its own."""
    path, stack, _ = stacks["sequential"]
    out = str(tmp_path / "out.h5")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(__file__)),
                                                       os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-m", "rtcine", "replay", path, "--recon", "cgsense", "--set",
                          "wait_for_maps=true", "--set", "calibration_frames=4", "--set", "cg_iterations=6",
                          "--out", out, "-q"], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr
    assert f"{FRAMES * SPOKES * SLICES} spokes -> {FRAMES * SLICES} frames in, {FRAMES * SLICES} images out" \
        in run.stdout
    assert f"{SLICES} slices, each its own cine" in run.stdout
    assert "non-imaging acquisitions passed on, not framed: dummy scan x15, phase correction x3" in run.stdout
    ev = subprocess.run([sys.executable, "-m", "rtcine", "evaluate", out, "--reference", path, "--roi", "--json",
                         "--no-dc"], capture_output=True, text=True, timeout=300, env=env)
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert sorted(result["slices"]) == [str(s) for s in range(SLICES)]
    for s in range(SLICES):
        assert len(result["slices"][str(s)]["frames"]) == FRAMES
        assert abs(result["slices"][str(s)]["mean"]["psnr"] - alone_results["sequential", s][1]) < SAME_DB


def test_stack_through_rtcine_serve(stacks, stack_results):
    """The interleaved stack over a socket to `rtcine serve`: the images of the local chain."""
    path, _, _ = stacks["interleaved"]
    header, items = file_items(path)
    config = ('<configuration><property name="recon" value="cgsense"/><property name="wait_for_maps" value="true"/>'
              '<property name="calibration_frames" value="4"/><property name="cg_iterations" value="6"/>'
              '</configuration>')
    port, thread, _ = start_server(connections=1)
    got = images_of(exchange(port, message_bytes(config, header_to_xml(header), items)))
    key = lambda i: (i.getHead().slice, i.getHead().image_index)      # noqa: E731
    assert_same(sorted(got, key=key), sorted(stack_results["interleaved"][0], key=key))
    thread.join(30)


def test_header_slices_count_numbers_the_series():
    """image_series_index = set * slices + slice, slices from encodingLimits."""
    from recon_core.simulate import SimulationConfig as C
    protocol = C(slices=4).protocol()
    header = ismrmrd.xsd.CreateFromDocument(header_to_xml(make_header(protocol)))
    assert protocol_from_header(header).slices == 4


# -- the real Gadgetron ------------------------------------------------------------------------

def _chain_copy(name: str, folder, port: int | None = None) -> str:
    """chains/NAME with this module's reconstruction keys (CG-SENSE, ESPIRiT from 4 frames
    waited for, 6 iterations) in place of its own, and <connect port=PORT>."""
    import xml.etree.ElementTree as ET

    tree = ET.parse(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "chains", name))
    conf = tree.getroot().find(".//external/configuration")
    keep = {"prewhiten"}
    for prop in list(conf.iter("property")):
        if prop.get("name") not in keep:
            conf.remove(prop)
    for key in ("recon", "wait_for_maps", "calibration_frames", "cg_iterations"):
        value = getattr(CFG, key)
        ET.SubElement(conf, "property", name=key, value=str(value).lower() if isinstance(value, bool) else str(value))
    if port is not None:
        tree.getroot().find(".//external/connect").set("port", str(port))
    path = str(folder / name)
    tree.write(path)
    return path


def _client_series(path: str) -> dict:
    """gadgetron_ismrmrd_client output: ``{series name: [images]}`` of its one group."""
    import h5py

    with h5py.File(path, "r") as f:
        (group,) = list(f.keys())
    dset = ismrmrd.Dataset(path, group, create_if_needed=False)
    try:
        return {name: [dset.read_image(name, i) for i in range(dset.number_of_images(name))] for name in dset.list()}
    finally:
        dset.close()


@pytest.mark.parametrize("chain", ["rtcine_cgsense.xml", "rtcine_connect.xml"])
def test_stack_with_markers_through_real_gadgetron(chain, stacks, alone_results, tmp_path, gadgetron_server,
                                                   gadgetron_log):
    """The sequential stack (markers, no spokes_per_frame, dummy scans, navigators) through
    Gadgetron 4.7: the <execute> chain, and the <connect> chain to an `rtcine serve`. One
    image series per slice (image_series_index = slice), one image per frame, each slice
    within 0.5 dB of the slice scanned alone (the chains' other keys are their own)."""
    from gadgetron_fixture import free_port, is_listening, server_env, stop_process_group

    path, stack, _ = stacks["sequential"]
    serve = None
    port = None
    if "connect" in chain:
        port = free_port()
        log_path = str(tmp_path / "serve.log")
        with open(log_path, "wb") as log:
            serve = subprocess.Popen([sys.executable, "-m", "rtcine", "-v", "serve", "--port", str(port),
                                      "--max-connections", "1"], stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=server_env(os.path.dirname(sys.executable)),
                                     start_new_session=True)
        for _ in range(600):
            if is_listening(port) or serve.poll() is not None:
                break
            time.sleep(0.1)
        assert is_listening(port), open(log_path).read()
    try:
        out = str(tmp_path / "out.h5")
        mark = gadgetron_server.mark()
        run = gadgetron_server.send(path, _chain_copy(chain, tmp_path, port), out)
        log = gadgetron_server.wait_for_log("Connection state: [FINISHED]", mark)
        if serve is not None:
            serve.wait(60)
            log += open(log_path).read()
    finally:
        if serve is not None:
            stop_process_group(serve)
    assert run.returncode == 0, run.stderr
    series = _client_series(out)
    assert sorted(series) == [f"image_{s}" for s in range(SLICES)], sorted(series)
    for s in range(SLICES):
        mine = sorted(series[f"image_{s}"], key=lambda i: i.getHead().image_index)
        assert [i.getHead().image_index for i in mine] == list(range(1, FRAMES + 1))
        assert {i.getHead().slice for i in mine} == {s}
        quality = roi_psnr(mine, stack.slices[s].reference)
        print(f"{chain} slice {s}: {quality:.2f} dB through Gadgetron, {alone_results['sequential', s][1]:.2f} dB "
              "alone (local)")
        assert abs(quality - alone_results["sequential", s][1]) < SAME_DB
    assert f"{FRAMES * SPOKES * SLICES} spokes, {FRAMES * SLICES} frames, {FRAMES * SLICES} images" in log
    assert "non-imaging acquisitions passed on: dummy scan x15, phase correction x3, navigator x9" in log
    assert gadgetron_server.alive()


def test_slices_interleaved_by_frames_restart_once_and_keep_their_numbering(tmp_path, caplog):
    """Frames of two slices alternating (slice 0 frame 0, slice 1 frame 0, slice 0 frame 1,
    ...), without slice flags: the first switch looks sequential and ends slice 0; its return
    shows the interleaving, it starts again (new state) and no slice is ended again. Every
    frame is formed, numbered per slice."""
    caplog.set_level(logging.INFO)
    scan = simulate(sim_config())
    path = str(tmp_path / "scan.h5")
    write_dataset(path, scan)
    header, items = file_items(path)
    spokes = [a for a in items if not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
    for a in spokes:
        f = a.idx.repetition
        a.idx.slice, a.idx.repetition = f % 2, f // 2
        a.clear_flag(ismrmrd.ACQ_LAST_IN_SLICE)
        a.clear_flag(ismrmrd.ACQ_FIRST_IN_SLICE)
    protocol = protocol_from_header(header)
    out = [o for o in frame_buffer(iter(spokes), protocol, "golden", frame_plan(0, 0, protocol), stats=ChainStats())
           if type(o).__name__ in ("Frame", "SliceEnd")]
    frames = [(o.slice, o.index) for o in out if type(o).__name__ == "Frame"]
    assert frames == [(f % 2, f // 2) for f in range(FRAMES)]
    ends = [o.slice for o in out if isinstance(o, SliceEnd)]
    assert ends == [0, 1, 0]                 # slice 0 once at the first switch; both at the end of the stream
    assert any("slices are interleaved by frames" in r.getMessage() for r in caplog.records)
