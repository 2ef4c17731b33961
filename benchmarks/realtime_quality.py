"""Image quality of the real-time schedule: the shipped IMUNNE against the real-time model,
and the shipped IMUNNE run to convergence offline (the target's reference).

    PYTHONPATH=. python benchmarks/realtime_quality.py [--file runs/bench_scan120.h5] [--splits test,test-ood]
                                                       [--data runs/data] [--updates K] [--rt-model PATH]
                                                       [--json out.json]

Both models stream with the real-time model's schedule (its YAML's ``streaming:`` window,
look-ahead and updates per window; ``--updates`` overrides the last), warm start, without
pacing, so only quality is measured (speed: ``rtcine bench``). ``converged`` is the shipped
IMUNNE with all frames in one window, 50 iterations, tolerance 1e-4, on the same maps:

- ``--file``: an ISMRMRD file through the chain (ESPIRiT maps awaited, so both runs use the
  same maps), PSNR/SSIM in the body ROI against the file's reference frames;
- ``--splits``: the prepared held-out scans of ``rtcine train``'s data folder, each streamed
  from its first frame (16 frames: the first ones start from CG-SENSE, a burn-in that a
  running stream does not have), body ROI.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recon_core.evaluation import score  # noqa: E402

def file_quality(path: str, model: str, schedule: dict) -> dict:
    from gadgets.images import image_frame
    from gadgets.replay import replay
    from recon_core.config import ReconConfig
    from recon_core.mrd import read_images
    from recon_core.simulate import REFERENCE_GROUP

    reference = np.stack([image_frame(i) for i in read_images(path, REFERENCE_GROUP)])
    cfg = ReconConfig(recon="imunne", model=model, window=schedule["window"], lookahead=schedule["lookahead"],
                      max_iterations=schedule["updates"], tolerance=0, wait_for_maps=True)
    images = {int(i.meta["rtcine_frame"]): image_frame(i) for i in replay(path, cfg)["images_list"]}
    idx = sorted(k for k in images if k < len(reference))
    return score(np.stack([images[k] for k in idx]), reference[idx], roi=True)["mean"]


def file_converged(path: str) -> dict:
    """The shipped IMUNNE converged offline on the file (``rtcine bench``'s offline column)."""
    from recon_core.config import ReconConfig
    from rtcine.cmd_bench import _offline_psnr

    per_frame = _offline_psnr(path, ReconConfig(recon="imunne"), "")
    return {"psnr": float(np.mean(per_frame))}


def split_quality(data: str, split: str, model, schedule: dict | None) -> dict:
    """Mean body-ROI PSNR/SSIM over the split's scans, streamed with ``schedule`` (window,
    lookahead, updates) or, when None, converged offline (all frames in one window)."""
    from recon_core.networks.evaluation import network_method
    from recon_core.networks.problem import FrameCache
    from recon_core.training.data import load_scan, split_file, split_files
    from recon_core.training.stream_schedule import clip_scale, streaming_outputs

    rows = []
    for f in split_files(data, split):
        scan = load_scan(f)
        if schedule is None:
            x = network_method(model, max_iter=50, tol=1e-4)(scan["kspace"], scan["coords"], scan["maps"])
            rows.append(score(x, scan["reference"], roi=True)["mean"])
            continue
        k, c, m = (torch.from_numpy(scan[key]) for key in ("kspace", "coords", "maps"))
        with torch.no_grad():
            cache = FrameCache(k, c, m, 3)
            s = clip_scale(cache, 0)
            x = streaming_outputs(model, cache, range(k.shape[0]), schedule["window"], schedule["lookahead"],
                                  schedule["updates"], s) * s
        rows.append(score(x.numpy(), scan["reference"], roi=True)["mean"])
    if not rows:
        raise SystemExit(f"no {split_file(split, '*')} scans in {data} (rtcine train --data {data} builds them)")
    return {"psnr": float(np.mean([r["psnr"] for r in rows])), "ssim": float(np.mean([r["ssim"] for r in rows])),
            "scans": len(rows)}


def main(argv=None) -> int:
    from recon_core.networks.streaming import load_model, model_path

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--file", default="runs/bench_scan120.h5")
    p.add_argument("--splits", default="test,test-ood")
    p.add_argument("--data", default="runs/data")
    p.add_argument("--rt-model", default="imunne_rt", help="the real-time model (a shipped name or a file)")
    p.add_argument("--updates", type=int, help="updates per window (default: the real-time model's)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    _, meta = load_model(model_path("imunne", args.rt_model), "cpu")
    schedule = dict(meta["streaming"])
    if args.updates:
        schedule["updates"] = args.updates
    splits = list(filter(None, args.splits.split(",")))
    rows = []
    for name, path in {"imunne": "", "imunne_rt": args.rt_model}.items():
        model, _ = load_model(model_path("imunne", path), "cpu")
        if args.file:
            rows.append({"model": name, "data": args.file, **schedule, **file_quality(args.file, path, schedule)})
        for split in splits:
            rows.append({"model": name, "data": split, **schedule,
                         **split_quality(args.data, split, model, schedule)})
    model, _ = load_model(model_path("imunne"), "cpu")
    if args.file:
        rows.append({"model": "converged", "data": args.file, **file_converged(args.file)})
    for split in splits:
        rows.append({"model": "converged", "data": split, **split_quality(args.data, split, model, None)})
    print(f"{'model':10s} {'data':28s} {'PSNR dB':>8s} {'SSIM':>6s}   (body ROI; streamed: window {schedule['window']}, "
          f"look-ahead {schedule['lookahead']}, {schedule['updates']} update(s) per window)")
    for r in rows:
        print(f"{r['model']:10s} {os.path.basename(r['data']):28s} {r['psnr']:8.2f} {r.get('ssim', float('nan')):6.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=float)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
