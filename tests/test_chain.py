"""The chain end to end: replay, socket (playing the Gadgetron side), stream edge cases."""
import socket
import threading

import ismrmrd
import numpy as np
import pytest

from gadgets.chain import run_chain
from gadgets.images import image_frame
from gadgets.replay import replay
from gadgets.serve import serve
from gadgets.stats import ChainStats
from recon_core.config import ReconConfig
from recon_core.evaluation import body_mask
from recon_core.metrics import psnr
from recon_core.mrd import open_dataset, read_acquisitions, read_header

CFG = ReconConfig(recon="cgsense", wait_for_maps=True, calibration_frames=8)


def _file_items(path):
    dset = open_dataset(path)
    header = read_header(dset)
    items = list(read_acquisitions(dset))
    raw_header = dset.read_xml_header()
    dset.close()
    return header, raw_header, items


def test_replay_one_image_per_frame_with_headers(small_file, small_scan, tmp_path):
    out = str(tmp_path / "out.h5")
    summary = replay(small_file, CFG, out=out)
    images = summary["images_list"]
    assert summary["frames"] == 16 and summary["images"] == 16 and len(images) == 16
    for f, img in enumerate(images):
        h = img.getHead()
        assert h.image_index == f + 1 and h.repetition == f
        assert tuple(h.matrix_size) == (64, 64, 1)
        assert h.image_type == ismrmrd.IMTYPE_COMPLEX
        assert h.field_of_view[0] == pytest.approx(300.0)
        assert h.acquisition_time_stamp > 0
        assert img.meta["rtcine_recon"] == "cgsense"
        assert float(img.meta["rtcine_latency_ms"]) >= 0
        assert img.meta["GADGETRON_DataRole"] == "Image"
    mask = body_mask(small_scan.reference)
    quality = np.mean([psnr(image_frame(i), r, mask) for i, r in zip(images, small_scan.reference)])
    assert quality > 20
    written = ismrmrd.Dataset(out, "dataset", create_if_needed=False)
    assert written.number_of_images("images") == 16
    written.close()


def test_no_traj_file_gives_the_same_images(small_file, small_file_notraj):
    a = replay(small_file, CFG)["images_list"]
    b = replay(small_file_notraj, CFG)["images_list"]
    assert len(a) == len(b) == 16
    for x, y in zip(a, b):
        np.testing.assert_allclose(image_frame(x), image_frame(y), rtol=1e-3, atol=1e-3 * np.abs(image_frame(x)).max())


def test_partial_last_frame_is_flushed_or_reported(small_file):
    header, _, items = _file_items(small_file)
    cut = items[:-4]                                   # last frame keeps 9 of 13 spokes
    stats = ChainStats()
    images = [i for i in run_chain(iter(cut), header, CFG, stats) if isinstance(i, ismrmrd.Image)]
    assert len(images) == 16 and stats.partial_frames == 1
    assert images[-1].meta["rtcine_partial"] == "1"
    cut = items[:-10]                                  # 3 of 13: reported, not reconstructed
    stats = ChainStats()
    images = [i for i in run_chain(iter(cut), header, CFG, stats) if isinstance(i, ismrmrd.Image)]
    assert len(images) == 15 and stats.dropped_spokes == 3


def test_sliding_window_gives_a_frame_every_stride(small_file):
    header, _, items = _file_items(small_file)
    stats = ChainStats()
    cfg = CFG.replace(frame_stride=7, recon="gridding")
    images = [i for i in run_chain(iter(items), header, cfg, stats) if isinstance(i, ismrmrd.Image)]
    # 208 spokes: first frame at 13, then every 7 -> 1 + 195 // 7 = 28, plus a flushed last window (6 new spokes)
    assert len(images) == 1 + (208 - 13) // 7 + 1 and stats.partial_frames == 1
    assert all(i.meta["rtcine_spokes"] == "13" for i in images)


