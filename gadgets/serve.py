"""``rtcine serve``: wait as a passive Gadgetron external module on a TCP port.

Gadgetron's ``<external><connect port="P"/>`` connects to us; so do our socket tests.
Unlike ``gadgetron.external.listen`` (which binds every address and serves once), this
binds 127.0.0.1 unless another address is asked for, and serves connection after
connection, each on its own thread, until stopped.
"""
from __future__ import annotations

import logging
import socket
import threading

from gadgetron.external.connection import Connection

from .entry import handle

log = logging.getLogger("rtcine.serve")


def serve(port: int, host: str = "127.0.0.1", cfg=None, max_connections: int = 0,
          ready: threading.Event | None = None) -> None:
    """Accept connections on ``host:port`` and run the chain on each.

    ``cfg``: a ReconConfig overriding the chain XML's configuration (None: use the XML's).
    ``max_connections``: stop after this many (0: serve forever). ``ready`` is set once
    the socket listens.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, port))
    server.listen(8)
    log.info("rtcine serving on %s:%d", host, server.getsockname()[1])
    if ready is not None:
        ready.port = server.getsockname()[1]
        ready.set()
    served = 0
    threads = []
    try:
        while not max_connections or served < max_connections:
            sock, address = server.accept()
            served += 1
            log.info("connection %d from %s", served, address)
            t = threading.Thread(target=_serve_one, args=(sock, cfg, served), daemon=True,
                                 name=f"rtcine-conn-{served}")
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
    finally:
        server.close()


def _serve_one(sock, cfg, number):
    try:
        with Connection(sock) as connection:
            handle(connection, cfg)
    except Exception as exc:  # one broken connection must not stop the server
        log.error("connection %d ended with an error: %s: %s", number, type(exc).__name__, exc)
