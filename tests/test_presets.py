"""Named presets: the real-time default, the layers over a preset, clear errors; the routes
that start warm (replay --realtime, serve's readiness) and replay --out into an existing file."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET

import ismrmrd
import pytest

from gadgets.entry import config_from_xml
from recon_core.config import DEFAULT_PRESET, ConfigError, ReconConfig, presets
from rtcine.cli import _recon_config, build_parser, main

#: the real-time row of the README and chains/rtcine_imunne_rt.xml before it named the preset
REALTIME = dict(recon="imunne", model="imunne_rt", window=2, lookahead=1, max_iterations=2, warm_start=True,
                deadline_ms=100.0, overload="reduce", queue_size=2, wait_for_maps=False)


def _cfg(argv):
    return _recon_config(build_parser().parse_args(argv))


def test_every_preset_is_a_valid_configuration_and_says_what_it_is():
    assert {"realtime", "causal", "quality", "cgsense", "gridding"} <= set(presets())
    for name, spec in presets().items():
        assert spec["description"], name
        ReconConfig.from_preset(name)


def test_no_options_is_the_realtime_preset():
    assert DEFAULT_PRESET == "realtime"
    for cfg in (ReconConfig.from_mapping({}), config_from_xml(None), _cfg(["replay", "in.h5"]),
                _cfg(["serve", "--preset", "realtime"])):
        assert {k: getattr(cfg, k) for k in REALTIME} == REALTIME


def test_the_realtime_preset_runs_the_shipped_model_on_the_schedule_its_yaml_names():
    """The schedule the shipped real-time model was validated with (its YAML's ``streaming:``)
    is what the realtime preset runs, so the chain streams it as measured and does not warn."""
    from recon_core.networks.checkpoint import read_meta
    from recon_core.networks.streaming import model_path

    cfg = ReconConfig.from_preset("realtime")
    schedule = read_meta(model_path(cfg.recon, cfg.model))["streaming"]
    assert (schedule["window"], schedule["lookahead"], schedule["updates"]) == \
        (cfg.window, cfg.lookahead, cfg.max_iterations)


def test_causal_is_realtime_without_lookahead_and_an_earlier_deadline():
    assert ReconConfig.from_preset("causal") == ReconConfig.from_preset("realtime").replace(lookahead=0,
                                                                                             deadline_ms=60)


def test_a_bare_recon_keeps_its_own_defaults():
    """recon without preset: the preset of that name (cgsense, gridding), else the field
    defaults; never the real-time preset's windows or its model."""
    assert ReconConfig.from_mapping({"recon": "cgsense"}) == ReconConfig(recon="cgsense") \
        == ReconConfig.from_preset("cgsense")
    cg = _cfg(["replay", "in.h5", "--recon", "cgsense"])
    assert (cg.recon, cg.overload, cg.queue_size, cg.deadline_ms) == ("cgsense", "none", 8, 0.0)
    assert ReconConfig.from_mapping({"recon": "imunne"}) == ReconConfig(recon="imunne")
    # a preset's model belongs to its recon: another recon over it gets its own shipped model
    alt = ReconConfig.from_mapping({"recon": "altun"}, preset="realtime")
    assert alt.model == "" and alt.window == 2


def test_layers_preset_then_yaml_then_set_then_options(tmp_path):
    conf = tmp_path / "recon.yaml"
    conf.write_text("preset: quality\nwindow: 3\nlookahead: 1\ncg_iterations: 4\n")
    cfg = _cfg(["replay", "in.h5", "--config", str(conf)])
    assert (cfg.recon, cfg.max_iterations, cfg.window, cfg.lookahead) == ("imunne", 20, 3, 1)     # YAML over its preset
    cfg = _cfg(["replay", "in.h5", "--config", str(conf), "--preset", "causal", "--set", "lookahead=0"])
    assert (cfg.model, cfg.max_iterations, cfg.window, cfg.lookahead, cfg.cg_iterations) == \
        ("imunne_rt", 2, 3, 0, 4)          # --preset over the YAML's preset; YAML keys over it; --set over YAML
    cfg = _cfg(["replay", "in.h5", "--preset", "realtime", "--set", "deadline_ms=80", "--recon", "cgsense"])
    assert (cfg.recon, cfg.deadline_ms, cfg.overload) == ("cgsense", 80.0, "reduce")
    assert ReconConfig.from_yaml(str(conf)).window == 3


def test_chain_names_a_preset_and_overrides_keys():
    xml = ET.fromstring('<configuration><property name="preset" value="cgsense"/>'
                        '<property name="cg_iterations" value="3"/></configuration>')
    cfg = config_from_xml(xml)
    assert (cfg.recon, cfg.cg_iterations, cfg.overload) == ("cgsense", 3, "none")
    xml = ET.fromstring('<configuration><property name="deadline_ms" value="60"/></configuration>')
    cfg = config_from_xml(xml)                     # keys only: over the default preset
    assert (cfg.recon, cfg.model, cfg.deadline_ms) == ("imunne", "imunne_rt", 60.0)


def test_unknown_preset_is_a_clear_error(capsys):
    with pytest.raises(ConfigError, match=r"preset 'fast': no such preset; presets: causal .*realtime"):
        ReconConfig.from_preset("fast")
    with pytest.raises(ConfigError, match="preset 'fast'"):
        config_from_xml(ET.fromstring('<configuration><property name="preset" value="fast"/></configuration>'))
    assert main(["replay", "missing.h5", "--preset", "fast"]) == 2
    err = capsys.readouterr().err
    assert "rtcine replay: error: preset 'fast': no such preset" in err and "realtime" in err


# -- replay --out into an existing file ---------------------------------------------------------

def _images(path):
    dset = ismrmrd.Dataset(path, "dataset", create_if_needed=False)
    try:
        return dset.number_of_images("images")
    finally:
        dset.close()


def test_replay_out_overwrites_an_existing_file_with_a_notice(small_file, tmp_path, capsys):
    out = str(tmp_path / "out.h5")
    argv = ["replay", small_file, "--out", out, "--preset", "gridding", "--set", "coil_maps=lowres", "-q"]
    assert main(argv) == 0
    assert "exists" not in capsys.readouterr().err
    assert main(argv) == 0
    assert f"{out} exists: overwriting it" in capsys.readouterr().err
    assert _images(out) == 16                      # one copy of the 16 frames, not two
    assert "overwritten" in build_parser()._subparsers._group_actions[0].choices["replay"].format_help()


def test_replay_refuses_to_write_into_its_input(small_file, tmp_path, capsys):
    import shutil

    copy = str(tmp_path / "in.h5")
    shutil.copy(small_file, copy)
    size = os.path.getsize(copy)
    assert main(["replay", copy, "--out", copy, "--preset", "gridding"]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert os.path.getsize(copy) == size


# -- warm before the first spoke ------------------------------------------------------------------

def test_replay_realtime_warms_up_before_the_clock_starts(small_file, tmp_path):
    """In a fresh process, `rtcine replay --realtime` with no options: the first frame's image is
    out within 1 s of its last spoke (cold, ESPIRiT's import and first run, the model's load
    and first calls took 2.5 s on this machine, all of it in the first frames' latency)."""
    out = str(tmp_path / "rt.h5")
    proc = subprocess.run([sys.executable, "-m", "rtcine", "-v", "replay", small_file, "--realtime", "--out", out,
                           "--set", "coil_maps=lowres", "-q"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "warmed up in" in proc.stderr
    dset = ismrmrd.Dataset(out, "dataset", create_if_needed=False)
    try:
        images = [dset.read_image("images", i) for i in range(dset.number_of_images("images"))]
    finally:
        dset.close()
    assert len(images) == 16 and images[0].meta["rtcine_recon"] == "imunne"
    first = float(images[0].meta["rtcine_latency_ms"])
    assert first < 1000, f"first frame {first:.0f} ms after its last spoke"


def test_serve_reports_ready_when_warm_and_health_checks_it(tmp_path, monkeypatch):
    """--ready-file (HOST PORT PID, gone when the server stops), systemd's READY=1 (Type=notify),
    and `rtcine health`, which makes no connection."""
    import socket

    from gadgets.health import problems
    from gadgets.serve import serve

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(30)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    ready_file = str(tmp_path / "ready")
    assert problems([], ready_file)                                  # not yet
    ready = threading.Event()
    cfg = ReconConfig.from_preset("gridding", coil_maps="lowres")
    t = threading.Thread(target=serve, args=(0, "127.0.0.1", cfg, 1, ready), kwargs={"ready_file": ready_file},
                         daemon=True)
    t.start()
    assert ready.wait(30)
    for _ in range(50):
        if os.path.exists(ready_file):
            break
        time.sleep(0.1)
    assert notify.recv(200).startswith(b"READY=1\n")
    notify.close()
    host, port, pid = open(ready_file).read().split()
    assert (host, int(port), int(pid)) == ("127.0.0.1", ready.port, os.getpid())
    assert problems([ready.port], ready_file) == []
    assert main(["health", "--port", str(ready.port), "--ready-file", ready_file, "-q"]) == 0
    # one (empty) connection ends the server (max_connections=1): the ready file goes with it
    from stream_helpers import CONFIG_XML, exchange, header_xml, message_bytes
    exchange(ready.port, message_bytes(CONFIG_XML, header_xml(), []))
    t.join(30)
    assert not os.path.exists(ready_file)
    assert problems([ready.port], ready_file) and main(["health", "--ready-file", ready_file]) == 1
