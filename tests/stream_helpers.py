"""Helpers for the stream reliability tests: tiny scans, a synthetic stream generator,
acquisition surgery, a Gadgetron-side socket client and a server in a thread."""
from __future__ import annotations

import functools
import io
import logging
import re
import socket
import struct
import threading
import time

import ismrmrd
import numpy as np

from gadgets.chain import run_chain
from gadgets.serve import serve
from gadgets.stats import ChainStats
from recon_core.config import ReconConfig
from recon_core.mrd import TICK_SECONDS, RadialProtocol, header_to_xml, make_header
from recon_core.trajectory import radial_coordinates, spoke_angles

FRAMES, COILS, MATRIX, SPOKES = 6, 4, 32, 8
NOISE = 4                      # noise scans first: data spoke i has scan_counter NOISE + i
CFG = ReconConfig(recon="gridding", coil_maps="lowres", calibration_frames=2)
CONFIG_XML = ('<configuration><property name="recon" value="gridding"/>'
              '<property name="coil_maps" value="lowres"/><property name="calibration_frames" value="2"/>'
              '</configuration>')


@functools.lru_cache(maxsize=None)
def scan(seed: int = 0, include_traj: bool = True):
    from recon_core.simulate import SimulationConfig, simulate

    return simulate(SimulationConfig(frames=FRAMES, coils=COILS, matrix=MATRIX, spokes_per_frame=SPOKES, snr=30,
                                     seed=seed, include_traj=include_traj, noise_scans=NOISE))


def items(seed: int = 0, include_traj: bool = True) -> list:
    """Fresh acquisitions (noise scans, then spokes) of the small scan: safe to modify."""
    from recon_core.simulate import acquisitions

    return list(acquisitions(scan(seed, include_traj)))


def header_xml(seed: int = 0) -> str:
    return header_to_xml(make_header(scan(seed).config.protocol()))


def header(seed: int = 0):
    return ismrmrd.xsd.CreateFromDocument(header_xml(seed))


def header_without_ordering(seed: int = 0):
    xml = re.sub(r"<userParameterString>\s*<name>ordering</name>.*?</userParameterString>", "", header_xml(seed),
                 flags=re.S)
    assert "ordering" not in xml
    return xml


def reshaped(acq, coils: int | None = None, samples: int | None = None, traj: bool = True):
    """A copy of ``acq`` with fewer/more coils or samples, or without its trajectory."""
    coils = acq.active_channels if coils is None else coils
    samples = acq.number_of_samples if samples is None else samples
    dims = acq.trajectory_dimensions if traj else 0
    out = ismrmrd.Acquisition(acq.getHead())
    out.resize(number_of_samples=samples, active_channels=coils, trajectory_dimensions=dims)
    c, s = min(coils, acq.active_channels), min(samples, acq.number_of_samples)
    out.data[:c, :s] = acq.data[:c, :s]
    if dims:
        out.traj[:s] = acq.traj[:s]
    return out


def images_of(outputs) -> list:
    return [o for o in outputs if isinstance(o, ismrmrd.Image)]


def run_local(stream, hdr, cfg=CFG):
    """Run the chain in-process; return (images, stats)."""
    stats = ChainStats()
    imgs = images_of(run_chain(iter(stream), hdr, cfg, stats))
    return imgs, stats


def pixels(img) -> np.ndarray:
    return np.asarray(img.data)[0, 0]


