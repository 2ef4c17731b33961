"""A multi-slice scan through Gadgetron's distributed engine on 1 and 2 workers, against the
single-server deployment: images/s and latency, realtime preset (or --preset).

    PYTHONPATH=. python benchmarks/distributed_slices.py [--slices 3] [--frames 24] [--matrix 128] [--coils 10]
                                                         [--orders sequential interleaved] [--json OUT.json]

Routes (fresh processes, loopback ports; Gadgetron from /opt/gadgetron):

- ``single``: one Gadgetron with ``chains/rtcine_connect.xml`` and one warm ``rtcine serve``
  (the deployment of docker/rtcine-deploy.sh): the whole stack on one connection;
- ``1 worker``, ``2 workers``: a master Gadgetron with ``chains/rtcine_distributed.xml``, the
  worker list from ``docker/gadgetron-workers``, and 1 or 2 worker Gadgetrons handing their
  slices to one warm ``rtcine serve --preset PRESET --set prewhiten=false`` (on one machine
  every worker dials the same localhost port: tests/test_distributed.py says why). Every slice
  is a connection of its own, on either count of workers.

Each route gets the stack sent twice with :func:`gadgets.client.replay_to_server`:

- ``paced``: at scanner pace (the acquisitions' time stamps, TR 3 ms); latency per image from
  the moment its frame's last spoke (of its own slice) was due to the moment the image arrived;
- ``burst``: as fast as the connection takes it, as ``gadgetron_ismrmrd_client`` sends a file:
  the throughput.

``images_per_s`` counts from the first image to the last (gadgets.stats.output_rate);
``acquisition_fps`` is the stack's frame rate at scanner pace (all slices); ``degraded`` counts
images the overload policy made with fewer updates or by gridding (meta ``rtcine_overload``);
PSNR in dB in the body mask against the simulated reference, mean over images. The stack is
simulated per order (``rtcine simulate --slices``). On one machine all routes share its cores:
what the worker count changes here is the relay, not the compute (docs/distributed.md).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

from benchmarks.realtime_routes import _env as routes_env, _free_port  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
GADGETRON_BIN = "/opt/gadgetron/bin"
#: the workers' server: the preset (--preset) and no prewhitening of its own (the master did it)
WORKER_SERVE_ARGS = ["--set", "prewhiten=false"]
#: the simulated repetition time (one spoke per TR)
TR_S = 3e-3


def _env() -> dict:
    env = routes_env()        # this Python and Gadgetron first on PATH, the repository importable
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


class Processes:
    """The route's processes, each in its own process group, stopped together."""

    def __init__(self, work: str):
        self.work, self.procs = work, []

    def start(self, name: str, cmd: list, env: dict, port: int, timeout: float = 300.0) -> int:
        from gadgets.health import listening

        log = os.path.join(self.work, f"{name}.log")
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    cwd=self.work, start_new_session=True)
        self.procs.append(proc)
        deadline = time.monotonic() + timeout
        while not listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not listen on {port}: see {log}")
            time.sleep(0.1)
        return port

    def serve(self, name: str, args: list, env: dict) -> int:
        port = _free_port()
        return self.start(name, [sys.executable, "-m", "rtcine", "-v", "serve", "--port", str(port), *args], env, port)

    def gadgetron(self, name: str, env: dict) -> int:
        port, storage = _free_port(), _free_port()
        dirs = [os.path.join(self.work, name, d) for d in ("work", "db", "blobs")]
        for d in dirs:
            os.makedirs(d, exist_ok=True)
        return self.start(name, [os.path.join(GADGETRON_BIN, "gadgetron"), "-p", str(port), "-s", str(storage),
                                 "-W", dirs[0], "-D", dirs[1], "-S", dirs[2]], env, port)

    def stop(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _chain(template: str, port: int, path: str, preset: str) -> str:
    tree = ET.parse(os.path.join(REPO, "chains", template))
    tree.getroot().find(".//external/connect").set("port", str(port))
    tree.getroot().find(".//external//property[@name='preset']").set("value", preset)
    tree.write(path)
    return path


def _simulate(path: str, args, order: str):
    from recon_core.simulate import SimulationConfig, write_dataset
    from recon_core.simulate_stack import simulate_stack

    cfg = SimulationConfig(frames=args.frames, coils=args.coils, matrix=args.matrix, spokes_per_frame=13, seed=args.seed,
                           snr=30)
    cfg.slices, cfg.slice_order = args.slices, order
    stack = simulate_stack(cfg)
    if os.path.exists(path):
        os.remove(path)
    write_dataset(path, stack)
    return [scan.reference for scan in stack.slices]


def _row(route: str, order: str, mode: str, summary: dict, references) -> dict:
    import numpy as np

    from gadgets.images import image_frame
    from recon_core.evaluation import body_mask
    from recon_core.metrics import psnr

    images = summary["images_list"]
    scores = []
    for img in images:
        head = img.getHead()
        ref = references[head.slice][head.image_index - 1]
        scores.append(psnr(image_frame(img), ref, body_mask(references[head.slice])))
    lat = summary["latency_ms"]
    keys = {(i.getHead().slice, i.getHead().image_index) for i in images}
    return {"route": route, "order": order, "mode": mode, "frames": summary["frames"], "images": len(images),
            "duplicates": len(images) - len(keys), "images_per_s": summary["output_fps"],
            # the scanner's frame rate over the whole stack (a frame of some slice every 13 TRs)
            "acquisition_fps": summary["frames"] / (summary["spokes"] * TR_S) if summary["spokes"] else None,
            "latency_ms": {k: lat.get(k) for k in ("p50", "p95", "max", "mean")}, "wall_s": summary["wall_s"],
            "degraded": sum(1 for i in images if "rtcine_overload" in i.meta.keys()),
            "psnr": float(np.mean(scores)) if scores else None, "errors": summary["errors"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slices", type=int, default=3)
    p.add_argument("--frames", type=int, default=24, help="frames per slice")
    p.add_argument("--matrix", type=int, default=128)
    p.add_argument("--coils", type=int, default=10)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--orders", nargs="+", default=["sequential", "interleaved"], choices=["sequential", "interleaved"])
    p.add_argument("--modes", nargs="+", default=["paced", "burst"], choices=["paced", "burst"])
    p.add_argument("--preset", default="realtime", help="recon preset of every route (gridding: ~the relay alone)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    from gadgets.client import replay_to_server

    env = _env()
    work = tempfile.mkdtemp(prefix="rtcine-distributed-")
    scans = {order: (os.path.join(work, f"stack_{order}.h5"), None) for order in args.orders}
    for order in args.orders:
        scans[order] = (scans[order][0], _simulate(scans[order][0], args, order))
    load_before = os.getloadavg()
    rows = []
    procs = Processes(work)
    try:
        single_serve = procs.serve("serve-single", [], env)
        worker_serve = procs.serve("serve-workers", ["--preset", args.preset, *WORKER_SERVE_ARGS], env)
        single = procs.gadgetron("single", env)
        workers = [procs.gadgetron(f"worker{k}", env) for k in (1, 2)]
        masters = {}
        for n in (1, 2):
            menv = dict(env, GADGETRON_REMOTE_WORKER_COMMAND=f"/bin/bash {os.path.join(REPO, 'docker', 'gadgetron-workers')}",
                        RTCINE_WORKERS=" ".join(f"127.0.0.1:{port}" for port in workers[:n]))
            masters[n] = procs.gadgetron(f"master{n}", menv)
        routes = [("single", single, _chain("rtcine_connect.xml", single_serve, os.path.join(work, "connect.xml"), args.preset))]
        distributed = _chain("rtcine_distributed.xml", worker_serve, os.path.join(work, "distributed.xml"), args.preset)
        routes += [(f"{n} worker{'s' if n > 1 else ''}", masters[n], distributed) for n in (1, 2)]
        for order in args.orders:
            path, references = scans[order]
            for mode in args.modes:
                for route, port, chain in routes:
                    summary = replay_to_server(path, f"127.0.0.1:{port}", chain, realtime=(mode == "paced"),
                                               timeout=300)
                    row = _row(route, order, mode, summary, references)
                    rows.append(row)
                    lat = row["latency_ms"]
                    print(f"{order:11s} {mode:5s} {route:9s} {row['images']:3d}/{row['frames']:<3d} images "
                          f"{row['images_per_s']:6.1f} images/s  latency p50 {lat['p50']:7.0f} p95 {lat['p95']:7.0f} "
                          f"max {lat['max']:7.0f} ms  degraded {row['degraded']:3d}  PSNR {row['psnr']:.2f}"
                          + (f"  errors {row['errors']}" if row["errors"] else ""), flush=True)
    finally:
        procs.stop()
        shutil.rmtree(work, ignore_errors=True)
    result = {"scan": {"slices": args.slices, "frames_per_slice": args.frames, "matrix": args.matrix,
                       "coils": args.coils, "spokes_per_frame": 13, "tr_ms": 3.0},
              "preset": args.preset, "cpus": os.cpu_count(), "load_average_before": load_before,
              "load_average_after": os.getloadavg(), "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
