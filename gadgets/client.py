"""A scanner emulator: send a recorded ISMRMRD file to a Gadgetron server, as
``gadgetron_ismrmrd_client`` does, and time every frame's image.

The Gadgetron client protocol (Gadgetron 4.x, ``gadgetron_ismrmrd_client``):

1. the chain: id 1 CONFIG_FILE with a 1024-byte, zero-padded name of a chain in the
   server's ``share/gadgetron/config`` (the client's ``-c NAME``), or id 2 CONFIG_TEXT,
   uint32 length + the XML text of a local chain file (the client's ``-C FILE``);
2. id 3 HEADER, uint32 length + the file's ISMRMRD XML header, verbatim;
3. the acquisitions (id 1008) in file order, waveforms (id 1026) merged in by time stamp;
   with ``realtime`` they are paced by ``acquisition_time_stamp`` (ticks of 2.5 ms);
4. id 4 CLOSE.

A reader thread meanwhile receives images (1022) and text (5: Gadgetron's error
messages) until the server's CLOSE. The latency of a frame runs from the moment its last
spoke was written to the socket (with ``realtime``: was ready to be written, so that a write
held up by a server that does not read, as while it starts, counts) to the moment its image
(``image_index = frame + 1``) was received. Frames are cut as our chain cuts them (``gadgets.frames.frame_buffer`` on the
acquisitions sent: the stream's markers, else the header's count, or ``spokes_per_frame``
/ ``frame_stride`` of the chain's ``<configuration>`` when the chain is a local file),
one cine per slice; images are matched to frames by ``(slice, image_index)``.

Usage: ``rtcine replay IN.h5 --server HOST:PORT --chain chains/rtcine_cgsense.xml [--realtime]``.
"""
from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time
import xml.etree.ElementTree as ET

import ismrmrd
import numpy as np

from recon_core.metrics import latency_stats
from recon_core.mrd import (TICK_SECONDS, HeaderError, RadialProtocol, non_imaging_kind, open_dataset,
                            protocol_from_header, read_header)

from .feeder import ARRIVAL, paced
from .frames import DEFAULT_SPOKES_PER_FRAME, Frame, FramePlan, frame_buffer, frame_plan
from .replay import OUTPUT_GROUP, open_output
from .stats import ChainStats, output_rate

log = logging.getLogger("rtcine.client")

#: Gadgetron message ids (apps/clients/gadgetron_ismrmrd_client and ismrmrd.serialization)
CONFIG_FILE, CONFIG_TEXT, HEADER, CLOSE, TEXT = 1, 2, 3, 4, 5
_CONFIG_FILE_SIZE = 1024
#: the chain sent when none is named: the repository's default chain
DEFAULT_CHAIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "chains",
                             "rtcine_connect.xml")


class ServerError(ConnectionError):
    """The Gadgetron server could not be reached or broke the connection."""


