"""The bounded readers of gadgets/connection.py: valid messages come through whole; a header
that claims more than rtcine accepts is refused before its payload is read, naming the claim."""
import io

import ismrmrd
import numpy as np
import pytest

from gadgets import connection as conn


class Source:
    """A ``read(n)`` source over bytes that fails if asked for more than it holds."""

    def __init__(self, data: bytes):
        self.f = io.BytesIO(data)

    def read(self, nbytes: int) -> bytes:
        chunk = self.f.read(nbytes)
        if len(chunk) != nbytes:
            raise EOFError(f"asked for {nbytes} bytes, {len(chunk)} left")
        return chunk


def _bytes(item) -> bytes:
    buf = io.BytesIO()
    item.serialize_into(buf.write)
    return buf.getvalue()


def test_valid_messages_round_trip():
    acq = ismrmrd.Acquisition.from_array(np.arange(16, dtype=np.complex64).reshape(2, 8))
    img = ismrmrd.Image.from_array(np.arange(16, dtype=np.complex64).reshape(4, 4))
    wave = ismrmrd.Waveform.from_array(np.arange(10, dtype=np.uint32).reshape(2, 5))
    np.testing.assert_array_equal(conn.read_acquisition(Source(_bytes(acq))).data, acq.data)
    np.testing.assert_array_equal(conn.read_image(Source(_bytes(img))).data, img.data)
    np.testing.assert_array_equal(conn.read_waveform(Source(_bytes(wave))).data, wave.data)


@pytest.mark.parametrize("kind", ["image", "waveform", "meta"])
def test_oversized_claims_are_refused_before_the_payload(kind):
    if kind == "image":
        head = ismrmrd.ImageHeader()
        head.matrix_size[0], head.matrix_size[1], head.matrix_size[2], head.channels = 65535, 65535, 1, 64
        data, reader, claim = bytes(head), conn.read_image, "image 0 claims 64 channels x (65535, 65535, 1)"
    elif kind == "meta":
        head = ismrmrd.ImageHeader()
        head.matrix_size[0], head.matrix_size[1], head.matrix_size[2], head.channels = 4, 4, 1, 1
        data = bytes(head) + (2 ** 40).to_bytes(8, "little")
        reader, claim = conn.read_image, f"image 0 claims {2 ** 40} bytes of meta attributes"
    else:
        head = ismrmrd.WaveformHeader()
        head.channels, head.number_of_samples = 65535, 65535
        data, reader, claim = bytes(head), conn.read_waveform, "waveform claims 65535 channels x 65535 samples"
    with pytest.raises(conn.ProtocolError, match="rtcine accepts at most") as err:
        reader(Source(data))                 # the source holds the header only: no payload is read
    assert claim in str(err.value)


def test_connection_sockets_send_small_writes_at_once():
    """Each image goes out as several writes; Nagle's algorithm would hold the later ones
    until the peer's (delayed, up to 40 ms) ACK. Every connection socket has TCP_NODELAY."""
    import socket

    from gadgetron.external.connection import Connection

    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    try:
        wrapper = Connection.SocketWrapper(accepted)
        assert wrapper.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        for s in (client, accepted, server):
            s.close()
