"""Live cine viewer: a small local web server that plays the newest frames as they arrive.

    viewer = LiveViewer("127.0.0.1", 8080).start()    # or: rtcine view --port 8080
    viewer.push(image)                                 # any ismrmrd.Image, e.g. replay's sink
    print(viewer.url)                                  # open it in a browser
    viewer.stop()

Only the standard library's ``http.server`` (one thread per request) and numpy; Pillow
for the optional PNG endpoint. The page (inline HTML/JS/CSS, nothing fetched from
elsewhere) long-polls for new frames, draws them on a canvas with its own window/level,
and shows the frame number, the reconstruction latency (meta ``rtcine_latency_ms``) and
the frame rate it actually displays.

HTTP interface (all on the viewer's address; 127.0.0.1 unless asked otherwise):

``GET /``
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
            if path in ("/", "/index.html"):
                self._send(200, self.viewer.page(), "text/html; charset=utf-8")
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
        self._page: bytes | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def received(self) -> int:
        return self.store.received

    def page(self) -> bytes:
        if self._page is None:
            self._page = PAGE.replace("__TITLE__", self.title).encode()
        return self._page

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


PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
  :root { --fg: #e8e8e8; --dim: #9aa0a6; --accent: #ffd54a; --live: #35d07f; --warn: #ff8a65; }
  * { box-sizing: border-box; }
  html, body { margin: 0; height: 100%; background: #000; color: var(--fg);
               font: 14px/1.35 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
  body { display: flex; flex-direction: column; }
  header { display: flex; align-items: baseline; gap: 16px; padding: 6px 14px; background: #111;
           border-bottom: 1px solid #222; }
  header h1 { font-size: 15px; margin: 0; font-weight: 600; }
  #status { color: var(--dim); font-size: 13px; }
  #status.live::before { content: "\25CF  "; color: var(--live); }
  #status.error { color: var(--warn); }
  main { flex: 1; display: flex; align-items: center; justify-content: center; min-height: 0; padding: 6px; }
  #stage { position: relative; display: inline-block; line-height: 0; }
  #cine { display: block; height: min(calc(100vh - 150px), 96vw); width: auto; background: #000;
          image-rendering: auto; cursor: crosshair; touch-action: none; }
  .ov { position: absolute; line-height: 1.3; font: 600 15px/1.3 ui-monospace, "DejaVu Sans Mono", Menlo,
        Consolas, monospace; color: var(--fg); text-shadow: 0 0 3px #000, 0 0 2px #000; pointer-events: none;
        white-space: pre; }
  #ov-tl { top: 8px; left: 10px; } #ov-tr { top: 8px; right: 10px; text-align: right; }
  #ov-bl { bottom: 8px; left: 10px; } #ov-br { bottom: 8px; right: 10px; text-align: right; }
  .big { font-size: 20px; color: var(--accent); }
  .late { color: var(--warn); }
  #badge.live { color: var(--live); } #badge.paused { color: var(--accent); }
  #waiting { position: absolute; inset: 0; display: flex; align-items: center; justify-content: center;
             text-align: center; color: var(--dim); font: 15px/1.5 system-ui, sans-serif; padding: 20px;
             line-height: 1.5; }
  #waiting code { color: var(--fg); }
  footer { display: grid; grid-template-columns: auto 1fr auto; gap: 6px 14px; align-items: center;
           padding: 8px 14px; background: #111; border-top: 1px solid #222; }
  footer .row { display: contents; }
  button { background: #2a2a2a; color: var(--fg); border: 1px solid #444; border-radius: 4px;
           padding: 4px 12px; font: inherit; cursor: pointer; min-width: 84px; }
  button:hover { background: #363636; }
  button.on { border-color: var(--accent); color: var(--accent); }
  input[type=range] { width: 100%; accent-color: var(--accent); }
  .lbl { color: var(--dim); font-size: 13px; white-space: nowrap; }
  .val { font-variant-numeric: tabular-nums; min-width: 130px; text-align: right; }
  .wl { display: flex; gap: 10px; align-items: center; }
  .wl input { width: 180px; }
  .help { color: #6f757b; font-size: 12px; }
</style>
</head>
<body>
<header>
  <h1>__TITLE__</h1>
  <span id="status">connecting&hellip;</span>
  <span class="help" style="margin-left:auto">space: pause/live &middot; &larr;/&rarr;: step &middot;
    drag on image: window (&harr;) / level (&varr;) &middot; A: auto window</span>
</header>
<main>
  <div id="stage">
    <canvas id="cine" width="256" height="256"></canvas>
    <div class="ov" id="ov-tl"><span id="recon">rtcine</span>
<span id="series"></span></div>
    <div class="ov" id="ov-tr"><span class="big">Frame <span id="frame-no">&ndash;</span></span>
Latency <span id="latency">&ndash;</span> ms
Display <span id="fps">&ndash;</span> fps
Received <span id="rx-fps">&ndash;</span> fps</div>
    <div class="ov" id="ov-bl">W <span id="ov-w">&ndash;</span>  L <span id="ov-l">&ndash;</span>
<span id="dims"></span></div>
    <div class="ov" id="ov-br"><span id="badge" class="live">LIVE</span>
<span id="pos"></span></div>
    <div id="waiting">Waiting for images&hellip;<br>
      run <code>rtcine replay IN.h5 --view</code>, or push to this viewer
      (<code>POST /push</code>, <code>ViewerForwarder</code>)</div>
  </div>
</main>
<footer>
  <div class="row">
    <button id="pause" title="space">Pause</button>
    <input id="scrub" type="range" min="0" max="0" value="0" step="1" aria-label="received frames">
    <span class="val" id="scrub-val">&ndash;</span>
  </div>
  <div class="row">
    <button id="auto" title="A">Auto W/L</button>
    <div class="wl">
      <span class="lbl">Window</span><input id="win" type="range" min="0" max="1000" value="500" step="1">
      <span class="lbl">Level</span><input id="lev" type="range" min="0" max="1000" value="250" step="1">
      <button id="step-back" title="&larr;">&#9664; Step</button>
      <button id="step-fwd" title="&rarr;">Step &#9654;</button>
    </div>
    <span class="val"><span id="wl-val">&ndash;</span></span>
  </div>
</footer>
<script>
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const LATENCY_TARGET_MS = 100;            // useful on a console below about 100 ms
  const canvas = $("cine"), ctx = canvas.getContext("2d");
  const S = {
    first: -1, last: -1, received: 0,       // what the server holds
    shown: null,                            // the frame on screen {meta, pix}
    paused: false, drawn: 0, drawTimes: [],
    wl: null, range: 1,                     // {c, w} in image units; slider range
    cache: new Map(), inflight: null, online: false,
  };
  window.rtcineViewer = S;                  // for tests and the console

  function parseFrame(buf) {
    const n = new DataView(buf).getUint32(0, true);
    const meta = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
    const pix = new Uint16Array(buf, 4 + n, meta.width * meta.height);
    return { meta, pix };
  }

  async function loadFrame(seq) {
    if (S.cache.has(seq)) return S.cache.get(seq);
    const r = await fetch("/frame/" + seq, { cache: "no-store" });
    if (!r.ok) return null;
    const f = parseFrame(await r.arrayBuffer());
    S.cache.set(seq, f);
    if (S.cache.size > 64) S.cache.delete(S.cache.keys().next().value);
    return f;
  }

  function fmt(v, d) { return (v === null || v === undefined || !isFinite(v)) ? "\u2013" : v.toFixed(d); }
  function sig(v) { return (v === null || !isFinite(v)) ? "\u2013" : Number(v.toPrecision(4)).toString(); }

  function setAutoWL(meta) {
    const c = meta.window_center, w = meta.window_width;
    S.wl = { c: c, w: w > 0 ? w : 1 };
    S.range = Math.max(meta.offset + 65535 * meta.scale, S.wl.c + S.wl.w / 2, 1e-30);
    syncWLSliders();
  }

  function syncWLSliders() {
    $("win").value = Math.round(1000 * Math.min(2, S.wl.w / S.range) / 2);
    $("lev").value = Math.round(1000 * Math.min(1, Math.max(0, S.wl.c / S.range)));
    $("wl-val").textContent = "W " + sig(S.wl.w) + "  L " + sig(S.wl.c);
    $("ov-w").textContent = sig(S.wl.w); $("ov-l").textContent = sig(S.wl.c);
  }

  function render(f) {
    const m = f.meta;
    if (canvas.width !== m.width || canvas.height !== m.height) { canvas.width = m.width; canvas.height = m.height; }
    if (!S.wl) setAutoWL(m);
    const lo = S.wl.c - S.wl.w / 2, k = 255 / Math.max(S.wl.w, 1e-30);
    const img = ctx.createImageData(m.width, m.height), d = img.data, p = f.pix;
    const a = m.scale * k, b = (m.offset - lo) * k;
    for (let i = 0, j = 0; i < p.length; i++, j += 4) {
      let v = p[i] * a + b; v = v < 0 ? 0 : v > 255 ? 255 : v;
      d[j] = d[j + 1] = d[j + 2] = v; d[j + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    $("waiting").style.display = "none";
    $("frame-no").textContent = m.frame + (m.partial ? " (partial)" : "");
    $("latency").textContent = fmt(m.latency_ms, 1);
    $("latency").className = (m.latency_ms !== null && m.latency_ms > LATENCY_TARGET_MS) ? "late" : "";
    $("recon").textContent = "rtcine " + (m.recon || "") ;
    $("series").textContent = (m.description || "") + (m.series ? "  series " + m.series : "");
    $("dims").textContent = m.width + " \u00d7 " + m.height;
  }

  function show(f, live) {
    S.shown = f;
    render(f);
    S.drawn += 1;
    if (live) {
      const now = performance.now();
      S.drawTimes.push(now);
      while (S.drawTimes.length && now - S.drawTimes[0] > 2000) S.drawTimes.shift();
    }
    updateFps(); updatePosition();
  }

  function updateFps() {
    const t = S.drawTimes, now = performance.now();
    while (t.length && now - t[0] > 2000) t.shift();
    // frames drawn over the last 2 s, up to now (so it falls when frames stop coming)
    const fps = (!S.paused && t.length >= 2) ? (t.length - 1) * 1000 / Math.max(now - t[0], 1) : 0;
    $("fps").textContent = S.paused ? "\u2013" : fmt(fps, 1);
  }

  function updatePosition() {
    const sc = $("scrub");
    sc.min = Math.max(S.first, 0); sc.max = Math.max(S.last, 0);
    if (S.shown) sc.value = S.shown.meta.seq;
    const behind = S.shown ? S.last - S.shown.meta.seq : 0;
    $("scrub-val").textContent = S.last < 0 ? "no frames yet" :
      (S.shown ? (S.shown.meta.seq + 1) : 0) + " / " + S.received + " received";
    $("pos").textContent = behind > 0 ? behind + " behind newest" : "";
    const badge = $("badge");
    badge.textContent = S.paused ? "PAUSED" : "LIVE"; badge.className = S.paused ? "paused" : "live";
    $("pause").textContent = S.paused ? "\u25B6 Live" : "Pause";
    $("pause").classList.toggle("on", S.paused);
  }

  function setStatus(text, cls) { const s = $("status"); s.textContent = text; s.className = cls || ""; }

  let goToken = 0;
  async function goTo(seq) {
    seq = Math.max(S.first, Math.min(S.last, seq));
    if (seq < 0) return;
    const token = ++goToken;                // quick scrubbing: only the last request is shown
    const f = await loadFrame(seq);
    if (f && token === goToken) show(f, false);
  }

  function pause(p) {
    S.paused = p;
    if (!p) { S.drawTimes = []; if (S.last >= 0) goTo(S.last); }
    updatePosition(); updateFps();
  }

  async function poll() {
    for (;;) {
      try {
        const r = await fetch("/api/frames?wait=2&after=" + (S.paused ? S.last : Math.max(S.last, S.shown ? S.shown.meta.seq : -1)),
                              { cache: "no-store" });
        if (!r.ok) throw new Error("HTTP " + r.status);
        const st = await r.json();
        if (st.received < S.received) {     // the viewer server was restarted: start afresh
          S.cache.clear(); S.shown = null; S.wl = null; S.drawTimes = [];
        }
        S.first = st.first; S.last = st.last; S.received = st.received;
        $("rx-fps").textContent = fmt(st.receive_fps, 1);
        if (!S.online) { S.online = true; }
        setStatus(st.last < 0 ? "connected \u00b7 waiting for images" :
                  st.received + " frames received \u00b7 holding " + st.held + " (last " + st.history + ")", "live");
        if (!S.paused && st.last >= 0 && (!S.shown || st.last > S.shown.meta.seq)) {
          const f = await loadFrame(st.last);
          if (f && !S.paused) show(f, true);
        } else { updatePosition(); updateFps(); }
      } catch (e) {
        S.online = false;
        setStatus("viewer server unreachable (" + e.message + "), retrying\u2026", "error");
        await new Promise((ok) => setTimeout(ok, 1000));
      }
    }
  }

  // controls
  $("pause").onclick = () => pause(!S.paused);
  $("scrub").oninput = (e) => { if (!S.paused) pause(true); goTo(parseInt(e.target.value, 10)); };
  $("step-back").onclick = () => { pause(true); if (S.shown) goTo(S.shown.meta.seq - 1); };
  $("step-fwd").onclick = () => { pause(true); if (S.shown) goTo(S.shown.meta.seq + 1); };
  $("auto").onclick = () => { if (S.shown) { setAutoWL(S.shown.meta); render(S.shown); } };
  function fromSliders() {
    if (!S.wl) return;
    S.wl = { w: Math.max(2 * S.range * $("win").value / 1000, S.range * 1e-4), c: S.range * $("lev").value / 1000 };
    syncWLSliders(); if (S.shown) render(S.shown);
  }
  $("win").oninput = fromSliders; $("lev").oninput = fromSliders;
  let drag = null;
  canvas.addEventListener("pointerdown", (e) => { if (S.wl) { drag = { x: e.clientX, y: e.clientY, wl: { ...S.wl } }; canvas.setPointerCapture(e.pointerId); } });
  canvas.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const k = S.range / 300;
    S.wl = { w: Math.max(drag.wl.w + (e.clientX - drag.x) * k, S.range * 1e-4), c: drag.wl.c - (e.clientY - drag.y) * k };
    syncWLSliders(); if (S.shown) render(S.shown);
  });
  canvas.addEventListener("pointerup", () => { drag = null; });
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" && e.key !== " ") return;
    if (e.key === " ") { e.preventDefault(); pause(!S.paused); }
    else if (e.key === "ArrowLeft") { pause(true); if (S.shown) goTo(S.shown.meta.seq - 1); }
    else if (e.key === "ArrowRight") { pause(true); if (S.shown) goTo(S.shown.meta.seq + 1); }
    else if (e.key === "a" || e.key === "A") $("auto").click();
  });
  setInterval(updateFps, 500);
  poll();
})();
</script>
</body>
</html>
"""
