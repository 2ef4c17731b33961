"""PSNR of an implicit network (IMUNNE) against its iteration count: does it converge, and
does it stay where it converged (no divergence, no slow drift into the noise)?

    python benchmarks/fixed_point_curve.py --model imunne=recon_core/models/imunne_small.safetensors \
        [--model new=runs/imunne_v2/model.safetensors] [--data runs/data --split test --scans 4] \
        [--iterations 100] [--png curve.png] [--json out.json]
    python benchmarks/fixed_point_curve.py --model ... --suite runs/shifted --part val
    python benchmarks/fixed_point_curve.py --model ... --files A.h5 B.npz --per-scan

``--files`` scores the given suite ``.h5`` files and prepared ``.npz`` scans instead;
``--per-scan`` also prints each scan's curve (where each one peaks). ``--suite`` takes the scans of a shifted suite's part (``rtcine suite build``) through the
chain's input stages instead of the simulator's prepared ``.npz`` scans.

Each scan is one window of its first ``--frames`` frames, started from the CG-SENSE start
(3 iterations) as at inference, iterated plainly ``x_{k+1} = R(x_k)`` (the model's own
update: anchored at the start if it was trained so); the PSNR (magnitude,
least-squares scaled, mean over frames, then over scans) and the relative change
``||x_{k+1} - x_k|| / ||x_k||`` are recorded after every iteration. The CG-SENSE row (8
iterations) is the reference a network must beat.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recon_core.metrics import psnr  # noqa: E402
from recon_core.networks.checkpoint import load_checkpoint  # noqa: E402
from recon_core.networks.problem import make_problem  # noqa: E402
from recon_core.reconstructors import cg_sense  # noqa: E402
from recon_core.training.data import load_scan, split_file, split_files  # noqa: E402


def curve(model, scans, iterations: int, frames: int) -> dict:
    """``{"psnr": (iterations + 1,), "change": (iterations,)}`` means over ``scans``; index 0
    of ``psnr`` is the start."""
    psnrs, changes = [], []
    with torch.no_grad():
        for scan in scans:
            ref = scan["reference"][:frames]
            problem = make_problem(*_window(scan, frames), cg_iterations=3)
            x = problem.x0
            row, ch = [], []
            for it in range(iterations + 1):
                img = (x * problem.scale).numpy()
                row.append(np.mean([psnr(a, b) for a, b in zip(img, ref)]))
                if it == iterations:
                    break
                nxt = model.update(x, problem) if hasattr(model, "update") else model.block(x, problem)
                ch.append(float((nxt - x).abs().norm() / x.abs().norm().clamp_min(1e-12)))
                x = nxt
            psnrs.append(row)
            changes.append(ch)
    return {"psnr": np.mean(psnrs, 0).tolist(), "change": np.mean(changes, 0).tolist()}


def cgsense(scans, frames: int, iterations: int = 8) -> float:
    vals = []
    for scan in scans:
        x = cg_sense(*_window(scan, frames), iterations=iterations).numpy()
        vals.append(np.mean([psnr(a, b) for a, b in zip(x, scan["reference"][:frames])]))
    return float(np.mean(vals))


def _window(scan, frames: int):
    """``kspace, coords, maps`` tensors of the scan's first ``frames`` frames."""
    return (torch.from_numpy(scan["kspace"][:frames]), torch.from_numpy(scan["coords"][:frames]),
            torch.from_numpy(scan["maps"]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, metavar="NAME=PATH")
    ap.add_argument("--data", default="runs/data")
    ap.add_argument("--split", default="test")
    ap.add_argument("--suite", help="a shifted suite's folder: score its --part's .h5 scans instead")
    ap.add_argument("--part", default="val")
    ap.add_argument("--scans", type=int, default=4)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--files", nargs="+", help="suite .h5 files and prepared .npz scans to score instead")
    ap.add_argument("--per-scan", action="store_true", help="also print each scan's curve")
    ap.add_argument("--png")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    names = None
    if args.files:
        from rtcine.suite_compare import load_scan_file
        scans = [load_scan_file(f) if f.endswith(".h5") else load_scan(f) for f in args.files]
        names = [os.path.basename(f) for f in args.files]
        args.split = f"{len(scans)} files"
    elif args.suite:
        from rtcine.suite_compare import load_scan_file
        files = sorted(glob.glob(os.path.join(args.suite, args.part, "*.h5")))[:args.scans]
        if not files:
            raise SystemExit(f"no .h5 scans in {os.path.join(args.suite, args.part)}")
        scans = [load_scan_file(f) for f in files]
        args.split = f"{os.path.basename(os.path.normpath(args.suite))}/{args.part}"
    else:
        files = split_files(args.data, args.split)[:args.scans]
        if not files:
            raise SystemExit(f"no {split_file(args.split, '*')} scans in {args.data}")
        scans = [load_scan(f) for f in files]
    result = {"split": args.split, "scans": len(scans), "frames": args.frames,
              "cgsense_psnr": cgsense(scans, args.frames), "models": {}}
    print(f"{args.split}: {len(scans)} scans x {args.frames} frames; CG-SENSE (8 it.) {result['cgsense_psnr']:.2f} dB")
    for item in args.model:
        name, path = item.split("=", 1)
        model, _, _ = load_checkpoint(path)
        if args.per_scan:               # each scan's curve; their mean is the usual curve
            rows = [curve(model, [scan], args.iterations, args.frames) for scan in scans]
            c = {"psnr": np.mean([r["psnr"] for r in rows], 0).tolist(),
                 "change": np.mean([r["change"] for r in rows], 0).tolist(),
                 "per_scan": {}}
            for label, r in zip(names or [f"scan {i}" for i in range(len(scans))], rows):
                p = r["psnr"]
                c["per_scan"][label] = p
                print(f"{name:>14} {label}: " + "  ".join(f"it {i}: {p[i]:.2f}" for i in (10, 36, 50, 100, 150)
                                                      if i < len(p)) + f"  | best {max(p):.2f} at it {int(np.argmax(p))}")
        else:
            c = curve(model, scans, args.iterations, args.frames)
        result["models"][name] = c
        p = c["psnr"]
        marks = [i for i in (1, 2, 5, 10, 20, 50, 100, 200) if i < len(p)]
        print(f"{name:>14}: " + "  ".join(f"it {i}: {p[i]:.2f}" for i in marks) +
              f"  | best {max(p):.2f} at it {int(np.argmax(p))}, last change {c['change'][-1]:.1e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for name, c in result["models"].items():
            ax.plot(range(len(c["psnr"])), c["psnr"], label=name)
        ax.axhline(result["cgsense_psnr"], color="k", ls="--", lw=1, label="CG-SENSE (8 it.)")
        ax.set_xlabel("fixed-point iteration")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(f"{args.split}: {len(scans)} scans, {args.frames} frames")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.png, dpi=110)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
