"""Live cine viewer: a small local web server that plays the newest frames as they arrive.

    viewer = LiveViewer("127.0.0.1", 8080).start()    # or: rtcine view --port 8080
    viewer.push(image)                                 # any ismrmrd.Image, e.g. replay's sink
    print(viewer.url)                                  # open it in a browser
    viewer.stop()

Only the standard library's ``http.server`` (one thread per request) and numpy; Pillow
for the optional PNG endpoint. The page (``gadgets/viewer_page/``: ``index.html``,
``viewer.js``, ``viewer.css``, package data served from this server, nothing fetched from
elsewhere) long-polls for new frames, draws them on a canvas with its own window/level,
and shows the frame number, the reconstruction latency (meta ``rtcine_latency_ms``) and
the frame rate it actually displays.

HTTP interface (all on the viewer's address; 127.0.0.1 unless asked otherwise):

``GET /`` (``/index.html``, ``/viewer.js``, ``/viewer.css``)
    the page.
``POST /push``
    body: one ISMRMRD image as ``ismrmrd.Image.to_bytes()`` (the ISMRMRD wire layout:
    header, uint64 attribute length, meta XML, pixels), which ``Image.from_bytes`` reads
    back. Answers ``200 {"seq": n}``. This is how other processes feed ``rtcine view``;
    :class:`ViewerForwarder` does it without ever holding up a reconstruction.
``GET /api/frames?after=SEQ&wait=S``
    long poll: answers as soon as a frame newer than ``SEQ`` is held, else after ``S``
    seconds (at most 10). JSON: ``first``/``last`` sequence numbers held (-1: none),
    ``received`` (total pushed), ``history`` (bound), ``receive_fps`` and ``latest``
    (meta of the newest frame).
``GET /frame/SEQ`` (or ``/frame/latest``)
    one frame for the page: uint32 LE length n, n bytes of JSON meta (padded with spaces
    to a multiple of 4), then ``height*width`` uint16 LE pixels; value = ``offset +
    pixel * scale`` (magnitude for complex images, in the image's own units).
``GET /frame/SEQ.png``
    the frame as an 8-bit greyscale PNG, windowed by its WindowCenter/WindowWidth meta or
    by ``?center=C&width=W``.

Hook for a chain gadget: :func:`forward_to_viewer` passes a stream through unchanged and
hands every image to a :class:`ViewerForwarder` (a ``view_url`` configuration key can
switch it on), which POSTs to ``/push`` of a running ``rtcine view`` from a background
thread with a short timeout and drops frames, counted and logged, when the viewer is gone.
"""
from __future__ import annotations

import http.client
import importlib.resources
import io
import json
import logging
import queue
import socket
import struct
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import ismrmrd
import numpy as np

log = logging.getLogger("rtcine.viewer")

#: the page's files (package data in ``gadgets/viewer_page/``): URL path -> (file, content type)
PAGE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/viewer.js": ("viewer.js", "text/javascript; charset=utf-8"),
    "/viewer.css": ("viewer.css", "text/css; charset=utf-8"),
}

#: frames kept for scrubbing back (oldest dropped first)
HISTORY_FRAMES = 2000
#: and at most this many bytes of pixels (uint16), whichever bound is hit first
HISTORY_BYTES = 512 * 2**20
#: largest accepted POST /push body
MAX_PUSH_BYTES = 256 * 2**20
PUSH_CONTENT_TYPE = "application/x-ismrmrd-image"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def _meta_value(meta, key, default=None):
    if meta is None or key not in meta:
        return default
    value = meta[key]
    if isinstance(value, list):
        value = value[0] if value else default
    return value


def _meta_float(meta, key, default=None):
    try:
        return float(_meta_value(meta, key, default))
    except (TypeError, ValueError):
        return default


def page_file(name: str) -> str:
    """The text of one of the page's files, read from the installed package."""
    return importlib.resources.files("gadgets").joinpath("viewer_page", name).read_text(encoding="utf-8")


