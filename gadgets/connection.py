"""Our layer over the gadgetron-python 1.4.1 connection: closed sockets, bounds, timeouts.

gadgetron-python trusts the peer. This module, installed when :mod:`gadgets.entry` or
:mod:`gadgets.serve` is imported, makes its ``Connection`` safe to expose on a port:

- **Closed socket.** ``SocketWrapper.read`` looped on ``recv`` returning ``b""`` forever
  once the peer had closed (100% CPU in CLOSE-WAIT, seen with the real Gadgetron 4.7.2).
  Now a close in the middle of a message raises :class:`PeerClosed` naming how far the
  message got; a close *between* messages without a CLOSE message ends the stream with
  a warning.
- **Bounds.** Nothing a length field says is trusted before it is checked: the
  configuration and the header are refused above :data:`MAX_XML_BYTES`; an acquisition
  whose header claims more than :data:`MAX_ACQUISITION_ELEMENTS` samples x channels (an
  ismrmrd ``Acquisition`` allocates its arrays from its header before any data arrive),
  an image above :data:`MAX_IMAGE_ELEMENTS` or with meta above :data:`MAX_XML_BYTES`, a
  waveform above :data:`MAX_WAVEFORM_ELEMENTS`, and any single read above
  :data:`MAX_READ_BYTES` raise :class:`ProtocolError`. Data are received in chunks of at
  most 1 MiB, so a claimed size costs memory only as bytes really arrive.
- **Message ids.** The chain reads configuration (2), header (3), close (4), acquisitions
  (1008), images (1022) and waveforms (1026). An unknown id ends the stream with a
  :class:`ProtocolError` naming it (its length is unknown, so the stream cannot be
  resynchronised); gadgetron-python logged it on the root logger and ended the stream as
  if it had been closed normally. Gadgetron's compound messages (1023 ReconData, 1024
  ImageArray, 1050 AcquisitionBucket), whose readers trust nested sizes and which the
  chain cannot use, are refused the same way. A message that cannot be decoded becomes a
  :class:`ProtocolError` naming its id.
- **Timeouts.** Sockets poll every :data:`POLL_S`: a peer that reads nothing of what we
  send for ``send_timeout`` seconds (:data:`SEND_TIMEOUT_S`) raises :class:`PeerStalled`
  instead of blocking the connection's thread forever; an optional ``idle_timeout`` ends
  a connection on which nothing arrives (:class:`PeerIdle`); :func:`stop_reading` ends a
  read blocked on a silent peer from another thread.
"""
from __future__ import annotations

import ctypes
import logging
import re
import socket
import struct
import time
import xml.etree.ElementTree as ET

import ismrmrd
import ismrmrd.xsd
from gadgetron.external import constants
from gadgetron.external.connection import Connection

from recon_core.config import ConfigError
from recon_core.mrd import HeaderError

log = logging.getLogger("rtcine.connection")

#: socket poll interval (s): the granularity of timeouts and of stop_reading
POLL_S = 0.25
#: a peer that accepts none of our bytes for this long is given up (s)
SEND_TIMEOUT_S = 30.0
#: largest configuration or ISMRMRD header (and image meta) accepted (bytes)
MAX_XML_BYTES = 4 << 20
#: largest samples x channels of one acquisition (a 128-channel 16384-sample readout is 2^21)
MAX_ACQUISITION_ELEMENTS = 1 << 22
#: largest trajectory dimensions of one acquisition (ISMRMRD uses 2 or 3)
MAX_TRAJECTORY_DIMENSIONS = 8
#: largest channels x x x y x z of one image passed through
MAX_IMAGE_ELEMENTS = 1 << 25
#: largest channels x samples of one waveform
MAX_WAVEFORM_ELEMENTS = 1 << 22
#: largest single read of any message field (bytes)
MAX_READ_BYTES = 256 << 20
_CHUNK = 1 << 20

_NAMES = {constants.GADGET_MESSAGE_CONFIG: "configuration", constants.GADGET_MESSAGE_HEADER: "header",
          constants.GADGET_MESSAGE_CLOSE: "close", constants.GADGET_MESSAGE_ISMRMRD_ACQUISITION: "acquisition",
          constants.GADGET_MESSAGE_ISMRMRD_IMAGE: "image", constants.GADGET_MESSAGE_ISMRMRD_WAVEFORM: "waveform",
          constants.GADGET_MESSAGE_RECON_DATA: "ReconData", constants.GADGET_MESSAGE_IMAGE_ARRAY: "ImageArray",
          constants.GADGET_MESSAGE_BUCKET: "AcquisitionBucket", constants.GADGET_MESSAGE_TEXT: "text"}


