"""Live viewer: the server takes pushed images and serves them; a real headless Chromium
plays them; the forwarder never holds up the caller; ``rtcine replay --view`` feeds it."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import ismrmrd
import numpy as np
import pytest

from gadgets.viewer import LiveViewer, ViewerForwarder, forward_to_viewer

CHROME_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-quic", "--window-size=1000,800"]
INSTALL_HINT = "apt-get update && apt-get install -y chromium chromium-driver && pip install selenium"


def make_image(pixels: np.ndarray, frame: int, latency_ms: float = 12.5) -> ismrmrd.Image:
    """A complex64 ISMRMRD image with the meta our chain sets."""
    img = ismrmrd.Image.from_array(np.ascontiguousarray(pixels, dtype=np.complex64)[None, None], transpose=False)
    head = img.getHead()
    head.image_index = frame + 1
    head.image_type = ismrmrd.IMTYPE_COMPLEX
    img.setHead(head)
    hi = float(np.percentile(np.abs(pixels), 99.5))
    meta = ismrmrd.Meta()
    meta.update({"rtcine_frame": str(frame), "rtcine_latency_ms": f"{latency_ms:.4f}", "rtcine_recon": "cgsense",
                 "WindowCenter": f"{hi / 2:.6g}", "WindowWidth": f"{hi:.6g}", "rtcine_partial": "0"})
    img.meta = meta
    return img


@pytest.fixture(scope="module")
def cine_images(small_scan):
    """The small simulated scan's reference frames (64x64) as ISMRMRD images, x3 in time."""
    ref = small_scan.reference
    return [make_image(ref[k % len(ref)], k, latency_ms=20.0 + k) for k in range(3 * len(ref))]


@pytest.fixture
def viewer():
    v = LiveViewer("127.0.0.1", 0, history=2000).start()
    yield v
    v.stop()