def assert_same_images(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.getHead().image_index == b.getHead().image_index
        np.testing.assert_allclose(pixels(a), pixels(b), rtol=0, atol=1e-4 * np.abs(pixels(b)).max())


# -- synthetic stream for soak and load --------------------------------------------------------

def synthetic_protocol(frames: int, matrix: int = 16, coils: int = 4, spokes: int = 8) -> RadialProtocol:
    return RadialProtocol(matrix=matrix, samples=2 * matrix, coils=coils, spokes_per_frame=spokes,
                          ordering="golden", tr_ms=3.0, fov_mm=300.0, frames=frames)


def synthetic_stream(frames: int, seed: int = 0, matrix: int = 16, coils: int = 4, spokes: int = 8):
    """Acquisitions of a deterministic synthetic radial cine, made on the fly (no phantom):
    a seed-dependent bank of 2 * spokes spoke signals cycled through, golden-angle
    trajectories, counters and time stamps as a scanner sets them. Constant memory."""
    rng = np.random.default_rng(seed)
    samples = 2 * matrix
    r = np.abs(np.linspace(-1, 1, samples))
    profile = (1.0 / (0.05 + r))[None, None, :]                 # a bright centre, as MR data have
    bank = (profile * (rng.normal(size=(2 * spokes, coils, samples))
                       + 1j * rng.normal(size=(2 * spokes, coils, samples)))).astype(np.complex64)
    for n in range(frames * spokes):
        angle = spoke_angles(np.array([n]), "golden", spokes)
        traj = radial_coordinates(angle, samples)[0].astype(np.float32)
        acq = ismrmrd.Acquisition.from_array(bank[n % len(bank)], traj)
        acq.scan_counter = n
        acq.idx.kspace_encode_step_1 = n % 65536
        acq.idx.repetition = (n // spokes) % 65536
        acq.acquisition_time_stamp = int(round((n + 1) * 3e-3 / TICK_SECONDS))
        acq.sample_time_us = 2.5
        acq.center_sample = samples // 2
        yield acq


def synthetic_header_xml(frames: int, **kw) -> str:
    return header_to_xml(make_header(synthetic_protocol(frames, **kw)))


# -- the Gadgetron side of a socket ----------------------------------------------------------

def message_bytes(config_xml: str | None, header: str | None, acquisitions=(), close: bool = True) -> bytes:
    """The bytes Gadgetron would send: CONFIG, HEADER, acquisitions, CLOSE."""
    buf = io.BytesIO()
    ser = ismrmrd.ProtocolSerializer(buf)
    if config_xml is not None:
        ser.serialize(ismrmrd.ConfigText(config_xml))
    if header is not None:
        buf.write(struct.pack("<HI", 3, len(header.encode())))
        buf.write(header.encode())
    for acq in acquisitions:
        ser.serialize(acq)
    if close:
        buf.write(struct.pack("<H", 4))
    return buf.getvalue()


def read_all(sock) -> list:
    """Everything the server sends until CLOSE or EOF (a reset ends it too)."""
    received = []
    try:
        for item in ismrmrd.ProtocolDeserializer(sock.makefile("rb")).deserialize():
            received.append(item)
    except (EOFError, OSError, ValueError, struct.error):
        pass
    return received


def exchange(port: int, data: bytes, shutdown: bool = True, timeout: float = 60.0) -> list:
    """Send ``data`` to the server, half-close, read everything back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if shutdown:
                sock.shutdown(socket.SHUT_WR)
        except OSError:              # the server refused the stream and closed first
            pass
        return read_all(sock)


def start_server(cfg=None, connections: int = 0, **kw):
    """``rtcine serve`` on a free port in a daemon thread; returns (port, thread, ready)."""
    ready = threading.Event()
    t = threading.Thread(target=serve, args=(0, "127.0.0.1", cfg, connections, ready), kwargs=kw, daemon=True)
    t.start()
    assert ready.wait(10)
    return ready.port, t, ready


def logged(caplog, text: str, level: int = logging.WARNING, wait: float = 0.0) -> logging.LogRecord:
    """The first record at ``level`` or above whose message contains ``text`` (waiting up to ``wait`` s)."""
    deadline = time.monotonic() + wait
    while True:
        for r in caplog.records:
            if r.levelno >= level and text in r.getMessage():
                return r
        if time.monotonic() >= deadline:
            raise AssertionError(f"no log record at level >= {logging.getLevelName(level)} with {text!r}; got:\n"
                                 + "\n".join(f"{r.levelname} {r.getMessage()}" for r in caplog.records))
        time.sleep(0.05)
