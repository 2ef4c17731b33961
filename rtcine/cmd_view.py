"""``rtcine view``: the live cine viewer as a standalone server.

    rtcine view [--port 8080] [--host 127.0.0.1] [--history 2000]

Open the printed URL in a browser. Images reach it from other processes as HTTP
``POST /push`` of ``ismrmrd.Image.to_bytes()`` (``gadgets.viewer.ViewerForwarder`` does
that without holding up a reconstruction), or, in one process, from
``rtcine replay IN.h5 --view``.
"""
from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("rtcine.view")


def serve_until_interrupted(viewer, message: str | None = None, stop: threading.Event | None = None) -> None:
    """Keep ``viewer`` serving until Ctrl-C, SIGTERM (or ``stop`` is set), then stop it."""
    stop = stop or threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        if message:          # inside the try: a Ctrl-C right after the message must stop cleanly
            print(message, flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        viewer.stop()
        print(f"viewer stopped ({viewer.received} images received)", flush=True)


def cmd_view(args) -> int:
    from gadgets.viewer import LiveViewer

    try:
        viewer = LiveViewer(args.host, args.port, history=args.history).start()
    except OSError as exc:
        print(f"rtcine view: cannot listen on {args.host}:{args.port}: {exc}")
        return 2
    serve_until_interrupted(
        viewer,
        f"live viewer: {viewer.url}  (open it in a browser; Ctrl-C or SIGTERM stops)\n"
        f"push images: POST {viewer.url}push with ismrmrd.Image.to_bytes(), "
        f"or gadgets.viewer.ViewerForwarder('{viewer.url}').push(image)")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "view", help="live viewer: a local web page that plays the cine as images arrive",
        description="Serve a web page that plays the newest frames as they arrive (frame number, latency, "
                    "displayed frame rate, window/level, pause, scrub back). Other processes push images "
                    "with HTTP POST /push (body: ismrmrd.Image.to_bytes()), e.g. gadgets.viewer.ViewerForwarder.")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--history", type=int, default=2000, help="frames kept for scrubbing back (default 2000)")
    p.set_defaults(func=cmd_view)