def test_waveforms_pass_through(small_file):
    header, _, items = _file_items(small_file)
    wav = ismrmrd.Waveform.from_array(np.zeros((1, 10), np.uint32))
    out = list(run_chain(iter(items[:20] + [wav] + items[20:]), header, CFG.replace(recon="gridding")))
    assert sum(isinstance(o, ismrmrd.Waveform) for o in out) == 1


def _serve_in_thread(cfg=None, connections=1):
    ready = threading.Event()
    t = threading.Thread(target=serve, args=(0, "127.0.0.1", cfg, connections, ready), daemon=True)
    t.start()
    assert ready.wait(10)
    return ready.port, t


CONFIG_XML = """<configuration><property name="recon" value="cgsense"/>
<property name="wait_for_maps" value="true"/><property name="calibration_frames" value="8"/></configuration>"""


def test_socket_plays_gadgetron_side(small_file):
    """Config, header, all acquisitions, close over 127.0.0.1 -> one image per frame, in order."""
    header, raw_header, items = _file_items(small_file)
    port, thread = _serve_in_thread()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        wfile, rfile = sock.makefile("wb"), sock.makefile("rb")
        ser = ismrmrd.ProtocolSerializer(wfile)
        ser.serialize(ismrmrd.ConfigText(CONFIG_XML))
        ser.serialize(header)
        for acq in items:
            ser.serialize(acq)
        ser.close()
        received = list(ismrmrd.ProtocolDeserializer(rfile).deserialize())
    thread.join(30)
    images = [r for r in received if isinstance(r, ismrmrd.Image)]
    assert len(images) == 16
    assert [i.getHead().image_index for i in images] == list(range(1, 17))
    assert all(i.meta["rtcine_recon"] == "cgsense" for i in images)
    local = replay(small_file, CFG)["images_list"]
    for a, b in zip(images, local):
        np.testing.assert_allclose(image_frame(a), image_frame(b), atol=1e-4 * np.abs(image_frame(b)).max())


def test_socket_bad_config_value_is_refused_and_server_goes_on(small_file):
    header, _, items = _file_items(small_file)
    port, thread = _serve_in_thread(connections=2)
    bad = '<configuration><property name="recon" value="magic"/></configuration>'
    for config, expect in ((bad, 0), (CONFIG_XML.replace("cgsense", "gridding"), 16)):
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            wfile, rfile = sock.makefile("wb"), sock.makefile("rb")
            ser = ismrmrd.ProtocolSerializer(wfile)
            ser.serialize(ismrmrd.ConfigText(config))
            ser.serialize(header)
            try:
                for acq in items:
                    ser.serialize(acq)
                ser.close()
            except (BrokenPipeError, ConnectionResetError):
                pass
            try:
                received = list(ismrmrd.ProtocolDeserializer(rfile).deserialize())
            except (EOFError, ConnectionResetError):
                received = []
        assert sum(isinstance(r, ismrmrd.Image) for r in received) == expect
    thread.join(30)


def test_replay_with_espirit_lag_reports_which_frames_had_which_maps(small_file):
    """``espirit_lag=3`` with calibration over 4 frames: ESPIRiT starts with frame 3 (0-based)
    and frame 6 is the first on its maps, on every run; the summary says so."""
    from gadgets.replay import format_summary
    from recon_core.config import ReconConfig

    for _ in range(2):
        s = replay(small_file, ReconConfig(recon="gridding", calibration_frames=4, espirit_lag=3))
        assert s["first_espirit_frame"] == 6
        assert s["maps_used"] == {"fallback": 6, "espirit": s["images"] - 6}
    assert "ESPIRiT from frame 6" in format_summary(s)
    # first maps from 2 frames (installed 1 frame later), full ones as before
    s = replay(small_file, ReconConfig(recon="gridding", calibration_frames=4, espirit_lag=3,
                                       first_maps_frames=2, first_maps_grid=0, first_maps_lag=1))
    assert s["first_espirit_frame"] == 2 and s["maps_used"]["fallback"] == 2