def image_magnitude(img: ismrmrd.Image) -> np.ndarray:
    """The ``(Y, X)`` float32 picture of an image: magnitude of complex pixels, root sum of
    squares over channels, the middle slice of a 3D image."""
    data = np.asarray(img.data)                    # (channels, z, y, x)
    data = data[:, data.shape[1] // 2]
    if np.iscomplexobj(data) or data.shape[0] > 1:
        mag = np.sqrt(np.sum(np.abs(data) ** 2, axis=0)) if data.shape[0] > 1 else np.abs(data[0])
    else:
        mag = data[0]
    return np.nan_to_num(np.asarray(mag, dtype=np.float32), copy=False)


def image_info(img: ismrmrd.Image) -> dict:
    """Display facts of an image from its header and meta attributes (JSON-ready)."""
    head = img.getHead()
    meta = img.meta
    frame = _meta_value(meta, "rtcine_frame")
    try:
        frame = int(frame)
    except (TypeError, ValueError):
        frame = int(head.image_index)
    latency = _meta_float(meta, "rtcine_latency_ms")
    center = _meta_float(meta, "WindowCenter")
    width = _meta_float(meta, "WindowWidth")
    return {
        "frame": frame,
        "latency_ms": latency,
        "recon": _meta_value(meta, "rtcine_recon", "") or "",
        "series": int(head.image_series_index),
        "partial": _meta_value(meta, "rtcine_partial", "0") == "1",
        "window_center": center,
        "window_width": width,
        "description": _meta_value(meta, "GADGETRON_SeqDescription", "") or "",
    }


def window_uint8(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Window/level ``values`` to uint8: ``center - width/2`` -> 0, ``center + width/2`` -> 255."""
    width = max(float(width), 1e-30)
    lo = float(center) - width / 2
    out = (np.asarray(values, dtype=np.float32) - lo) * (255.0 / width)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def default_window(values: np.ndarray) -> tuple[float, float]:
    """Centre and width showing 0 .. 99.5th percentile, as the chain's own meta does."""
    hi = float(np.percentile(values, 99.5)) if values.size else 1.0
    hi = hi if hi > 0 else float(values.max()) if values.size and values.max() > 0 else 1.0
    return hi / 2, hi


def png_bytes(u8: np.ndarray) -> bytes:
    """An 8-bit greyscale ``(Y, X)`` array as PNG bytes (Pillow)."""
    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(np.ascontiguousarray(u8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class HeldFrame:
    seq: int
    info: dict
    pixels: np.ndarray      # (Y, X) uint16
    offset: float
    scale: float
    received: float         # time.time()

    def values(self) -> np.ndarray:
        return self.offset + self.pixels.astype(np.float32) * self.scale

    def meta(self) -> dict:
        h, w = self.pixels.shape
        return dict(self.info, seq=self.seq, height=h, width=w, offset=self.offset, scale=self.scale,
                    received=self.received)

    def packed(self) -> bytes:
        text = json.dumps(self.meta()).encode()
        text += b" " * (-len(text) % 4)
        return struct.pack("<I", len(text)) + text + self.pixels.astype("<u2", copy=False).tobytes()


class FrameStore:
    """The newest frames, bounded by count and bytes; waiters are woken on every push."""

    def __init__(self, history: int = HISTORY_FRAMES, max_bytes: int = HISTORY_BYTES):
        self.history = max(1, int(history))
        self.max_bytes = int(max_bytes)
        self._frames: deque[HeldFrame] = deque()
        self._bytes = 0
        self._next_seq = 0
        self._cond = threading.Condition()
        self._closed = False
        self._times: deque[float] = deque(maxlen=64)

    @property
    def received(self) -> int:
        return self._next_seq

    def add(self, img: ismrmrd.Image) -> int:
        """Quantise the image's picture to uint16 (``offset + pixel * scale``) and keep it."""
        values = image_magnitude(img)
        info = image_info(img)
        if info["window_width"] is None or info["window_center"] is None or info["window_width"] <= 0:
            info["window_center"], info["window_width"] = default_window(values)
        lo = float(min(values.min(), 0.0)) if values.size else 0.0
        hi = float(values.max()) if values.size else 1.0
        scale = (hi - lo) / 65535.0 if hi > lo else 1.0
        pixels = np.round((values - lo) / scale).astype(np.uint16)
        with self._cond:
            frame = HeldFrame(self._next_seq, info, pixels, lo, scale, time.time())
            self._next_seq += 1
            self._frames.append(frame)
            self._bytes += pixels.nbytes
            while len(self._frames) > self.history or (self._bytes > self.max_bytes and len(self._frames) > 1):
                self._bytes -= self._frames.popleft().pixels.nbytes
            self._times.append(time.perf_counter())
            self._cond.notify_all()
            return frame.seq

    def get(self, seq: int) -> HeldFrame | None:
        with self._cond:
            if not self._frames:
                return None
            if seq < 0:
                return self._frames[-1]
            k = seq - self._frames[0].seq
            return self._frames[k] if 0 <= k < len(self._frames) else None

    def _receive_fps(self) -> float:
        t = list(self._times)
        now = time.perf_counter()
        t = [x for x in t if now - x < 3.0]
        if len(t) < 2 or now <= t[0]:
            return 0.0
        return (len(t) - 1) / (now - t[0])       # up to now: falls to 0 when frames stop

    def state(self) -> dict:
        with self._cond:
            return {
                "first": self._frames[0].seq if self._frames else -1,
                "last": self._frames[-1].seq if self._frames else -1,
                "received": self._next_seq,
                "held": len(self._frames),
                "history": self.history,
                "receive_fps": round(self._receive_fps(), 2),
                "latest": self._frames[-1].meta() if self._frames else None,
            }

    def wait(self, after: int, timeout: float) -> dict:
        """Block until a frame newer than ``after`` is held (or ``timeout`` s, or close)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._closed and (not self._frames or self._frames[-1].seq <= after):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        return self.state()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "rtcine-viewer"
    viewer: "LiveViewer"          # set on the per-server subclass

    def setup(self):
        super().setup()
        # whole responses go out at once: no Nagle / delayed-ACK stalls between header and body
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def log_message(self, fmt, *args):          # quiet: debug log only
        log.debug("%s %s", self.address_string(), fmt % args)

    def _send(self, code: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, code: int = 200) -> None:
        self._send(code, json.dumps(obj).encode(), "application/json")

    def _error(self, code: int, message: str) -> None:
        self._json({"error": message}, code)

    def do_GET(self):  # noqa: N802 (http.server naming)
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        path = url.path
        store = self.viewer.store
        try:
            if path in PAGE_FILES:
                name, ctype = PAGE_FILES[path]
                self._send(200, self.viewer.page(name), ctype)
            elif path == "/api/frames":
                after = int(query.get("after", ["-1"])[0])
                wait = min(max(float(query.get("wait", ["0"])[0]), 0.0), 10.0)
                self._json(store.wait(after, wait) if wait > 0 else store.state())
            elif path.startswith("/frame/"):
                name = path[len("/frame/"):]
                as_png = name.endswith(".png")
                name = name[:-4] if as_png else name
                seq = -1 if name == "latest" else int(name)
                frame = store.get(seq)
                if frame is None:
                    self._error(404, f"frame {name} is not held (first {store.state()['first']})")
                elif as_png:
                    center = float(query.get("center", [frame.info["window_center"]])[0])
                    width = float(query.get("width", [frame.info["window_width"]])[0])
                    self._send(200, png_bytes(window_uint8(frame.values(), center, width)), "image/png")
                else:
                    self._send(200, frame.packed(), "application/octet-stream")
            elif path == "/favicon.ico":
                self._send(204, b"", "image/x-icon")
            else:
                self._error(404, f"no such page: {path}")
        except ValueError as exc:
            self._error(400, str(exc))
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_HEAD = do_GET

    def do_POST(self):  # noqa: N802
        path = urllib.parse.urlsplit(self.path).path
        if path != "/push":
            self._error(404, f"POST to {path}: only /push takes images")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._error(411, "POST /push needs a Content-Length")
            return
        if length <= 0 or length > MAX_PUSH_BYTES:
            self._error(413, f"image of {length} bytes refused (1 .. {MAX_PUSH_BYTES})")
            self.close_connection = True
            return
        body = self.rfile.read(length)
        try:
            img = ismrmrd.Image.from_bytes(body)
            seq = self.viewer.push(img)
        except Exception as exc:  # malformed bytes: say so, keep serving
            log.warning("POST /push from %s: not an ISMRMRD image (%s: %s)", self.address_string(),
                        type(exc).__name__, exc)
            self._error(400, f"body is not an ISMRMRD image (ismrmrd.Image.to_bytes()): {exc}")
            return
        self._json({"seq": seq})


class LiveViewer:
    """The viewer server. ``port=0`` picks a free port (see :attr:`url` after :meth:`start`)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, history: int = HISTORY_FRAMES,
                 title: str = "rtcine live cine", max_bytes: int = HISTORY_BYTES):
        self.host = host
        self.port = int(port)
        self.title = title
        self.store = FrameStore(history, max_bytes)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._pages: dict[str, bytes] = {}

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def received(self) -> int:
        return self.store.received

    def page(self, name: str = "index.html") -> bytes:
        """A file of the page (``index.html``, ``viewer.js``, ``viewer.css``), with the
        viewer's title in place of ``__TITLE__``."""
        if name not in self._pages:
            self._pages[name] = page_file(name).replace("__TITLE__", self.title).encode()
        return self._pages[name]

    def push(self, image: ismrmrd.Image) -> int:
        """Show ``image`` (any ``ismrmrd.Image``); returns its sequence number."""
        return self.store.add(image)

    __call__ = push           # a LiveViewer is itself a sink: replay(..., sink=viewer)

    def start(self) -> "LiveViewer":
        if self._server is not None:
            return self
        if self.host not in LOCAL_HOSTS:
            log.warning("live viewer bound to %s: anyone who reaches this address can see the images "
                        "and push to it", self.host)
        handler = type("Handler", (_Handler,), {"viewer": self})
        cls = _Server6 if ":" in self.host else _Server
        self._server = cls((self.host, self.port), handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="rtcine-viewer", daemon=True)
        self._thread.start()
        log.info("live viewer at %s", self.url)
        return self

    def stop(self) -> None:
        self.store.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "LiveViewer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ViewerForwarder:
    """Send images to a running viewer (``rtcine view``) without holding up the caller.

    :meth:`push` only puts the image on a small queue; a daemon thread POSTs it to
    ``URL/push`` with a short ``timeout``. When the queue is full (viewer slower than the
    reconstruction) the oldest waiting image is dropped; when the viewer does not answer,
    images are dropped for ``retry_s`` seconds before the next try. Every drop is counted
    (:attr:`dropped`), and the first of each outage is logged.
    """

    def __init__(self, url: str, timeout: float = 0.5, queue_size: int = 32, retry_s: float = 2.0):
        parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"viewer URL {url!r}: expected http://HOST:PORT/")
        self.url = f"http://{parts.netloc}/"
        self._host, self._port = parts.hostname, parts.port or 80
        self.timeout = float(timeout)
        self.retry_s = float(retry_s)
        self.sent = 0
        self.dropped = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None
        self._down_until = 0.0
        self._down = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="rtcine-viewer-forwarder", daemon=True)
        self._thread.start()

    def push(self, image: ismrmrd.Image) -> None:
        """Queue ``image`` for the viewer; never blocks."""
        if self._closed:
            return
        try:
            self._queue.put_nowait(image)
            return
        except queue.Full:
            pass
        try:                               # drop the oldest waiting image, keep the newest
            self._queue.get_nowait()
            self._count_drop("viewer is slower than the reconstruction")
        except queue.Empty:
            pass
        try:
            self._queue.put_nowait(image)
        except queue.Full:
            self._count_drop("viewer is slower than the reconstruction")

    __call__ = push

    def _count_drop(self, reason: str) -> None:
        with self._lock:
            self.dropped += 1
            first = self.dropped == 1
        if first:
            log.warning("viewer %s: dropping images (%s); counting them", self.url, reason)

    def _post(self, body: bytes) -> None:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        try:
            self._conn.request("POST", "/push", body=body,
                               headers={"Content-Type": PUSH_CONTENT_TYPE})
            resp = self._conn.getresponse()
            resp.read()
        except Exception:
            self._conn.close()
            self._conn = None
            raise
        if resp.status != 200:
            raise OSError(f"HTTP {resp.status} from POST /push")

    def _run(self) -> None:
        while True:
            image = self._queue.get()
            if image is None:
                self._queue.task_done()
                break
            try:
                if time.monotonic() < self._down_until:
                    with self._lock:
                        self.dropped += 1
                    continue
                try:
                    self._post(image.to_bytes())
                    self.sent += 1
                    if self._down:
                        log.warning("viewer %s answers again (%d images dropped so far)", self.url, self.dropped)
                        self._down = False
                except Exception as exc:
                    with self._lock:
                        self.dropped += 1
                    self._down_until = time.monotonic() + self.retry_s
                    if not self._down:
                        log.warning("viewer %s unreachable (%s: %s): dropping images, retrying every %.0f s "
                                    "(%d dropped so far)", self.url, type(exc).__name__, exc, self.retry_s,
                                    self.dropped)
                        self._down = True
            finally:
                if image is not None:
                    self._queue.task_done()

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait up to ``timeout`` s until the queue is empty; True if it is."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (for up to ``timeout`` s), then stop the thread."""
        if self._closed:
            return
        self.flush(timeout)
        self._closed = True
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout=timeout)
        if self._conn is not None:
            self._conn.close()
        if self.dropped:
            log.warning("viewer %s: %d images sent, %d dropped", self.url, self.sent, self.dropped)

    def __enter__(self) -> "ViewerForwarder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def forward_to_viewer(items, url_or_forwarder):
    """Chain gadget: yield every item unchanged, and hand each ``ismrmrd.Image`` to a viewer.

    ``url_or_forwarder`` is ``http://HOST:PORT/`` of a running ``rtcine view`` (a
    :class:`ViewerForwarder` is made and closed here) or a forwarder/callable of your own.
    Place it after the images are made, e.g. in ``run_chain`` when ``cfg.view_url`` is set.
    """
    own = isinstance(url_or_forwarder, str)
    forward = ViewerForwarder(url_or_forwarder) if own else url_or_forwarder
    try:
        for item in items:
            if isinstance(item, ismrmrd.Image):
                forward(item)
            yield item
    finally:
        if own:
            forward.close()