def get(url: str, timeout: float = 10.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.headers.get("Content-Type"), r.read()


def unpack(body: bytes):
    n = struct.unpack("<I", body[:4])[0]
    meta = json.loads(body[4:4 + n])
    pix = np.frombuffer(body[4 + n:], dtype="<u2").reshape(meta["height"], meta["width"])
    return meta, meta["offset"] + pix.astype(np.float64) * meta["scale"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_viewer_receives_pushed_images_and_serves_them(viewer, cine_images):
    status, ctype, page = get(viewer.url)
    assert status == 200 and ctype.startswith("text/html") and b"rtcine live cine" in page
    assert b"http://" not in page and b"https://" not in page         # nothing fetched from elsewhere
    assert json.loads(get(viewer.url + "api/frames")[2])["last"] == -1

    with ViewerForwarder(viewer.url, timeout=2.0) as fwd:            # the cross-process path: POST /push
        for img in cine_images[:5]:
            fwd.push(img)
        assert fwd.flush(10.0)
    assert fwd.sent == 5 and fwd.dropped == 0
    state = json.loads(get(viewer.url + "api/frames?after=-1&wait=1")[2])
    assert (state["first"], state["last"], state["received"]) == (0, 4, 5)
    assert state["latest"]["frame"] == 4 and state["latest"]["latency_ms"] == pytest.approx(24.0)

    status, ctype, body = get(viewer.url + "frame/3")
    meta, values = unpack(body)
    truth = np.abs(np.asarray(cine_images[3].data)[0, 0])
    assert (meta["frame"], meta["width"], meta["height"], meta["recon"]) == (3, 64, 64, "cgsense")
    assert np.max(np.abs(values - truth)) <= truth.max() / 65535 + 1e-6     # uint16 quantisation only
    assert meta["window_width"] == pytest.approx(float(cine_images[3].meta["WindowWidth"]))

    from PIL import Image
    status, ctype, png = get(viewer.url + "frame/latest.png")
    pic = np.asarray(Image.open(io.BytesIO(png)))
    assert ctype == "image/png" and pic.shape == (64, 64) and pic.std() > 20

    # the in-process path, and errors that must not take the server down
    assert viewer.push(cine_images[5]) == 5
    req = urllib.request.Request(viewer.url + "push", data=b"not an image", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code == 400
    with pytest.raises(urllib.error.HTTPError) as err:
        get(viewer.url + "frame/999")
    assert err.value.code == 404
    assert json.loads(get(viewer.url + "api/frames")[2])["received"] == 6


def test_history_is_bounded_and_long_poll_wakes(cine_images):
    with LiveViewer("127.0.0.1", 0, history=4) as v:
        for img in cine_images[:10]:
            v.push(img)
        state = json.loads(get(v.url + "api/frames")[2])
        assert (state["first"], state["last"], state["held"], state["received"]) == (6, 9, 4, 10)
        with pytest.raises(urllib.error.HTTPError):
            get(v.url + "frame/2")                                      # scrolled out of the history
        threading.Timer(0.3, v.push, args=(cine_images[10],)).start()
        t0 = time.perf_counter()
        state = json.loads(get(v.url + "api/frames?after=9&wait=5")[2])
        waited = time.perf_counter() - t0
        assert state["last"] == 10 and 0.2 < waited < 3.0


def test_forwarder_never_blocks_and_counts_drops(cine_images, caplog):
    port = free_port()                                                  # nothing listens there
    fwd = ViewerForwarder(f"http://127.0.0.1:{port}/", timeout=0.2, retry_s=60)
    t0 = time.perf_counter()
    with caplog.at_level("WARNING", logger="rtcine.viewer"):
        for img in cine_images[:20]:
            fwd.push(img)
        pushing = time.perf_counter() - t0
        fwd.close(timeout=5)
    assert pushing < 0.5                                                # push only queues
    assert fwd.sent == 0 and fwd.dropped == 20
    assert any("unreachable" in r.getMessage() for r in caplog.records)
    # the chain-gadget hook passes everything through, images and others
    items = [cine_images[0], "not an image", cine_images[1]]
    seen = []
    assert list(forward_to_viewer(iter(items), seen.append)) == items and seen == [items[0], items[2]]


def test_cli_replay_view_serves_until_interrupted(small_file):
    port = free_port()
    cmd = [sys.executable, "-m", "rtcine", "replay", small_file, "--recon", "gridding", "--set", "coil_maps=lowres",
           "--view", "--view-port", str(port), "-q"]
    # Ctrl-C as in a terminal: a test run started in the background (``cmd &`` in a script)
    # has SIGINT ignored, and a child would inherit that and never see the interrupt
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "replay done" in line:
                break
        assert any(f"http://127.0.0.1:{port}/" in x for x in lines), "".join(lines)
        assert any("replay done" in x for x in lines), "".join(lines)
        state = json.loads(get(f"http://127.0.0.1:{port}/api/frames")[2])
        assert state["received"] == 16                                  # replay's sink fed every image
        meta, values = unpack(get(f"http://127.0.0.1:{port}/frame/latest")[2])
        assert meta["frame"] == 15 and meta["recon"] == "gridding" and meta["latency_ms"] > 0 and values.std() > 0
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=20)   # drains the pipe: a full one would block the exit
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, _ = proc.communicate()
            pytest.fail("no exit within 20 s of SIGINT; its output:\n" + "".join(lines) + rest)
        assert proc.returncode == 0, "".join(lines) + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- a real browser ---------------------------------------------------------------------------------------

@pytest.fixture
def chrome():
    """Headless Chromium driven by selenium; skipped (failed under CI) when absent."""
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver_exe = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
        have_selenium = True
    except ImportError:
        have_selenium = False
    missing = [name for name, ok in (("chromium", chromium), ("chromedriver", driver_exe),
                                     ("selenium", have_selenium)) if not ok]
    if missing:
        message = f"headless-browser test needs {', '.join(missing)}: {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="rtcine-chrome-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROME_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_exe), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _page(driver) -> dict:
    return driver.execute_script("""
        const c = document.getElementById('cine'), x = c.getContext('2d');
        const d = x.getImageData(0, 0, c.width, c.height).data;
        let s = 0, s2 = 0, n = 0;
        for (let i = 0; i < d.length; i += 4) { s += d[i]; s2 += d[i] * d[i]; n++; }
        const mean = s / n;
        return {frame: document.getElementById('frame-no').textContent,
                latency: document.getElementById('latency').textContent,
                fps: document.getElementById('fps').textContent,
                badge: document.getElementById('badge').textContent,
                drawn: window.rtcineViewer.drawn, w: c.width, h: c.height,
                mean: mean, std: Math.sqrt(Math.max(0, s2 / n - mean * mean))};
    """)


def _wait_for(driver, predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _page(driver)
        if predicate(state):
            return state
        time.sleep(0.1)
    return _page(driver)


def test_browser_plays_pushed_frames(chrome, viewer, cine_images, tmp_path):
    chrome.get(viewer.url)
    assert "rtcine" in chrome.title
    assert _page(chrome)["drawn"] == 0                              # waiting, nothing drawn yet

    stop = threading.Event()

    def feed():                                                       # another process would do the same
        with ViewerForwarder(viewer.url, timeout=1.0) as fwd:
            for img in cine_images:
                if stop.is_set():
                    break
                fwd.push(img)
                time.sleep(0.05)                                      # ~20 frames/s

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        first = _wait_for(chrome, lambda s: s["drawn"] >= 3)
        assert first["drawn"] >= 3, first
        later = _wait_for(chrome, lambda s: s["frame"].isdigit() and int(s["frame"]) >= int(first["frame"]) + 5)
        assert int(later["frame"]) >= int(first["frame"]) + 5, (first, later)   # the counter advances
        assert (later["w"], later["h"]) == (64, 64)
        assert later["std"] > 20 and 5 < later["mean"] < 250, later           # a picture, not blank
        assert later["latency"] == f"{20.0 + int(later['frame']):.1f}"         # from rtcine_latency_ms
        assert later["badge"] == "LIVE" and float(later["fps"]) > 2, later      # displayed frame rate
        png = chrome.get_screenshot_as_png()
        (tmp_path / "viewer.png").write_bytes(png)
        if os.environ.get("RTCINE_SCREENSHOT"):                          # to look at it yourself
            shutil.copy(tmp_path / "viewer.png", os.environ["RTCINE_SCREENSHOT"])
        from PIL import Image
        shot = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
        assert shot.std() > 10

        # pause: the picture stays while frames keep arriving; scrub back to an earlier frame
        chrome.find_element("id", "pause").click()
        paused = _page(chrome)
        time.sleep(0.5)
        still = _page(chrome)
        assert still["badge"] == "PAUSED" and still["frame"] == paused["frame"]
        chrome.execute_script("const s = document.getElementById('scrub'); s.value = 2;"
                              "s.dispatchEvent(new Event('input'));")
        scrubbed = _wait_for(chrome, lambda s: s["frame"] == "2", timeout=5)
        assert scrubbed["frame"] == "2" and scrubbed["std"] > 20
    finally:
        stop.set()
        feeder.join(timeout=10)


def test_chain_forwards_images_to_a_viewer_with_view_url(small_file):
    """The chain key ``view_url`` (also a <property> in a Gadgetron chain) sends every image
    to a running viewer, and the chain's own output is unchanged."""
    import time

    from gadgets.replay import replay
    from recon_core.config import ReconConfig

    with LiveViewer("127.0.0.1", 0, history=100) as v:
        cfg = ReconConfig(recon="gridding", coil_maps="lowres", view_url=v.url)
        s = replay(small_file, cfg)
        assert s["images"] == 16
        deadline = time.time() + 10
        while time.time() < deadline:
            state = json.loads(get(v.url + "api/frames")[2])
            if state["received"] == 16:
                break
            time.sleep(0.1)
        assert state["received"] == 16
