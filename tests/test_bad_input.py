"""Bad input, case by case: a log line naming the problem, the images of every frame complete
before it, and an ``rtcine serve`` that goes on serving.

Each acquisition-level case runs twice: in-process (``run_chain``: the counters) and through
``rtcine serve`` over 127.0.0.1 (the client's images and the server's log). The scan is
tiny: 6 frames x 8 spokes, 4 coils, 32x32, gridding with low-resolution maps.
Data spoke ``i`` is item ``NOISE + i`` and has scan counter ``NOISE + i``.
"""
from __future__ import annotations

import logging
import socket
import struct

import ismrmrd
import numpy as np
import pytest
import torch
from stream_helpers import (CONFIG_XML, FRAMES, NOISE, assert_same_images, exchange, header, header_without_ordering,
                            header_xml, images_of, items, logged, message_bytes, reshaped, run_local, start_server)

from recon_core.config import ReconConfig

torch.set_num_threads(1)


def spoke(i: int) -> int:
    return NOISE + i


@pytest.fixture(scope="module")
def server():
    port, thread, _ = start_server(idle_timeout=20.0, send_timeout=10.0)
    yield port, thread
    assert thread.is_alive(), "the server stopped"


@pytest.fixture(scope="module")
def clean():
    imgs, stats = run_local(items(), header())
    assert len(imgs) == FRAMES and stats.bad_spokes == 0 and not stats.stream_error and not stats.input_problems
    return imgs


@pytest.fixture(scope="module")
def clean_notraj():
    imgs, _ = run_local(items(include_traj=False), header())
    assert len(imgs) == FRAMES
    return imgs


@pytest.fixture(autouse=True)
def _log_level(caplog):
    caplog.set_level(logging.INFO)


def served_images(port, stream, hdr_xml=None, config=CONFIG_XML):
    return images_of(exchange(port, message_bytes(config, hdr_xml or header_xml(), stream)))


# -- acquisitions ----------------------------------------------------------------------------

def _coil_change(its):
    return its[:spoke(20)] + [reshaped(a, coils=3) for a in its[spoke(20):]]


def _wrong_samples(its):
    its[spoke(10)] = reshaped(its[spoke(10)], samples=48)
    its[spoke(30)] = reshaped(its[spoke(30)], samples=80)
    return its


def _no_traj_from_20(its):
    return its[:spoke(20)] + [reshaped(a, traj=False) for a in its[spoke(20):]]


def _nan_inf(its):
    its[spoke(5)].data[1, 7] = np.nan
    its[spoke(13)].data[0, 0] = np.inf
    return its


def _zero_length(its):
    its[spoke(7)] = reshaped(its[spoke(7)], samples=0)
    its[spoke(9)] = reshaped(its[spoke(9)], coils=0)
    return its


def _duplicates(its):
    its.insert(spoke(17) + 1, reshaped(its[spoke(17)]))
    its.insert(spoke(3) + 1, reshaped(its[spoke(3)]))
    return its


def _swap(its):
    its[spoke(10)], its[spoke(11)] = its[spoke(11)], its[spoke(10)]
    return its


def _counter_out_of_range(its):
    its[spoke(12)].idx.kspace_encode_step_1 = 60000
    return its


def _gap(its):
    del its[spoke(20):spoke(23)]
    return its


def _renumbered(its):
    for n, a in enumerate(its):
        a.scan_counter = n
    return its


def _non_imaging(its):
    """5 dummy scans and a phase correction (no trajectory) before the first spoke, a
    navigator (16 samples, no trajectory) before spokes 10, 20, 30, 40."""
    def extra(flag, like, samples=None):
        data = like.data[:, :samples] if samples else like.data
        acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(data) * 3)
        acq.set_flag(flag)
        return acq
    first = its[spoke(0)]
    out = its[:NOISE] + [extra(ismrmrd.ACQ_IS_DUMMYSCAN_DATA, first) for _ in range(5)]
    out.append(extra(ismrmrd.ACQ_IS_PHASECORR_DATA, first))
    for i, a in enumerate(its[NOISE:]):
        if i and i % 10 == 0:
            out.append(extra(ismrmrd.ACQ_IS_NAVIGATION_DATA, a, samples=16))
        out.append(a)
    return _renumbered(out)


def _late_noise(its):
    late = reshaped(its[0])
    return _renumbered(its[:spoke(20)] + [late] + its[spoke(20):])