class ProtocolError(ValueError):
    """The bytes on the connection are not a stream the chain accepts; the message says why."""


class PeerClosed(ConnectionError):
    """The other side closed the connection in the middle of a message."""


class PeerStalled(ConnectionError):
    """The other side stopped reading: nothing could be sent for ``send_timeout`` seconds."""


class PeerIdle(ConnectionError):
    """Nothing arrived for ``idle_timeout`` seconds."""


class ReadingStopped(ConnectionError):
    """:func:`stop_reading` was called while a read waited for data."""


# -- socket wrapper -------------------------------------------------------------------------

def _no_delay(sock) -> None:
    """Send small writes at once (TCP_NODELAY), as Gadgetron's own client does. A message goes
    out as several writes (id, header, attributes, data); with Nagle's algorithm on, a write
    after the first may wait for the peer's acknowledgement, which a peer that delays its
    ACKs holds back up to 40 ms. Through Gadgetron 4.7.2 on this machine it made no
    measurable difference (400 frames: the relay added 11 ms at p50 with and without)."""
    if getattr(sock, "family", None) in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:                      # not a TCP socket after all: nothing to tune
            pass


def _init(self, sock):
    self.socket = sock
    self.socket.settimeout(POLL_S)
    _no_delay(sock)
    self.idle_timeout = None
    self.send_timeout = SEND_TIMEOUT_S
    self.stopped = False
    self.stalled = False


def _read(self, nbytes: int, eof_ok: bool = False) -> bytes:
    """Read exactly ``nbytes``; ``eof_ok``: a close before the first byte returns ``b""``."""
    if nbytes > MAX_READ_BYTES:
        raise ProtocolError(f"a message field claims {nbytes} bytes; rtcine reads at most {MAX_READ_BYTES} "
                            f"bytes at once")
    chunks = []
    got = 0
    idle = getattr(self, "idle_timeout", None)
    last = time.monotonic()
    while got < nbytes:
        if getattr(self, "stopped", False):
            raise ReadingStopped(f"reading stopped after {got} of {nbytes} bytes of a message")
        try:
            chunk = self.socket.recv(min(nbytes - got, _CHUNK), socket.MSG_WAITALL)
        except TimeoutError:
            if idle and time.monotonic() - last > idle:
                raise PeerIdle(f"nothing received for {idle:g} s ({got} of {nbytes} bytes of a message "
                               f"had arrived)") from None
            continue
        if not chunk:
            if got == 0 and eof_ok:
                return b""
            raise PeerClosed(f"connection closed by the peer after {got} of {nbytes} bytes of a message")
        chunks.append(chunk)
        got += len(chunk)
        last = time.monotonic()
    return b"".join(chunks)


def _write(self, data) -> None:
    """Send all of ``data``; a peer that takes none of it for ``send_timeout`` s raises PeerStalled."""
    try:
        view = memoryview(data).cast("B")
    except TypeError:
        view = memoryview(bytes(data))
    limit = getattr(self, "send_timeout", None)
    sent = 0
    last = time.monotonic()
    while sent < len(view):
        try:
            sent += self.socket.send(view[sent:])
            last = time.monotonic()
        except TimeoutError:
            if limit and time.monotonic() - last > limit:
                self.stalled = True
                raise PeerStalled(f"the peer has read nothing for {limit:g} s: {len(view) - sent} bytes of a "
                                  f"message could not be sent (a client that stopped reading)") from None


def _close(self) -> None:
    """Send CLOSE (unless the peer stalled or is gone) and close the socket, always."""
    try:
        if not getattr(self, "stalled", False):
            self.send_timeout = min(getattr(self, "send_timeout", None) or 2.0, 2.0)
            self.write(constants.GadgetMessageIdentifier.pack(constants.GADGET_MESSAGE_CLOSE))
    except OSError as exc:
        log.debug("CLOSE not sent: %s", exc)
    finally:
        self.socket.close()


def stop_reading(connection) -> None:
    """Make a read of ``connection`` waiting for data end (within :data:`POLL_S`)."""
    wrapper = getattr(connection, "socket", None)
    if wrapper is not None:
        wrapper.stopped = True


# -- bounded readers ------------------------------------------------------------------------

