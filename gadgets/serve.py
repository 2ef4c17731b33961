"""``rtcine serve``: wait as a passive Gadgetron external module on a TCP port.

Gadgetron's ``<external><connect port="P"/>`` connects to us; so do our socket tests.
Unlike ``gadgetron.external.listen`` (which binds every address and serves once), this
binds 127.0.0.1 unless another address is asked for, and serves connection after
connection, each on its own thread, until stopped.

One connection cannot hold up another: each has its own thread, its reads are bounded
(gadgets/connection.py: sizes checked before anything is allocated), a client that stops
reading our images is given up after ``send_timeout`` seconds, and one that sends nothing
for ``idle_timeout`` seconds (the configuration and header included) is closed. A
connection that fails is logged (at ERROR, with the cause) and closed; the server goes on.
Before it listens, the server warms up (:func:`gadgets.recon.warm_up`: ESPIRiT, and the
reconstructor of its fixed configuration or, without one, of the default preset, which the
deployment chain names), so that the first scan does not pay for imports and first calls.

Readiness: once warm and listening, the server writes ``ready_file`` (``HOST PORT PID``; removed
when it stops) and, under systemd (``Type=notify``, ``$NOTIFY_SOCKET``), sends ``READY=1``.
``rtcine health --port P [--ready-file F]`` checks both without connecting: a connection
would be a stream to Gadgetron's protocol, and a probe that opens and closes one is logged as
a refused stream.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time

from .connection import SEND_TIMEOUT_S, open_connection
from .entry import handle
from .recon import warm_up

log = logging.getLogger("rtcine.serve")


#: a connection on which nothing arrives for this long is closed (s)
IDLE_TIMEOUT_S = 600.0


#: connections served at once by default (stuck peers hold a slot until their idle or send
#: timeout frees it; a real-time chain wants ~2 cores)
MAX_CONCURRENT = 8


def serve(port: int, host: str = "127.0.0.1", cfg=None, max_connections: int = 0,
          ready: threading.Event | None = None, idle_timeout: float | None = IDLE_TIMEOUT_S,
          send_timeout: float | None = SEND_TIMEOUT_S, max_concurrent: int = MAX_CONCURRENT,
          ready_file: str | None = None) -> None:
    """Accept connections on ``host:port`` and run the chain on each.

    ``cfg``: a ReconConfig overriding the chain XML's configuration (None: use the XML's).
    ``max_connections``: stop after this many (0: serve forever). ``ready`` is set once
    the socket listens (``ready.port``, ``ready.address``: where). ``idle_timeout``: close
    a connection on which nothing arrives for this many seconds (None: never);
    ``send_timeout``: give up on a client that reads nothing for this many seconds.
    ``max_concurrent``: a connection arriving while this many are being served is refused
    (closed at once, logged at ERROR; 0: no limit), so that scans beyond what the machine
    can reconstruct in time fail visibly instead of slowing every scan down. ``ready_file``:
    written once the server is warm and listens, removed when it stops.
    """
    if cfg is None:
        from recon_core.config import ReconConfig
        warm_up(ReconConfig.from_mapping({}))       # the default preset (the deployment chain's)
    else:
        warm_up(cfg)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, port))
    server.listen(8)
    log.info("rtcine serving on %s:%d", host, server.getsockname()[1])
    if ready is not None:
        ready.port = server.getsockname()[1]
        ready.address = server.getsockname()
        ready.set()
    served = 0
    threads = []
    try:
        _announce_ready(ready_file, host, server.getsockname()[1])
        while not max_connections or served < max_connections:
            sock, address = server.accept()
            accepted = time.perf_counter()       # the stream's clock starts here (feeder.stream_clock)
            served += 1
            threads = [x for x in threads if x.is_alive()]
            if max_concurrent and len(threads) >= max_concurrent:
                log.error("connection %d from %s refused: %d connections are being served (max_concurrent %d)",
                          served, address, len(threads), max_concurrent)
                sock.close()
                continue
            log.info("connection %d from %s", served, address)
            t = threading.Thread(target=_serve_one, args=(sock, cfg, served, idle_timeout, send_timeout, accepted),
                                 daemon=True, name=f"rtcine-conn-{served}")
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
    finally:
        server.close()
        if ready_file:
            try:
                os.remove(ready_file)
            except OSError:
                pass


def _announce_ready(ready_file: str | None, host: str, port: int) -> None:
    """Say that the server is warm and listens: ``ready_file`` (written whole, then renamed
    into place) and systemd's ``READY=1`` when ``$NOTIFY_SOCKET`` is set."""
    if ready_file:
        tmp = f"{ready_file}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{host} {port} {os.getpid()}\n")
        os.replace(tmp, ready_file)
    target = os.environ.get("NOTIFY_SOCKET")
    if target:
        address = "\0" + target[1:] if target.startswith("@") else target
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto(b"READY=1\nSTATUS=warm, listening on %s:%d" % (host.encode(), port), address)
        except OSError as exc:
            log.warning("could not notify systemd at %s: %s", target, exc)
    log.info("rtcine serve ready on %s:%d", host, port)


def _serve_one(sock, cfg, number, idle_timeout=IDLE_TIMEOUT_S, send_timeout=SEND_TIMEOUT_S, accepted=None):
    """Serve one connection. ``accepted``: when it was accepted (``time.perf_counter()``): the
    stream's time stamps are anchored there, so spokes that wait in the socket while the
    connection is set up count as a backlog the overload policy works off, not as on time."""
    try:
        try:
            connection = open_connection(sock, idle_timeout, send_timeout)
        except Exception as exc:
            # before the chain: a bad configuration or header, or a peer that went away
            log.error("connection %d refused: %s: %s", number, type(exc).__name__, exc)
            return
        with connection:
            handle(connection, cfg, stream_start=accepted)
    except Exception as exc:  # one broken connection must not stop the server
        if getattr(exc, "rtcine_logged", False):
            log.info("connection %d closed after the error above", number)
        else:
            log.error("connection %d ended with an error: %s: %s", number, type(exc).__name__, exc)
    finally:
        sock.close()
