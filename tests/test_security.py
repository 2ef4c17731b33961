"""Security of the stream and its inputs: where the server listens, model files never
unpickled, YAML through safe_load, configuration values validated and never evaluated."""
from __future__ import annotations

import logging
import pickle
import re
import threading
from pathlib import Path

import pytest
import torch
from stream_helpers import exchange, header_xml, images_of, items, logged, message_bytes, start_server

from gadgets.serve import serve
from recon_core.config import ConfigError, ReconConfig
from recon_core.training.checkpoint import load_checkpoint
from rtcine.cli import build_parser

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("recon_core", "gadgets", "rtcine", "benchmarks") for p in (REPO / d).rglob("*.py")]


def _code(path: Path) -> str:
    """Source without comments and docstring-ish lines, for the greps below."""
    return "\n".join(line.split("#")[0] for line in path.read_text().splitlines())


# -- where the server listens ------------------------------------------------------------------

def test_serve_binds_loopback_by_default():
    ready = threading.Event()
    t = threading.Thread(target=serve, args=(0,), kwargs={"max_connections": 1, "ready": ready}, daemon=True)
    t.start()
    assert ready.wait(10)
    assert ready.address[0] == "127.0.0.1"
    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"
    import socket
    socket.create_connection(("127.0.0.1", ready.port)).close()     # let it finish
    t.join(10)


# -- model files -----------------------------------------------------------------------------------

def test_no_pickle_anywhere_in_the_package():
    bad = []
    for path in SOURCES:
        code = _code(path)
        for m in re.finditer(r"torch\.load\(([^)]*)\)", code):
            if "weights_only=True" not in m.group(1):
                bad.append(f"{path}: {m.group(0)}")
        for pattern in (r"\bpickle\.loads?\(", r"allow_pickle\s*=\s*True", r"\bjoblib\.load\(", r"\bdill\."):
            bad += [f"{path}: {m.group(0)}" for m in re.finditer(pattern, code)]
    assert not bad, bad


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_pickled_model_is_refused_not_executed(tmp_path):
    marker = tmp_path / "executed"
    base = tmp_path / "evil"
    with open(f"{base}.safetensors", "wb") as f:
        pickle.dump(_Payload(marker), f)
    (tmp_path / "evil.yaml").write_text("kind: imunne\narch: {}\n")
    with pytest.raises(ValueError, match="cannot be loaded"):
        load_checkpoint(f"{base}.safetensors")
    torch.save({"x": _Payload(marker)}, f"{base}.safetensors")        # torch's own pickle format
    with pytest.raises(ValueError, match="cannot be loaded"):
        load_checkpoint(f"{base}.safetensors")
    assert not marker.exists()


# -- YAML ----------------------------------------------------------------------------------------------

def test_yaml_is_only_safe_loaded():
    bad = []
    for path in SOURCES:
        code = _code(path)
        for pattern in (r"\byaml\.(load|unsafe_load|full_load|load_all)\(", r"Loader\s*=\s*yaml\.(Unsafe|Full)?Loader\b"):
            bad += [f"{path}: {m.group(0)}" for m in re.finditer(pattern, code)]
    assert not bad, bad


def test_yaml_python_tags_are_refused(tmp_path):
    marker = tmp_path / "executed"
    (tmp_path / "m.safetensors").write_bytes(b"")
    (tmp_path / "m.yaml").write_text(f"kind: !!python/object/apply:pathlib.Path.touch [!!python/object/apply:"
                                     f"pathlib.Path ['{marker}']]\n")
    with pytest.raises(ValueError, match="cannot be loaded"):
        load_checkpoint(str(tmp_path / "m.safetensors"))
    (tmp_path / "c.yaml").write_text(f"recon: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(Exception):
        ReconConfig.from_yaml(str(tmp_path / "c.yaml"))
    assert not marker.exists()


# -- configuration values ------------------------------------------------------------------------------

def test_no_eval_or_exec_in_the_package():
    bad = []
    for path in SOURCES:
        bad += [f"{path}: {m.group(0)}" for m in re.finditer(r"(?<![.\w])(eval|exec|compile)\(", _code(path))]
    assert not bad, bad


@pytest.mark.parametrize("key", ["recon", "cg_iterations", "cg_lambda", "wait_for_maps", "ordering", "device",
                                 "coil_maps", "overload"])
def test_code_as_a_value_is_a_bad_value(key, tmp_path):
    marker = tmp_path / "executed"
    value = f"__import__('os').system('touch {marker}')"
    with pytest.raises(ConfigError, match=key):
        ReconConfig.from_mapping({key: value})
    assert not marker.exists()


def test_code_in_a_free_text_value_stays_text(tmp_path, caplog):
    """``model`` is a path: code there is a file name that does not exist (CG-SENSE fallback)."""
    caplog.set_level(logging.INFO)
    marker = tmp_path / "executed"
    value = f"__import__('os').system('touch {marker}')"
    assert ReconConfig.from_mapping({"model": value}).model == value
    port, _, _ = start_server(connections=2)
    config = (f'<configuration><property name="recon" value="imunne"/><property name="model" value="{value}"/>'
              '<property name="coil_maps" value="lowres"/><property name="cg_iterations" value="2"/></configuration>')
    got = images_of(exchange(port, message_bytes(config, header_xml(), items())))
    assert got and all(i.meta["rtcine_recon"] == "cgsense" for i in got)
    logged(caplog, f"model {value} not loaded: FileNotFoundError", logging.ERROR, wait=10)
    bad = f'<configuration><property name="cg_iterations" value="{value}"/></configuration>'
    assert images_of(exchange(port, message_bytes(bad, header_xml(), items()))) == []
    logged(caplog, "ConfigError: cg_iterations=\"__import__('os').system(", logging.ERROR, wait=10)
    assert not marker.exists()


def test_serve_refuses_connections_beyond_max_concurrent(caplog):
    """With one connection being served and max_concurrent=1, the next is closed at once and
    logged; the server goes on and ends after the connections asked for."""
    import logging
    import socket

    ready = threading.Event()
    with caplog.at_level(logging.ERROR, logger="rtcine.serve"):
        t = threading.Thread(target=serve, args=(0,), kwargs={"max_connections": 2, "ready": ready,
                                                              "max_concurrent": 1}, daemon=True)
        t.start()
        assert ready.wait(10)
        first = socket.create_connection(("127.0.0.1", ready.port))      # served: waits for its config
        second = socket.create_connection(("127.0.0.1", ready.port))
        second.settimeout(10)
        assert second.recv(1) == b""                                     # closed by the server
        second.close()
        first.close()
        t.join(10)
    assert not t.is_alive()
    assert "connection 2 from" in caplog.text and "refused: 1 connections are being served (max_concurrent 1)" \
        in caplog.text