class _Replay:
    """A ``read_exactly`` that first returns bytes already read, then reads the source."""

    def __init__(self, source, *prefix: bytes):
        self.source, self.prefix = source, list(prefix)

    def __call__(self, nbytes: int) -> bytes:
        if self.prefix:
            chunk = self.prefix.pop(0)
            if len(chunk) != nbytes:
                raise RuntimeError(f"reader asked for {nbytes} bytes where {len(chunk)} were read ahead")
            return chunk
        return self.source.read(nbytes)


def _header(source, cls):
    """Read one fixed-size ISMRMRD header of type ``cls``: ``(raw bytes, parsed header)``."""
    raw = source.read(ctypes.sizeof(cls))
    return raw, cls.from_buffer_copy(raw)


def _within(value: int, limit: int, claim: str, unit: str = "") -> None:
    """Refuse a message whose header claims more than ``limit`` before its payload is read."""
    if value > limit:
        raise ProtocolError(f"{claim}; rtcine accepts at most {limit}{unit}")


def read_acquisition(source) -> ismrmrd.Acquisition:
    raw, head = _header(source, ismrmrd.AcquisitionHeader)
    elements = head.number_of_samples * head.active_channels
    _within(elements, MAX_ACQUISITION_ELEMENTS, f"acquisition {head.scan_counter} claims {head.number_of_samples} "
            f"samples x {head.active_channels} channels = {elements} values")
    _within(head.trajectory_dimensions, MAX_TRAJECTORY_DIMENSIONS,
            f"acquisition {head.scan_counter} claims {head.trajectory_dimensions} trajectory dimensions")
    return ismrmrd.Acquisition.deserialize_from(_Replay(source, raw))


def read_image(source) -> ismrmrd.Image:
    raw, head = _header(source, ismrmrd.ImageHeader)
    elements = head.channels * head.matrix_size[0] * head.matrix_size[1] * head.matrix_size[2]
    _within(elements, MAX_IMAGE_ELEMENTS, f"image {head.image_index} claims {head.channels} channels x "
            f"{tuple(head.matrix_size)} = {elements} pixels")
    length_bytes = source.read(8)
    (length,) = struct.unpack("<Q", length_bytes)
    _within(length, MAX_XML_BYTES, f"image {head.image_index} claims {length} bytes of meta attributes")
    return ismrmrd.Image.deserialize_from_with_header(raw, _Replay(source, length_bytes))


def read_waveform(source) -> ismrmrd.Waveform:
    raw, head = _header(source, ismrmrd.WaveformHeader)
    _within(head.channels * head.number_of_samples, MAX_WAVEFORM_ELEMENTS,
            f"waveform claims {head.channels} channels x {head.number_of_samples} samples", " values")
    return ismrmrd.Waveform.deserialize_from(_Replay(source, raw))


def _refuse(mid):
    def reader(_source):
        raise ProtocolError(f"message id {mid} ({_NAMES.get(mid, '?')}) is not accepted: the rtcine chain takes "
                            f"acquisitions (1008), images (1022) and waveforms (1026)")
    return reader


def bounded_readers() -> dict:
    return {
        constants.GADGET_MESSAGE_CLOSE: Connection.stop_iteration,
        constants.GADGET_MESSAGE_ISMRMRD_ACQUISITION: read_acquisition,
        constants.GADGET_MESSAGE_ISMRMRD_WAVEFORM: read_waveform,
        constants.GADGET_MESSAGE_ISMRMRD_IMAGE: read_image,
        constants.GADGET_MESSAGE_IMAGE_ARRAY: _refuse(constants.GADGET_MESSAGE_IMAGE_ARRAY),
        constants.GADGET_MESSAGE_RECON_DATA: _refuse(constants.GADGET_MESSAGE_RECON_DATA),
        constants.GADGET_MESSAGE_BUCKET: _refuse(constants.GADGET_MESSAGE_BUCKET),
    }


# -- connection methods ---------------------------------------------------------------------

def _read_id(wrapper, before: str):
    raw = wrapper.read(constants.GadgetMessageIdentifier.size, eof_ok=True)
    if not raw:
        raise PeerClosed(f"the peer closed the connection before sending {before}")
    return constants.GadgetMessageIdentifier.unpack(raw)[0]


