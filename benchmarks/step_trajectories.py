"""PSNR after every unrolled step on held-out scans: FLAT against the same network trained
on its final output only (issue 5), plus any other unrolled model given.

    python benchmarks/step_trajectories.py --model flat=runs/flat/model.safetensors \
        --model flat-final-only=runs/flat-final-only/model.safetensors \
        [--split test --scans 4 --frames 16] [--png docs/flat_psnr_per_step.png] [--json out.json]

Each model must return its states (FLAT does: ``info["states"]``). The PSNR is on magnitude,
least-squares scaled to the reference, mean over frames, then over scans; the step-0 state
is the CG-SENSE start, the same for all models.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recon_core.networks.flat import psnr_per_step  # noqa: E402
from recon_core.networks.problem import make_problem  # noqa: E402
from recon_core.networks.checkpoint import load_checkpoint  # noqa: E402
from recon_core.training.data import load_scan, split_file, split_files  # noqa: E402


def trajectories(models: dict, scans: list, frames: int) -> dict:
    """``{name: mean PSNR per step (list)}`` over ``scans``."""
    curves = {name: [] for name in models}
    for scan in scans:
        sl = slice(0, frames)
        k, c, m = (torch.from_numpy(scan[key][sl] if key != "maps" else scan[key])
                   for key in ("kspace", "coords", "maps"))
        with torch.no_grad():
            problem = make_problem(k, c, m, cg_iterations=3)
            for name, model in models.items():
                _, info = model(problem)
                curves[name].append(psnr_per_step(info["states"], scan["reference"][sl]))
    return {name: np.mean(np.array(v), axis=0).tolist() for name, v in curves.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, metavar="NAME=PATH")
    p.add_argument("--data", default="runs/data")
    p.add_argument("--split", default="test")
    p.add_argument("--scans", type=int, default=4)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--png", default="flat_psnr_per_step.png")
    p.add_argument("--json")
    args = p.parse_args(argv)
    models = {}
    for item in args.model:
        name, path = item.split("=", 1)
        models[name] = load_checkpoint(path)[0].eval()
    files = split_files(args.data, args.split)[:args.scans]
    if not files:
        raise FileNotFoundError(f"no {split_file(args.split, '*')} scans in {args.data}")
    curves = trajectories(models, [load_scan(f) for f in files], args.frames)
    print(f"PSNR (dB) after each step, {len(files)} {args.split} scans x {args.frames} frames")
    for name, curve in curves.items():
        print(f"{name:18s} " + " ".join(f"{v:6.2f}" for v in curve))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for name, curve in curves.items():
        ax.plot(range(len(curve)), curve, "o-", label=name)
    ax.set_xlabel("step (0 = CG-SENSE start)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"held-out {args.split} scans")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.png, dpi=90)
    print(f"picture: {args.png}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(curves, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
