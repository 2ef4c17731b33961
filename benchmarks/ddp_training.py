"""Training throughput with 1 and 2 processes (torchrun, DDP over gloo) on this machine.

    PYTHONPATH=. python benchmarks/ddp_training.py --data runs/data --steps 30 --json docs/ddp_training.json

Runs ``rtcine train`` (IMUNNE, JFB, 5-frame 128x128 windows, the first ``--scans`` training
scans) for ``--steps`` steps, each with the same global batch of 2 windows per step:

- 1 process, 2 threads, ``--batch 2``;
- ``torchrun --nproc-per-node 2``, 1 thread each, ``--batch 1`` per process;

and reports seconds per step and windows per second (steady state: the log's mean over all
steps, cache building excluded). Measure on a quiet machine: another job on the cores
changes both numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

from benchmarks.realtime_routes import _free_port


def run(label, launcher, threads, batch, args, scratch):
    out = os.path.join(scratch, label)
    cmd = launcher + ["-m", "rtcine", "train", "--model", "imunne", "--data", args.data, "--train-scans",
                      str(args.scans), "--val-scans", "1", "--steps", str(args.steps), "--batch", str(batch),
                      "--max-iter", "6", "--validate-every", str(args.steps), "--checkpoint-every",
                      str(args.steps), "--out", out, "--fresh"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    with open(os.path.join(out, "log.json")) as f:
        timing = json.load(f)["timing"]
    s = timing["seconds_per_step"]
    return {"route": label, "threads_per_process": threads, "windows_per_step": 2, "seconds_per_step": s,
            "windows_per_second": 2 / s, "peak_rss_mb_rank0": timing["peak_rss_mb"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="runs/data")
    p.add_argument("--scans", type=int, default=8)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--json")
    args = p.parse_args()
    scratch = tempfile.mkdtemp(prefix="rtcine-ddp-")
    try:
        rows = [run("1 process", [sys.executable], 2, 2, args, scratch),
                run("2 processes (torchrun, gloo)",
                    [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                     "127.0.0.1", "--master-port", str(_free_port())], 1, 1, args, scratch)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("| route | threads/process | s/step | windows/s |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['route']} | {r['threads_per_process']} | {r['seconds_per_step']:.2f} | "
              f"{r['windows_per_second']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"steps": args.steps, "scans": args.scans, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