def _two_slices(its):
    """Frames 3-5 become slice 1 (a sequential stack of two 3-frame slices)."""
    for i, a in enumerate(its[NOISE:]):
        if i == 23:
            a.set_flag(ismrmrd.ACQ_LAST_IN_SLICE)
        if i >= 24:
            a.idx.slice = 1
            a.idx.repetition -= 3
            a.idx.kspace_encode_step_1 -= 24
    return its


def _markers_only_header():
    """No spokes_per_frame user parameter and no repetition range: the default count (13)
    would cut wrong frames; the stream's markers decide."""
    xml = header_xml()
    old_spf = "<userParameterLong>\n    <name>spokes_per_frame</name>\n    <value>8</value>\n   </userParameterLong>"
    old_rep = "<repetition>\n    <minimum>0</minimum>\n    <maximum>5</maximum>"
    assert old_spf in xml and old_rep in xml
    return xml.replace(old_spf, "", 1).replace(old_rep, "<repetition>\n    <minimum>0</minimum>\n    <maximum>0</maximum>", 1)


def _unchanged(its):
    return its


# name, mutation, items with traj, header xml, images, same-as-clean image indices,
# counters, log text, log level
CASES = [
    ("coil count changes mid-stream", _coil_change, True, None, 3, [0, 1],
     {"stream_error": "acquisition 24 has 3 coils, the stream has 4", "partial_frames": 1},
     "acquisition 24 has 3 coils, the stream has 4: ending the stream", logging.ERROR),
    ("wrong number of samples", _wrong_samples, True, None, 6, [0],
     {"bad_spokes": 2, "input_problems": {"samples": 2}},
     "acquisition 14 has 48 samples, the stream has 64: dropped", logging.WARNING),
    ("no trajectory and no ordering", _no_traj_from_20, True, header_without_ordering, 3, [0, 1],
     {"stream_error": "acquisition 24 has no trajectory and neither the header nor the configuration names"},
     "acquisition 24 has no trajectory and neither the header nor the configuration names the radial ordering",
     logging.ERROR),
    ("NaN and Inf samples", _nan_inf, True, None, 6, [],
     {"bad_spokes": 2, "input_problems": {"non-finite": 2}},
     "acquisition 9 has NaN or Inf samples: dropped", logging.WARNING),
    ("zero-length data", _zero_length, True, None, 6, [],
     {"bad_spokes": 2, "input_problems": {"no data": 2}, "partial_frames": 2},   # frames 0 and 1: 7 of 8 each
     "acquisition 11 has no data (4 channels x 0 samples): dropped", logging.WARNING),
    ("duplicated spokes", _duplicates, True, None, 6, [0, 1, 2, 3, 4, 5],
     {"duplicate_spokes": 2, "bad_spokes": 0},
     "acquisition 7 (profile 3) is a duplicate: dropped", logging.WARNING),
    ("spokes out of order", _swap, True, None, 6, [0, 1, 2, 3, 4, 5],
     {"out_of_order_spokes": 1, "gaps": 1, "missing_spokes": 0},
     "acquisition 14 arrived after acquisition 15: kept, in arrival order", logging.WARNING),
    ("profile counter out of range (traj given)", _counter_out_of_range, True, None, 6, [0, 1, 2, 3, 4, 5],
     {"counter_out_of_range": 1, "bad_spokes": 0},
     "acquisition 16: profile counter 60000 is outside the header's encodingLimits 0..47: kept", logging.WARNING),
    ("profile counter out of range (angle from it)", _counter_out_of_range, False, None, 6, [0],
     {"counter_out_of_range": 1, "bad_spokes": 1},
     "profile counter 60000 is outside the header's encodingLimits 0..47 and gives its angle: dropped",
     logging.WARNING),
    ("gap of missing spokes", _gap, True, None, 6, [0, 1],
     {"gaps": 1, "missing_spokes": 3, "partial_frames": 1},
     "gap in the scan counter: 3 acquisition(s) missing between 23 and 27", logging.WARNING),
    ("dummy scans, phase correction, navigators", _non_imaging, True, header_without_ordering, 6,
     [0, 1, 2, 3, 4, 5], {"non_imaging": {"dummy scan": 5, "phase correction": 1, "navigator": 4}, "bad_spokes": 0},
     "dummy scan acquisitions (first: acquisition 4) are not imaging spokes: passed on, not framed", logging.INFO),
    ("noise scan after the data started", _late_noise, True, None, 6, [0, 1, 2, 3, 4, 5],
     {"non_imaging": {"noise scan after the data started": 1}, "bad_spokes": 0},
     "noise scan after the data started acquisitions (first: acquisition 24)", logging.INFO),
    ("frames from markers, not from the header", _unchanged, True, _markers_only_header, 6, [0, 1, 2, 3, 4, 5],
     {"frames_from": "idx.repetition markers / ACQ_LAST_IN_REPETITION"},
     "frames from: idx.repetition markers / ACQ_LAST_IN_REPETITION (frame 0: 8 spokes)", logging.INFO),
    ("two sequential slices", _two_slices, True, None, 6, [0, 1, 2], {"slices": 2, "slices_ended": 2},
     "slice 0 ended (ACQ_LAST_IN_SLICE) after 3 frames", logging.INFO),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_acquisitions(case, server, clean, clean_notraj, caplog):
    name, mutate, traj, hdr, n_images, same, counters, text, level = case
    hdr_xml = hdr() if hdr else header_xml()
    reference = clean if traj else clean_notraj
    # in-process: the counters
    imgs, stats = run_local(mutate(items(include_traj=traj)), ismrmrd.xsd.CreateFromDocument(hdr_xml))
    summary = stats.summary()
    assert len(imgs) == n_images and stats.images == stats.frames == n_images
    assert summary["unaccounted_frames"] == 0
    for key, want in counters.items():
        if key == "stream_error":
            assert want in summary[key]
        else:
            assert summary[key] == want, (key, summary[key])
    if "stream_error" not in counters:
        assert not stats.stream_error
    numbers: dict = {}                    # image_index counts each slice's frames
    for img in imgs:
        numbers.setdefault(img.getHead().slice, []).append(img.getHead().image_index)
    assert all(v == list(range(1, len(v) + 1)) for v in numbers.values()) and sum(map(len, numbers.values())) == n_images
    assert_same_images([imgs[i] for i in same], [reference[i] for i in same])
    logged(caplog, text, level)
    # through rtcine serve: the same images, the log names the problem
    caplog.clear()
    port, thread = server
    got = served_images(port, mutate(items(include_traj=traj)), hdr_xml)
    assert_same_images(got, imgs)
    logged(caplog, text, level, wait=10)
    if "stream_error" in counters:
        logged(caplog, f"rtcine chain failed after {n_images} images: StreamError", logging.ERROR, wait=10)
    assert thread.is_alive()


def test_streams_without_counters_are_not_flagged(clean):
    """Counters left at zero (some converters do): no duplicates, gaps or order warnings."""
    its = items()
    for a in its:
        a.scan_counter = 0
        a.idx.kspace_encode_step_1 = 0
    imgs, stats = run_local(its, header())
    assert_same_images(imgs, clean)
    assert stats.input_problems == {} and stats.duplicate_spokes == stats.gaps == stats.out_of_order_spokes == 0


# -- header ------------------------------------------------------------------------------------

def _sub(old, new):
    def make():
        xml = header_xml()
        assert old in xml
        return xml.replace(old, new, 1)
    return make


def _without(tag):
    import re

    def make():
        xml = re.sub(rf"<{tag}>.*?</{tag}>", "", header_xml(), flags=re.S)
        assert f"<{tag}>" not in xml
        return xml
    return make


HEADER_CASES = [
    ("not XML", lambda: "this is not an ISMRMRD header", "is not a valid ISMRMRD XML document"),
    ("XML, not ISMRMRD", lambda: "<ismrmrdHeaderX/>", "is not a valid ISMRMRD XML document"),
    ("no encoding", _without("encoding"), "ISMRMRD header has no <encoding> section"),
    ("cartesian", _sub("<trajectory>radial</trajectory>", "<trajectory>cartesian</trajectory>"),
     "trajectory is 'cartesian'; this reconstruction needs 'radial'"),
    ("matrix size zero", _sub("<x>32</x>", "<x>0</x>"), "reconstruction matrix size is 0x32"),
    ("matrix too large", _sub("<reconSpace>\n   <matrixSize>\n    <x>32</x>\n    <y>32</y>",
                              "<reconSpace>\n   <matrixSize>\n    <x>60000</x>\n    <y>60000</y>"),
     "reconstruction matrix 60000x60000 is larger than 1024x1024"),
    ("receiverChannels missing", _without("receiverChannels"),
     "acquisitionSystemInformation/receiverChannels is missing"),
    ("receiverChannels below the data's", _sub("<receiverChannels>4<", "<receiverChannels>2<"),
     "noise scan 0 has 4 coils, more than the header's receiverChannels 2"),
]


@pytest.mark.parametrize("case", HEADER_CASES, ids=[c[0] for c in HEADER_CASES])
def test_bad_header_stops_before_any_frame(case, server, caplog):
    name, make, text = case
    port, thread = server
    received = exchange(port, message_bytes(CONFIG_XML, make(), items()))
    assert images_of(received) == []
    record = logged(caplog, text, logging.ERROR, wait=10)
    assert record.name.startswith("rtcine")           # our module logs it, not gadgetron-python
    assert thread.is_alive()


def test_header_with_more_receiver_channels_than_data_is_a_warning(server, clean, caplog):
    """Gadgetron's CoilReductionGadget reduces the data's coils without rewriting the header."""
    port, _ = server
    got = served_images(port, items(), _sub("<receiverChannels>4<", "<receiverChannels>8<")())
    assert_same_images(got, clean)
    logged(caplog, "noise scan 0 has 4 coils, the header's receiverChannels says 8 (coils reduced upstream?)",
           logging.WARNING)


# -- the byte stream ---------------------------------------------------------------------------

def _upto(n_spokes: int, close=False) -> bytes:
    return message_bytes(CONFIG_XML, header_xml(), items()[:spoke(n_spokes)], close=close)


def test_unknown_message_id_ends_the_stream_after_complete_frames(server, clean, caplog):
    port, _ = server
    data = _upto(20) + struct.pack("<H", 777) + b"\x01" * 100 + message_bytes(None, None, items()[spoke(20):])
    got = images_of(exchange(port, data))
    assert len(got) == 3 and got[-1].meta["rtcine_partial"] == "1"
    assert_same_images(got[:2], clean[:2])
    logged(caplog, "unknown message id 777 (not a Gadgetron message)", logging.ERROR, wait=10)


@pytest.mark.parametrize("mid, name", [(1023, "ReconData"), (1050, "AcquisitionBucket"), (5, "text")])
def test_messages_the_chain_cannot_use_are_refused_by_name(server, clean, caplog, mid, name):
    port, _ = server
    data = _upto(16) + struct.pack("<HQ", mid, 2 ** 62)
    got = images_of(exchange(port, data))
    assert_same_images(got, clean[:2])
    logged(caplog, f"id {mid} ({name})", logging.ERROR, wait=10)


def test_truncated_message_keeps_the_complete_frames(server, clean, caplog):
    port, _ = server
    whole = _upto(31)
    one = len(message_bytes(None, None, items()[spoke(30):spoke(31)], close=False))
    got = images_of(exchange(port, whole[:-one // 2]))           # spoke 30 cut in the middle
    assert len(got) == 4 and got[-1].meta["rtcine_partial"] == "1"  # 30 spokes: 3 frames + 6 of 8
    assert_same_images(got[:3], clean[:3])
    logged(caplog, "connection closed by the peer after", logging.ERROR, wait=10)


def test_peer_gone_mid_message_is_logged_and_the_server_goes_on(server, caplog):
    port, thread = server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_upto(4)[:-500])             # 3 spokes and part of a fourth: no frame, nothing to send
    logged(caplog, "the input failed after 7 acquisitions: PeerClosed: connection closed by the peer after",
           logging.ERROR, wait=15)
    logged(caplog, "stream ended inside frame 0 with only 3 of 8 spokes", logging.WARNING)
    assert thread.is_alive()


def test_huge_acquisition_is_refused_before_allocating(server, clean, caplog):
    port, _ = server
    acq = items()[spoke(16)]
    head = acq.getHead()
    head.number_of_samples = 65535
    head.active_channels = 65535                 # 34 GB if trusted
    data = _upto(16) + struct.pack("<H", 1008) + bytes(head) + b"\x00" * 1000
    got = images_of(exchange(port, data))
    assert_same_images(got, clean[:2])
    logged(caplog, "claims 65535 samples x 65535 channels = 4294836225 values; rtcine accepts at most", logging.ERROR,
           wait=10)


@pytest.mark.parametrize("data, text", [
    (b"", "the peer closed the connection before sending the configuration"),
    (struct.pack("<HI", 2, 0xFFFFFFFF), "the configuration message claims 4294967295 bytes; rtcine accepts at most"),
    (message_bytes(CONFIG_XML, None, close=False) + struct.pack("<HI", 3, 0xFFFFFFF0),
     "the ISMRMRD header message claims 4294967280 bytes"),
    (message_bytes(None, "<x/>", close=False), "expected the configuration message (id 2), got id 3"),
    (message_bytes(CONFIG_XML, None, close=False) + struct.pack("<H", 1008),
     "expected the ISMRMRD header message (id 3), got id 1008"),
    (message_bytes(CONFIG_XML, None, close=False) + struct.pack("<HI", 3, 50) + b"<ismrm",
     "connection closed by the peer after 6 of 50 bytes"),
], ids=["nothing", "huge config", "huge header", "header first", "no header", "header cut"])
def test_broken_handshake_is_refused_by_name(server, caplog, data, text):
    port, thread = server
    assert images_of(exchange(port, data)) == []
    record = logged(caplog, text, logging.ERROR, wait=10)
    assert "refused" in record.getMessage()
    assert thread.is_alive()


def test_close_without_data_is_a_clean_empty_stream(server, caplog):
    port, _ = server
    assert images_of(exchange(port, message_bytes(CONFIG_XML, header_xml(), []))) == []
    done = logged(caplog, "rtcine chain: 0 spokes, 0 frames, 0 images", logging.INFO, wait=10)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.threadName == done.threadName]


def test_end_without_close_message_is_the_end_of_the_stream(server, clean, caplog):
    port, _ = server
    got = images_of(exchange(port, message_bytes(CONFIG_XML, header_xml(), items(), close=False)))
    assert_same_images(got, clean)
    logged(caplog, "without a CLOSE message: taking it as the end of the stream", logging.WARNING, wait=10)
    done = logged(caplog, "rtcine chain: ", logging.INFO, wait=10)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.threadName == done.threadName]


# -- configuration ---------------------------------------------------------------------------------

@pytest.mark.parametrize("config, text", [
    ('<configuration><property name="recn" value="gridding"/></configuration>',
     "ConfigError: unknown configuration key(s) ['recn']"),
    ('<configuration><property name="cg_iterations" value="many"/></configuration>',
     "ConfigError: cg_iterations='many': expected an integer"),
    ('<configuration><property name="recon" value="magic"/></configuration>', "ConfigError: recon='magic'"),
    ("<configuration><property name=", "ConfigError: the chain configuration is not XML"),
], ids=["unknown key", "wrong type", "bad value", "not XML"])
def test_bad_configuration_reaches_the_log(server, clean, caplog, config, text):
    port, thread = server
    assert images_of(exchange(port, message_bytes(config, header_xml(), items()))) == []
    logged(caplog, text, logging.ERROR, wait=10)
    assert thread.is_alive()


def test_missing_model_falls_back_to_cgsense_and_says_so(server, caplog):
    port, _ = server
    config = ('<configuration><property name="recon" value="imunne"/><property name="model" '
              'value="/nonexistent/model.safetensors"/><property name="coil_maps" value="lowres"/>'
              '<property name="calibration_frames" value="2"/><property name="cg_iterations" value="3"/></configuration>')
    got = images_of(exchange(port, message_bytes(config, header_xml(), items())))
    assert len(got) == FRAMES
    for img in got:
        assert img.meta["rtcine_recon"] == "cgsense"
        assert "model file /nonexistent/model.safetensors does not exist" in img.meta["rtcine_fallback"]
    logged(caplog, "reconstructing with CG-SENSE instead", logging.ERROR, wait=10)


def test_corrupt_model_falls_back_to_cgsense(tmp_path, caplog):
    base = tmp_path / "broken"
    (tmp_path / "broken.safetensors").write_bytes(b"\x00\x01 not a safetensors file" * 10)
    (tmp_path / "broken.yaml").write_text("kind: imunne\narch: {channels: 4}\n")
    cfg = ReconConfig(recon="imunne", model=str(base) + ".safetensors", coil_maps="lowres", calibration_frames=2,
                      cg_iterations=3)
    imgs, stats = run_local(items(), header(), cfg)
    assert len(imgs) == FRAMES and "cannot be loaded" in stats.fallback
    assert all(i.meta["rtcine_recon"] == "cgsense" and "cannot be loaded" in i.meta["rtcine_fallback"] for i in imgs)
    logged(caplog, "cannot be loaded", logging.ERROR)


def test_server_still_serves_after_all_of_the_above(server, clean):
    port, thread = server
    got = images_of(exchange(port, message_bytes(CONFIG_XML, header_xml(), items())))
    assert_same_images(got, clean)
    assert thread.is_alive()