def parse_server(server: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[::1]:9002"`` for IPv6) -> ``(host, port)``."""
    host, sep, port = str(server).rpartition(":")
    if not sep or not host or not port.isdigit():
        from recon_core.config import ConfigError
        raise ConfigError(f"server {server!r}: expected HOST:PORT, e.g. 127.0.0.1:9002")
    return host.strip("[]"), int(port)


def chain_message(chain: str | None) -> tuple[int, bytes, str]:
    """What to send for ``chain``: ``(message id, payload, description)``.

    An existing file is sent as its XML text (CONFIG_TEXT, like ``-C``); a bare name such
    as ``default.xml`` names a chain on the server (CONFIG_FILE, like ``-c``); None sends
    the repository's deployment chain ``chains/rtcine_connect.xml`` (to a Gadgetron: handed on to the
    ``rtcine serve`` on port 18000; to an ``rtcine serve``: its realtime preset)."""
    if chain is None:
        if not os.path.isfile(DEFAULT_CHAIN):
            raise FileNotFoundError(f"no chain given and the default {DEFAULT_CHAIN} is missing: pass --chain")
        chain = DEFAULT_CHAIN
    if os.path.isfile(chain):
        with open(chain, "rb") as f:
            text = f.read()
        try:
            ET.fromstring(text)
        except ET.ParseError as exc:
            raise ValueError(f"chain {chain}: not well-formed XML: {exc}") from None
        return CONFIG_TEXT, struct.pack("<I", len(text)) + text, f"local chain {chain}"
    if os.sep in chain or (os.altsep and os.altsep in chain):
        raise FileNotFoundError(f"chain {chain}: no such file")
    name = chain.encode("utf-8")
    if len(name) >= _CONFIG_FILE_SIZE:
        raise ValueError(f"chain name {chain!r} is too long for a CONFIG_FILE message")
    return CONFIG_FILE, name + b"\0" * (_CONFIG_FILE_SIZE - len(name)), f"server chain {chain}"


def chain_properties(chain: str | None) -> dict:
    """The ``<property name=... value=...>`` of a local chain's ``<external><configuration>``
    (empty for a server-side chain name)."""
    chain = DEFAULT_CHAIN if chain is None else chain
    if not os.path.isfile(chain):
        return {}
    props = {}
    for external in ET.parse(chain).getroot().iter("external"):
        conf = external.find("configuration")
        if conf is not None:
            props.update({p.get("name"): p.get("value", "") for p in conf.iter("property")})
    return props


def _int(value, default: int) -> int:
    try:
        return int(str(value).strip()) or default
    except (TypeError, ValueError):
        return default


class _Receiver(threading.Thread):
    """Read the server's messages until CLOSE; stamp every image with its arrival time."""

    def __init__(self, rfile, on_image):
        super().__init__(daemon=True, name="rtcine-client-reader")
        self.rfile = rfile
        self.on_image = on_image
        self.texts: list[str] = []
        self.other = 0
        self.closed = False
        self.error: BaseException | None = None

    def run(self):
        try:
            for item in ismrmrd.ProtocolDeserializer(self.rfile).deserialize():
                now = time.perf_counter()
                if isinstance(item, ismrmrd.Image):
                    self.on_image(item, now)
                elif isinstance(item, str):
                    self.texts.append(str(item))
                    log.warning("server: %s", item)
                else:
                    self.other += 1
            self.closed = True
        except BaseException as exc:  # reported in the summary
            self.error = exc


def _send_items(dset):
    """Acquisitions in file order with the file's waveforms merged in by time stamp
    (waveform before an acquisition of a later time stamp), as the Gadgetron client does."""
    try:
        n_wav = dset.number_of_waveforms()
    except LookupError:     # the file has no waveform data set
        n_wav = 0
    waves = (dset.read_waveform(j) for j in range(n_wav))
    wav = next(waves, None)
    for i in range(dset.number_of_acquisitions()):
        acq = dset.read_acquisition(i)
        while wav is not None and wav.time_stamp < acq.acquisition_time_stamp:
            yield wav
            wav = next(waves, None)
        yield acq
    while wav is not None:
        yield wav
        wav = next(waves, None)


def _prepare_stream(dset, protocol, ordering, plan, framing: ChainStats, min_partial: float, counts: dict):
    """Everything to send, ready before the clock starts: ``(items, blobs, closers)`` with the
    file's items in sending order (:func:`_send_items`), each one's serialized message, and
    for each frame ``(slice, index)`` the position of the item that closes it (as the chain
    cuts frames: gadgets.frames on what is sent). Counts noise scans, spokes and waveforms
    into ``counts`` and the framing into ``framing``."""
    import io

    items = list(_send_items(dset))
    buffer = io.BytesIO()
    ser = ismrmrd.ProtocolSerializer(buffer)
    blobs = []
    for item in items:
        ser.serialize(item)
        blobs.append(buffer.getvalue())
        buffer.seek(0)
        buffer.truncate()
    shapes: dict = {}

    def imaging():
        for position, item in enumerate(items):
            if isinstance(item, ismrmrd.Waveform):
                counts["waveforms"] += 1
                continue
            if item.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
                counts["noise"] += 1
                continue
            kind = non_imaging_kind(item)
            if kind is not None:
                framing.non_imaging[kind] = framing.non_imaging.get(kind, 0) + 1
                continue
            counts["spokes"] += 1
            shape = item.data.shape
            if 0 in shape or shape != shapes.setdefault("spoke", shape):
                continue                 # the chain drops it (gadgets/validate.py): no frame counts it
            setattr(item, ARRIVAL, float(position + 1))      # frame.arrival: which item closed it
            yield item

    closers = {}
    for framed in frame_buffer(imaging(), protocol, ordering, plan, stats=framing, min_partial_fraction=min_partial):
        if isinstance(framed, Frame):
            closers[(framed.slice, framed.index)] = int(framed.arrival) - 1
    return items, blobs, closers


def _close(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def replay_to_server(path: str, server: str, chain: str | None = None, out: str | None = None,
                     realtime: bool = False, speed: float = 1.0, timeout: float = 600.0) -> dict:
    """Send the ISMRMRD file ``path`` through ``chain`` on the Gadgetron at ``server``
    ("HOST:PORT"); write the images to ``out`` (group ``images``, with the file's header).

    ``realtime`` paces acquisitions by their time stamps (``speed`` x scanner pace).
    ``timeout`` bounds any single wait on the socket. Returns the summary dictionary of
    :func:`gadgets.replay.replay` (same keys, so ``format_summary`` prints it), plus
    ``server``, ``chain``, ``frame_latencies_ms`` (per received frame image, by index)
    and ``chain_latency_ms`` (the chain's own latency meta, spoke arrival -> image ready).
    """
    host, port = parse_server(server)
    msg_id, payload, chain_desc = chain_message(chain)
    props = chain_properties(chain)
    dset = open_dataset(path)
    raw_header = dset.read_xml_header()
    raw_header = raw_header if isinstance(raw_header, bytes) else raw_header.encode("utf-8")
    try:
        protocol = protocol_from_header(read_header(dset))
    except HeaderError as exc:
        log.warning("%s: %s; frames are counted with %d spokes", path, exc, DEFAULT_SPOKES_PER_FRAME)
        protocol = None
    spf_prop, stride_prop = _int(props.get("spokes_per_frame"), 0), _int(props.get("frame_stride"), 0)
    if protocol is not None:
        plan = frame_plan(spf_prop, stride_prop, protocol)
        protocol.spokes_per_frame = plan.spokes
    else:
        spf = spf_prop or DEFAULT_SPOKES_PER_FRAME
        plan = FramePlan(spf, stride_prop or spf, "configuration" if spf_prop else "default", False, spf)
        protocol = RadialProtocol(matrix=1, samples=0, coils=0, spokes_per_frame=spf, ordering="golden",
                                  tr_ms=0.0, fov_mm=0.0)
    stride = plan.stride
    ordering = props.get("ordering") or protocol.ordering or "golden"    # only for counting frames here
    try:
        min_partial = float(props.get("min_partial_fraction", 0.5))
    except ValueError:
        min_partial = 0.5
    framing = ChainStats()              # the frames as the chain cuts them (gadgets.frames on what was sent)

    sent_at: dict[tuple, float] = {}    # (slice, frame index) -> time its last spoke was written
    received: dict[tuple, float] = {}   # (slice, image_index - 1) -> arrival time
    images: list = []
    lock = threading.Lock()

    def on_image(img, now):
        with lock:
            images.append(img)
            head = img.getHead()
            received.setdefault((head.slice, head.image_index - 1), now)

    counts = {"noise": 0, "spokes": 0, "waveforms": 0}
    lags: list[float] = []              # paced: how late this emulator had each spoke ready (s)
    errors: list[str] = []
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        dset.close()
        raise ServerError(f"cannot connect to Gadgetron at {host}:{port}: {exc}") from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    wfile, rfile = sock.makefile("wb"), sock.makefile("rb")
    receiver = _Receiver(rfile, on_image)
    receiver.start()
    log.info("sending %s to %s:%d with the %s", path, host, port, chain_desc)
    # the whole scan is read, serialized and framed before the clock starts, as a scanner has
    # its data in hand: the paced loop below only sleeps and writes, so on a busy machine this
    # emulator does not lag its own pace (its lag is still measured: sender_lag_ms)
    try:
        items, blobs, closers = _prepare_stream(dset, protocol, ordering, plan, framing, min_partial, counts)
    finally:
        dset.close()
    sent_time: dict[int, float] = {}
    t0 = time.perf_counter()
    try:
        ser = ismrmrd.ProtocolSerializer(wfile)
        wfile.write(struct.pack("<H", msg_id) + payload)
        wfile.write(struct.pack("<HI", HEADER, len(raw_header)) + raw_header)
        wfile.flush()
        # paced() stamps each acquisition with its due time (the frames were cut already)
        for position, item in enumerate(paced(items, TICK_SECONDS, speed) if realtime else items):
            ready = time.perf_counter()           # paced: the scanner has the spoke now; the write may block
            sock.sendall(blobs[position])
            if isinstance(item, ismrmrd.Acquisition):
                # a frame's clock starts when its last spoke is out or, paced, when the scanner had it
                # (its due time): a scanner does not wait for a server that is not reading (start-up,
                # backlog), so a blocked write and the backlog behind it count
                if realtime:
                    due = getattr(item, ARRIVAL)
                    lags.append(ready - due)
                    sent_time[position] = min(due, ready)
                else:
                    sent_time[position] = time.perf_counter()
        ser.close()
    except OSError as exc:  # the server went away (broken pipe, reset) or stopped reading (timeout)
        errors.append(f"sending stopped: {type(exc).__name__}: {exc}")
        log.error("sending to %s:%d stopped: %s", host, port, exc)
    except BaseException:
        _close(sock)
        raise
    sent_at.update({key: sent_time[p] for key, p in closers.items() if p in sent_time})
    receiver.join(timeout)
    wall = time.perf_counter() - t0
    if receiver.is_alive():
        errors.append(f"no CLOSE from the server within {timeout:.0f} s")
    elif receiver.error is not None and not isinstance(receiver.error, EOFError):
        errors.append(f"receiving: {type(receiver.error).__name__}: {receiver.error}")
    elif receiver.error is not None:
        errors.append("the server closed the connection without CLOSE")
    errors.extend(receiver.texts)
    _close(sock)

    with lock:
        images = sorted(images, key=lambda i: (i.getHead().slice, i.getHead().image_index))
        arrivals = dict(received)
    if out:
        writer = open_output(out, path)
        try:
            writer.write_xml_header(raw_header.decode("utf-8"))
            for img in images:
                writer.append_image(OUTPUT_GROUP, img)
        finally:
            writer.close()

    frames = framing.frames
    frame_latencies = {k: (arrivals[k] - sent_at[k]) * 1e3 for k in sorted(sent_at) if k in arrivals}
    missing = [k for k in sorted(sent_at) if k not in arrivals]
    if missing:
        log.warning("%d of %d frames got no image (first: frame %d of slice %d)", len(missing), frames,
                    missing[0][1], missing[0][0])
    def meta_floats(key):
        values = []
        for img in images:
            try:
                values.append(float(img.meta[key]))
            except (KeyError, TypeError, ValueError):
                pass
        return values

    iterations = meta_floats("rtcine_iterations")
    recon = "unknown"
    named = [str(i.meta["rtcine_recon"]) for i in images if "rtcine_recon" in i.meta.keys()]
    if named:       # the most frequent (frames far behind may have their gridding image only)
        recon = max(set(named), key=named.count)
    elif props.get("recon"):
        recon = props["recon"]
    tr_ms = protocol.tr_ms if protocol is not None else 0.0
    # the keys of a local replay's summary (ChainStats), filled from what the client saw
    summary = ChainStats().summary()
    summary.update({
        "noise_acquisitions": counts["noise"], "spokes": counts["spokes"], "frames": frames,
        "images": len(images), "partial_frames": framing.partial_frames, "dropped_spokes": framing.dropped_spokes,
        "skipped_frames": len(missing), "passed_through": receiver.other, "frames_from": framing.frames_from,
        "slices": framing.slices, "slices_ended": framing.slices_ended, "non_imaging": dict(framing.non_imaging),
        "latency_ms": latency_stats(frame_latencies.values()), "errors": errors,
    })
    if "skipped" in summary:
        summary["skipped"] = [index for _, index in missing]
    if "iterations_mean" in summary:
        summary["iterations_mean"] = float(np.mean(iterations)) if iterations else 0.0
    if "reduced_frames" in summary and iterations:
        # frames the overload guard reconstructed with fewer CG iterations than the chain asks
        from recon_core.config import ReconConfig
        full = _int(props.get("cg_iterations"), 0) or ReconConfig().cg_iterations
        summary["reduced_frames"] = sum(1 for n in iterations if n < full)
    summary.update({
        "recon": recon, "wall_s": wall, "output_fps": output_rate(received.values()),
        # paced: how far behind its own pace this emulator was when each spoke was ready to send
        # (a starved sender; a server that stops reading shows in the blocked write after it)
        "sender_lag_ms": ({"p50": float(np.percentile(lags, 50)) * 1e3, "max": float(np.max(lags)) * 1e3}
                          if lags else None),
        "acquisition_fps": 1000.0 / (tr_ms * stride) if tr_ms else float("nan"),
        "realtime": realtime, "output": out,
        # replay()'s bounded input queue sits in the server's chain here, out of sight
        "input_queue_bound": 0, "input_queue_high_water": 0,
        # client-only: where it went, per-frame latencies, the chain's own latency meta
        "server": f"{host}:{port}", "chain": chain_desc,
        "frame_latencies_ms": [frame_latencies[k] for k in sorted(frame_latencies)],
        "chain_latency_ms": latency_stats(meta_floats("rtcine_latency_ms")),
    })
    summary["images_list"] = images
    return summary
