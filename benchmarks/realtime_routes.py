"""Every route a user takes, with no options, at scanner pace, side by side.

    PYTHONPATH=. python benchmarks/realtime_routes.py [--scan runs/routes_scan48.h5] [--long runs/routes_scan240.h5]
                                                      [--runs 2] [--json docs/realtime_routes.json]

Routes (each in fresh processes, as a user starts them; loopback ports only):

- ``serve``: ``rtcine serve --ready-file F`` (warm), driven by ``rtcine replay SCAN --server
  127.0.0.1:P --realtime`` (its default chain, the deployment chain: the realtime preset);
- ``replay``: ``rtcine replay SCAN --realtime`` (warms up before its clock starts);
- ``gadgetron``: ``docker/rtcine-deploy.sh`` (warm ``rtcine serve``, then the real Gadgetron
  from /opt/gadgetron) and ``rtcine replay SCAN --server 127.0.0.1:GP --chain
  rtcine_connect.xml --realtime`` (the chain's port set to the server's);
- ``execute``: the same Gadgetron, ``chains/rtcine_imunne_rt.xml`` (``<execute>``: a Python
  process per scan), on SCAN and on the longer ``--long`` scan: its worst frame and the time
  until latency stays under 150 ms.

Latency in ms from a frame's last spoke (sent, or due) to its image; ratio = output frame
rate / acquisition frame rate; PSNR in dB over the body ROI against the simulated reference.
The scans are simulated when missing (48 and 240 frames, 10 coils, 13 spokes, 128x128).
Needs Gadgetron (``bash ../shared/gadgetron/install.sh``) for the last two routes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GADGETRON_BIN = "/opt/gadgetron/bin"
TARGET_MS = 150.0


def _env():
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), GADGETRON_BIN, env.get("PATH", "")])
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)
    return env


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(ports, ready_file, proc, timeout=300.0):
    from gadgets.health import problems
    deadline = time.monotonic() + timeout
    while problems(ports, ready_file):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"not healthy: {problems(ports, ready_file)}")
        time.sleep(0.3)


def _rtcine(args, env) -> dict:
    out = subprocess.run([sys.executable, "-m", "rtcine", *args, "--json", "-q"], capture_output=True, text=True,
                         env=env, timeout=900)
    text = out.stdout
    if out.returncode not in (0, 1) or "{" not in text:
        raise RuntimeError(f"rtcine {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(text[text.index("{"):])


def _psnr(images_file, scan) -> float:
    import numpy as np

    from gadgets.images import image_frame
    from recon_core.evaluation import score
    from recon_core.mrd import read_images
    from recon_core.simulate import REFERENCE_GROUP

    images = {int(i.getHead().image_index) - 1: image_frame(i) for i in read_images(images_file, "images")}
    reference = np.stack([image_frame(i) for i in read_images(scan, REFERENCE_GROUP)])
    idx = sorted(k for k in images if k < len(reference))
    return score(np.stack([images[k] for k in idx]), reference[idx], roi=True)["mean"]["psnr"]


def _row(name, s, scan, out) -> dict:
    lat = s.get("frame_latencies_ms") or s.get("latency_list") or []
    back = next((i for i in range(len(lat)) if all(x < TARGET_MS for x in lat[i:])), None)
    return {"route": name, "frames": s["frames"], "images": s["images"], "recon": s["recon"],
            "p50": s["latency_ms"]["p50"], "p99": s["latency_ms"]["p99"], "max": s["latency_ms"]["max"],
            "ratio": s["output_fps"] / s["acquisition_fps"], "reduced": s.get("reduced_frames", 0),
            "back_under_150_s": None if back is None else back / s["acquisition_fps"],
            "psnr": _psnr(out, scan), "latencies_ms": lat,
            # the chain's own (meta rtcine_latency_ms: from the spoke's arrival, for <execute> from the
            # process start plus its time stamp, gadgets.feeder.stream_clock); None for a local replay
            "chain_p50": (s.get("chain_latency_ms") or {}).get("p50"),
            "chain_max": (s.get("chain_latency_ms") or {}).get("max")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scan", default=os.path.join(REPO, "runs", "routes_scan48.h5"))
    p.add_argument("--long", default=os.path.join(REPO, "runs", "routes_scan240.h5"))
    p.add_argument("--runs", type=int, default=2, help="scans in a row per warm server")
    p.add_argument("--json")
    args = p.parse_args(argv)
    env = _env()
    for path, frames, seed in ((args.scan, 48, 4242), (args.long, 240, 4343)):
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            subprocess.run([sys.executable, "-m", "rtcine", "simulate", path, "--frames", str(frames), "--coils", "10",
                            "--matrix", "128", "--spokes-per-frame", "13", "--seed", str(seed), "-q"], check=True, env=env)
    rows = []
    work = tempfile.mkdtemp(prefix="rtcine-routes-")
    procs = []
    try:
        port, ready = _free_port(), os.path.join(work, "ready-serve")
        proc = subprocess.Popen([sys.executable, "-m", "rtcine", "serve", "--port", str(port), "--ready-file", ready],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        procs.append(proc)
        _wait_healthy([port], ready, proc)
        for k in range(args.runs):
            out = os.path.join(work, f"serve{k}.h5")
            rows.append(_row(f"rtcine serve, scan {k + 1}", _rtcine(
                ["replay", args.scan, "--server", f"127.0.0.1:{port}", "--realtime", "--out", out], env), args.scan, out))
        proc.terminate()
        out = os.path.join(work, "replay.h5")
        rows.append(_row("rtcine replay --realtime", _rtcine(["replay", args.scan, "--realtime", "--out", out], env),
                         args.scan, out))
        if os.access(os.path.join(GADGETRON_BIN, "gadgetron"), os.X_OK):
            rt_port, gt_port, st_port = _free_port(), _free_port(), _free_port()
            ready = os.path.join(work, "ready-deploy")
            dirs = [os.path.join(work, d) for d in ("w", "d", "b")]
            for d in dirs:
                os.makedirs(d)
            denv = dict(env, RTCINE_PORT=str(rt_port), GADGETRON_PORT=str(gt_port), RTCINE_READY_FILE=ready)
            proc = subprocess.Popen(["bash", os.path.join(REPO, "docker", "rtcine-deploy.sh"), "-s", str(st_port),
                                     "-W", dirs[0], "-D", dirs[1], "-S", dirs[2]], env=denv, cwd=work,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            procs.append(proc)
            _wait_healthy([rt_port, gt_port], ready, proc)
            tree = ET.parse(os.path.join(REPO, "chains", "rtcine_connect.xml"))
            tree.getroot().find(".//external/connect").set("port", str(rt_port))
            chain = os.path.join(work, "connect.xml")
            tree.write(chain)
            for k in range(args.runs):
                out = os.path.join(work, f"gadgetron{k}.h5")
                rows.append(_row(f"Gadgetron + serve (deployment), scan {k + 1}", _rtcine(
                    ["replay", args.scan, "--server", f"127.0.0.1:{gt_port}", "--chain", chain, "--realtime", "--out",
                     out], env), args.scan, out))
            for scan in (args.scan, args.long):
                out = os.path.join(work, "execute.h5")
                rows.append(_row(f"Gadgetron <execute>, {os.path.basename(scan)}", _rtcine(
                    ["replay", scan, "--server", f"127.0.0.1:{gt_port}", "--chain",
                     os.path.join(REPO, "chains", "rtcine_imunne_rt.xml"), "--realtime", "--out", out], env), scan, out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'route':42s} {'images':>9s} {'p50':>6s} {'p99':>6s} {'max':>7s} {'ratio':>5s} {'<150 ms after':>13s} "
          f"{'PSNR':>6s} {'chain p50':>9s} {'max':>6s}  recon")
    for r in rows:
        back = "-" if r["back_under_150_s"] is None else f"{r['back_under_150_s']:.2f} s"
        print(f"{r['route']:42s} {r['images']:4d}/{r['frames']:<4d} {r['p50']:6.0f} {r['p99']:6.0f} {r['max']:7.0f} "
              f"{r['ratio']:5.2f} {back:>13s} {r['psnr']:6.2f} {r['chain_p50'] or float('nan'):9.0f} "
              f"{r['chain_max'] or float('nan'):6.0f}  {r['recon']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