def _read_xml_message(self, expected: int, what: str) -> bytes:
    mid = _read_id(self.socket, f"the {what}")
    if mid != expected:
        raise ProtocolError(f"expected the {what} message (id {expected}), got id {mid} "
                            f"({_NAMES.get(mid, 'unknown')})")
    (length,) = constants.uint32.unpack(self.socket.read(constants.uint32.size))
    if length > MAX_XML_BYTES:
        raise ProtocolError(f"the {what} message claims {length} bytes; rtcine accepts at most {MAX_XML_BYTES}")
    return self.socket.read(length)


def _read_config(self):
    data = _read_xml_message(self, constants.GADGET_MESSAGE_CONFIG, "configuration")
    # an empty document, or only an XML declaration: what Gadgetron 4.7.2 sends for an
    # <external> inside <distributed> (its worker chain loses the <configuration>)
    if not re.sub(rb"^\s*<\?xml[^>]*\?>", b"", data.strip(b"\0 \t\r\n")).strip(b"\0 \t\r\n"):
        return None, data
    try:
        return ET.fromstring(data), data
    except ET.ParseError as exc:
        raise ConfigError(f"the chain configuration is not XML: {exc}") from None


def _read_header(self):
    data = _read_xml_message(self, constants.GADGET_MESSAGE_HEADER, "ISMRMRD header")
    try:
        return ismrmrd.xsd.CreateFromDocument(data), data
    except Exception as exc:  # pyxb raises many kinds
        text = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise HeaderError(f"the ISMRMRD header ({len(data)} bytes) is not a valid ISMRMRD XML document: "
                          f"{type(exc).__name__}: {text}") from None


def _read_item(self):
    count = getattr(self, "_rtcine_messages", 0)
    self._rtcine_messages = count + 1
    raw = self.socket.read(constants.GadgetMessageIdentifier.size, eof_ok=True)
    if not raw:
        log.warning("the peer closed the connection after %d messages without a CLOSE message: "
                    "taking it as the end of the stream", count)
        raise StopIteration()
    mid = constants.GadgetMessageIdentifier.unpack(raw)[0]
    reader = self.readers.get(mid)
    if reader is None:
        raise ProtocolError(f"unknown message id {mid} ({_NAMES.get(mid, 'not a Gadgetron message')}) as message "
                            f"{count + 1} of the stream: its length is unknown, so the stream cannot go on")
    try:
        return mid, reader(self.socket)
    except (StopIteration, ProtocolError, OSError):
        raise
    except Exception as exc:
        raise ProtocolError(f"message {count + 1} (id {mid}, {_NAMES.get(mid, '?')}) cannot be decoded: "
                            f"{type(exc).__name__}: {exc}") from exc


def harden(connection, idle_timeout: float | None = None, send_timeout: float | None = SEND_TIMEOUT_S):
    """Apply the bounded readers and the timeouts to an open ``connection`` (one made before
    :func:`install`, as ``python -m gadgetron`` does for ``<execute>``). Idempotent."""
    connection.readers.update(bounded_readers())
    wrapper = connection.socket
    if wrapper.socket.gettimeout() is None:
        wrapper.socket.settimeout(POLL_S)
    if not hasattr(wrapper, "stopped"):
        wrapper.stopped = wrapper.stalled = False
        wrapper.idle_timeout = idle_timeout
        wrapper.send_timeout = send_timeout
    return connection


def open_connection(sock, idle_timeout: float | None = None,
                    send_timeout: float | None = SEND_TIMEOUT_S) -> Connection:
    """A gadgetron ``Connection`` on ``sock`` with our readers and timeouts in force from the
    first byte (configuration and header included). On failure the socket is closed."""
    conn = Connection.__new__(Connection)
    conn.socket = Connection.SocketWrapper(sock)
    conn.socket.idle_timeout = idle_timeout
    conn.socket.send_timeout = send_timeout
    conn.readers = bounded_readers()
    conn.writers = Connection._default_writers()
    conn.raw_bytes = Connection.Struct(config=None, header=None)
    conn.filters = []
    try:
        conn.config, conn.raw_bytes.config = conn._read_config()
        conn.header, conn.raw_bytes.header = conn._read_header()
    except BaseException:
        sock.close()
        raise
    return conn


def install() -> None:
    Connection.SocketWrapper.__init__ = _init
    Connection.SocketWrapper.read = _read
    Connection.SocketWrapper.write = _write
    Connection.SocketWrapper.close = _close
    Connection._read_item = _read_item
    Connection._read_config = _read_config
    Connection._read_header = _read_header
    Connection._default_readers = staticmethod(bounded_readers)


install()
