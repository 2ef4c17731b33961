"""Faults and load: a long soak through ``rtcine serve`` with flat memory, concurrent clients
that get their own images back while stuck ones are given up, and a fuzz of the byte stream.

Sizes are small (16x16 or 24x24, 2-4 coils, gridding with low-resolution maps) so that each
test stays well under 30 s on a loaded 2-core machine. Measured numbers are printed
(``pytest -s``) and quoted in docs/reliability.md.
"""
from __future__ import annotations

import logging
import socket
import struct
import threading
import time
import tracemalloc

import ismrmrd
import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stream_helpers import (CONFIG_XML, assert_same_images, images_of, message_bytes, read_all, run_local,
                            start_server, synthetic_header_xml, synthetic_stream)

from gadgets.connection import ProtocolError, open_connection
from gadgets.serve import _serve_one
from recon_core.config import ConfigError
from recon_core.mrd import HeaderError

torch.set_num_threads(1)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _sender(sock, data: bytes, shutdown=True):
    def run():
        try:
            sock.sendall(data)
            if shutdown:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


# -- soak --------------------------------------------------------------------------------------

SOAK_FRAMES = 3000


def test_soak_memory_stays_flat_and_every_frame_comes_back():
    """3000 frames of 16x16 (24000 acquisitions, 4 coils) through rtcine serve on 127.0.0.1,
    made on the fly: RSS sampled every 50 images; its growth from 25% to 100% of the run stays
    under 8 MB, and images == frames, in order."""
    port, _, _ = start_server(idle_timeout=30.0)
    hdr = synthetic_header_xml(SOAK_FRAMES)
    samples, indices = [], []
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        def send():
            w = sock.makefile("wb", buffering=1 << 16)
            w.write(message_bytes(CONFIG_XML, hdr, close=False))
            ser = ismrmrd.ProtocolSerializer(w)
            for acq in synthetic_stream(SOAK_FRAMES):
                ser.serialize(acq)
            ser.close()
            w.flush()
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        for item in ismrmrd.ProtocolDeserializer(sock.makefile("rb")).deserialize():
            if isinstance(item, ismrmrd.Image):
                indices.append(item.getHead().image_index)
                if len(indices) % 50 == 0:
                    samples.append(rss_mb())
        sender.join(10)
    wall = time.perf_counter() - t0
    assert indices == list(range(1, SOAK_FRAMES + 1))
    quarter = samples[len(samples) // 4]
    growth = max(samples[len(samples) // 4:]) - quarter
    print(f"\nsoak: {SOAK_FRAMES} frames of 16x16 in {wall:.1f} s ({SOAK_FRAMES / wall:.0f} frames/s), RSS "
          f"{samples[0]:.1f} -> {quarter:.1f} (25%) -> {samples[-1]:.1f} MB (end), growth 25%->100% {growth:.2f} MB")
    assert growth < 8.0


# -- concurrency --------------------------------------------------------------------------------

CONC_FRAMES = 60
IDLE_S, SEND_S = 12.0, 10.0         # longer than the good clients need, so the stuck ones are still there


def _stream_bytes(seed: int, frames: int = CONC_FRAMES, matrix: int = 24) -> bytes:
    return message_bytes(CONFIG_XML, synthetic_header_xml(frames, matrix=matrix),
                         list(synthetic_stream(frames, seed=seed, matrix=matrix)))


def test_concurrent_clients_get_their_own_images_and_stuck_ones_block_nobody(caplog):
    """4 clients at once (different seeds: different data) each get exactly the images of
    their own local replay, while one client that sent config+header and then nothing, and one
    that sends a long stream but never reads, are still connected; those two are then given up
    by the idle and send timeouts, each with a log line, and the server goes on."""
    caplog.set_level(logging.INFO)
    port, thread, _ = start_server(idle_timeout=IDLE_S, send_timeout=SEND_S)
    seeds = [11, 12, 13, 14]
    local = {s: run_local(list(synthetic_stream(CONC_FRAMES, seed=s, matrix=24)),
                          ismrmrd.xsd.CreateFromDocument(synthetic_header_xml(CONC_FRAMES, matrix=24)))[0]
             for s in seeds}
    payload = {s: _stream_bytes(s) for s in seeds}

    # the stuck ones first
    silent = socket.create_connection(("127.0.0.1", port))
    silent.sendall(message_bytes(CONFIG_XML, synthetic_header_xml(10), close=False))
    deaf = socket.socket()
    deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)         # and never reads
    deaf.connect(("127.0.0.1", port))
    deaf.settimeout(30)
    # 200 images of 64x64 (6.5 MB): far more than the socket buffers hold, so the server's sends block
    deaf_sender = _sender(deaf, _stream_bytes(99, frames=200, matrix=64), shutdown=False)

    results, errors = {}, []
    barrier = threading.Barrier(len(seeds))

    def client(seed):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
                barrier.wait()
                sender = _sender(sock, payload[seed])
                results[seed] = images_of(read_all(sock))
                sender.join(10)
        except Exception as exc:  # reported below
            errors.append(exc)

    t0 = time.perf_counter()
    clients = [threading.Thread(target=client, args=(s,)) for s in seeds]
    for c in clients:
        c.start()
    for c in clients:
        c.join(60)
    wall = time.perf_counter() - t0
    assert not errors and wall < SEND_S - 1
    stuck = [t.name for t in threading.enumerate() if t.name.startswith("rtcine-conn-") and t.is_alive()]
    assert len(stuck) >= 2                        # the silent and the deaf client were still being served
    for s in seeds:
        assert_same_images(results[s], local[s])
        others = [local[o][0] for o in seeds if o != s]
        for other in others:                      # different data, different images: nothing mixed
            assert np.abs(np.asarray(results[s][0].data) - np.asarray(other.data)).max() > 1e-3 * np.abs(
                np.asarray(other.data)).max()
    print(f"\nconcurrency: {len(seeds)} clients x {CONC_FRAMES} frames of 24x24 in {wall:.1f} s while 2 stuck "
          f"clients were connected")

    # the stuck ones are given up, with a reason in the log; the server goes on
    record = _wait_log(caplog, "PeerIdle: nothing received for 12 s", 20)
    assert record.levelno == logging.ERROR
    record = _wait_log(caplog, "PeerStalled: the peer has read nothing for 10 s", 20)
    assert record.levelno == logging.ERROR
    silent.close()
    deaf.close()
    deaf_sender.join(10)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        _sender(sock, payload[seeds[0]])
        assert_same_images(images_of(read_all(sock)), local[seeds[0]])
    assert thread.is_alive()


def _wait_log(caplog, text, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for r in caplog.records:
            if text in r.getMessage():
                return r
        time.sleep(0.1)
    raise AssertionError(f"no log record with {text!r}:\n" + "\n".join(r.getMessage() for r in caplog.records))


# -- fuzz ---------------------------------------------------------------------------------------

FUZZ_CFG = CONFIG_XML.replace('name="calibration_frames" value="2"', 'name="calibration_frames" value="1"')


def _base():
    """A valid short stream (3 frames of 16x16, 2 coils, 8 spokes) and its message offsets."""
    hdr = synthetic_header_xml(3, coils=2)
    parts = [message_bytes(FUZZ_CFG, None, close=False), message_bytes(None, hdr, close=False)]
    parts += [message_bytes(None, None, [a], close=False) for a in synthetic_stream(3, coils=2)]
    parts.append(struct.pack("<H", 4))
    offsets = np.cumsum([0] + [len(p) for p in parts]).tolist()
    return b"".join(parts), offsets


BASE, BOUNDARIES = _base()


def _huge_message(kind: int, a: int, b: int, c: int) -> bytes:
    """A message whose size fields claim far more than follows."""
    if kind in (2, 3):
        return struct.pack("<HI", kind, (a << 16 | b) | 0x10000000)
    if kind == 1008:
        head = ismrmrd.AcquisitionHeader()
        head.number_of_samples, head.active_channels, head.trajectory_dimensions = a, b, c % 16
        return struct.pack("<H", kind) + bytes(head)
    if kind == 1022:
        head = ismrmrd.ImageHeader()
        head.channels, head.matrix_size[0], head.matrix_size[1], head.matrix_size[2] = a, b, c, 1
        head.data_type = ismrmrd.DATATYPE_CXFLOAT
        return struct.pack("<H", kind) + bytes(head) + struct.pack("<Q", (a * b) << 20)
    head = ismrmrd.WaveformHeader()
    head.channels, head.number_of_samples = a, b << 8
    return struct.pack("<H", kind) + bytes(head)


_ACQ_FIELDS = {name: getattr(ismrmrd.AcquisitionHeader, name).offset for name in
               ("number_of_samples", "active_channels", "trajectory_dimensions", "scan_counter", "center_sample",
                "flags", "encoding_space_ref", "available_channels")}
_E1 = ismrmrd.AcquisitionHeader.idx.offset + ismrmrd.EncodingCounters.kspace_encode_step_1.offset
_ACQ_FIELDS["kspace_encode_step_1"] = _E1
_ACQS = BOUNDARIES[2:-2]                               # where acquisition messages start


def _flips(lo, hi):
    return st.lists(st.tuples(st.integers(lo, hi - 1), st.integers(0, 255)), min_size=1, max_size=16)


mutation = st.one_of(
    st.tuples(st.just("flip"), _flips(BOUNDARIES[2], len(BASE))),           # in the acquisitions
    st.tuples(st.just("flip"), _flips(0, BOUNDARIES[2])),                    # in the handshake
    st.tuples(st.just("field"), st.sampled_from(_ACQS), st.sampled_from(sorted(_ACQ_FIELDS)),
              st.sampled_from([0, 1, 7, 255, 256, 4095, 65535, 2 ** 31, 2 ** 32 - 1])),
    st.tuples(st.just("truncate"), st.integers(BOUNDARIES[1], len(BASE))),
    st.tuples(st.just("bogus id"), st.sampled_from(BOUNDARIES[2:-1]), st.integers(0, 65535),
              st.binary(max_size=64)),
    st.tuples(st.just("huge"), st.sampled_from(BOUNDARIES[1:-1]), st.sampled_from([2, 3, 1008, 1022, 1026]),
              st.integers(1, 65535), st.integers(1, 65535), st.integers(1, 65535)),
    st.tuples(st.just("drop"), st.integers(0, len(BOUNDARIES) - 2)),
)


def mutate(data: bytes, ops) -> bytes:
    data = bytearray(data)
    for op in ops:
        if op[0] == "flip":
            for i, v in op[1]:
                if i < len(data):
                    data[i] = v
        elif op[0] == "field":                             # overwrite one acquisition header field
            at = op[1] + 2 + _ACQ_FIELDS[op[2]]
            size = 4 if op[2] == "scan_counter" else 8 if op[2] == "flags" else 2
            data[at:at + size] = (op[3] % (1 << (8 * size))).to_bytes(size, "little")
        elif op[0] == "truncate":
            del data[op[1]:]
        elif op[0] == "bogus id":
            data[op[1]:op[1]] = struct.pack("<H", op[2]) + op[3]
        elif op[0] == "huge":
            data[op[1]:op[1]] = _huge_message(*op[2:])
        else:                                              # drop one whole message
            a, b = BOUNDARIES[op[1]], BOUNDARIES[op[1] + 1]
            if b <= len(data):
                del data[a:b]
    return bytes(data)


CLEAR_ERRORS = (ProtocolError, ConfigError, HeaderError, ConnectionError)
FUZZ_SETTINGS = dict(deadline=None, database=None, derandomize=True,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                            HealthCheck.function_scoped_fixture])


@settings(max_examples=100, **FUZZ_SETTINGS)
@given(st.lists(mutation, min_size=1, max_size=3))
def test_fuzz_connection_reader(ops):
    """Mutated streams read by our Connection on a socket pair: it ends with the stream or a
    clear error (ProtocolError, ConfigError, HeaderError, ConnectionError), within 5 s, and never
    allocates more than 32 MB whatever the size fields say."""
    data = mutate(BASE, ops)
    ours, theirs = socket.socketpair()
    sender = _sender(theirs, data)
    outcome = {}

    def read():
        try:
            conn = open_connection(ours, idle_timeout=3.0, send_timeout=2.0)
            outcome["items"] = sum(1 for _ in conn)
        except CLEAR_ERRORS as exc:
            outcome["error"] = exc
        except BaseException as exc:  # anything else is a finding
            outcome["unexpected"] = exc
        finally:
            ours.close()

    tracemalloc.start()
    try:
        reader = threading.Thread(target=read, daemon=True)
        t0 = time.perf_counter()
        reader.start()
        reader.join(5.0)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        theirs.close()
        sender.join(2)
    assert not reader.is_alive(), f"reader hung on {ops!r}"
    assert "unexpected" not in outcome, f"{type(outcome['unexpected']).__name__}: {outcome['unexpected']} ({ops!r})"
    assert "error" in outcome or "items" in outcome
    if "error" in outcome:
        assert str(outcome["error"])                       # a message that names the problem
    assert peak < 32 * 2 ** 20, f"{peak / 2 ** 20:.0f} MB allocated for {ops!r}"
    assert elapsed < 5.0


_RSS0 = []


@settings(max_examples=50, **FUZZ_SETTINGS)
@given(st.lists(mutation, min_size=1, max_size=3))
def test_fuzz_serve_path(ops):
    """The same mutations through the whole serve path (bounded connection, validation, chain,
    replies) as ``rtcine serve`` runs each connection: it returns (never raises) within 15 s and
    the process's memory does not run away."""
    if not _RSS0:
        _RSS0.append(rss_mb())
    data = mutate(BASE, ops)
    ours, theirs = socket.socketpair()
    got = []

    def peer():
        _sender(theirs, data).join(5)
        got.extend(read_all(theirs))

    p = threading.Thread(target=peer, daemon=True)
    p.start()
    server = threading.Thread(target=_serve_one, args=(ours, None, 0, 3.0, 2.0), daemon=True)
    server.start()
    server.join(15)
    p.join(5)
    theirs.close()
    assert not server.is_alive(), f"serve path hung on {ops!r}"
    assert not p.is_alive()
    assert len(images_of(got)) <= 3
    assert rss_mb() - _RSS0[0] < 200
