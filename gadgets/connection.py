"""A fix for the gadgetron-python 1.4.1 connection: reading from a closed socket.

``gadgetron.external.Connection.SocketWrapper.read`` loops ``while len(bytes) < nbytes``
on ``recv``, which returns ``b""`` forever once the peer has closed: a Gadgetron server
or client that goes away mid-message leaves the module spinning at 100% CPU in
CLOSE-WAIT (seen with the real Gadgetron 4.7.2). :func:`install` replaces that method
with one that raises :class:`ConnectionError` naming how far the message got; importing
:mod:`gadgets.entry` or :mod:`gadgets.serve` installs it.
"""
from __future__ import annotations

import socket

from gadgetron.external.connection import Connection


class PeerClosed(ConnectionError):
    """The other side closed the connection in the middle of a message."""


def _read(self, nbytes: int) -> bytes:
    chunks = []
    got = 0
    while got < nbytes:
        chunk = self.socket.recv(nbytes - got, socket.MSG_WAITALL)
        if not chunk:
            raise PeerClosed(f"connection closed by the peer after {got} of {nbytes} bytes of a message")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def install() -> None:
    Connection.SocketWrapper.read = _read


install()
