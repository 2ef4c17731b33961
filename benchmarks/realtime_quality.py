"""Image quality of the real-time schedule: the shipped IMUNNE against the real-time model.

    PYTHONPATH=. python benchmarks/realtime_quality.py [--file runs/bench_scan120.h5] [--splits test,test-ood]
                                                       [--data runs/data] [--json out.json]

Both models stream with the real-time schedule (2-frame windows, 1 look-ahead, 1 update per
window, warm start), without pacing, so only quality is measured (speed: ``rtcine bench``):

- ``--file``: an ISMRMRD file through the chain (ESPIRiT maps awaited, so both runs use the
  same maps), PSNR/SSIM in the body ROI against the file's reference frames;
- ``--splits``: the prepared held-out scans of ``rtcine train``'s data folder, each streamed
  from its first frame (16 frames: the first ones start from CG-SENSE, a burn-in that a
  running stream does not have), body ROI.
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

from recon_core.evaluation import score  # noqa: E402

MODELS = {"imunne": "", "imunne_rt": "imunne_rt"}
SCHEDULE = {"window": 2, "lookahead": 1, "updates": 1}


def file_quality(path: str, model: str) -> dict:
    from gadgets.images import image_frame
    from gadgets.replay import replay
    from recon_core.config import ReconConfig
    from recon_core.mrd import read_images
    from recon_core.simulate import REFERENCE_GROUP

    reference = np.stack([image_frame(i) for i in read_images(path, REFERENCE_GROUP)])
    cfg = ReconConfig(recon="imunne", model=model, window=SCHEDULE["window"], lookahead=SCHEDULE["lookahead"],
                      max_iterations=SCHEDULE["updates"], tolerance=0, wait_for_maps=True)
    images = {int(i.meta["rtcine_frame"]): image_frame(i) for i in replay(path, cfg)["images_list"]}
    idx = sorted(k for k in images if k < len(reference))
    return score(np.stack([images[k] for k in idx]), reference[idx], roi=True)["mean"]


def split_quality(data: str, split: str, model) -> dict:
    from recon_core.networks.problem import FrameCache
    from recon_core.training.data import load_scan
    from recon_core.training.stream_schedule import clip_scale, streaming_outputs

    rows = []
    for f in sorted(glob.glob(os.path.join(data, f"{split}_*.npz"))):
        scan = load_scan(f)
        k, c, m = (torch.from_numpy(scan[key]) for key in ("kspace", "coords", "maps"))
        with torch.no_grad():
            cache = FrameCache(k, c, m, 3)
            s = clip_scale(cache, 0)
            x = streaming_outputs(model, cache, range(k.shape[0]), SCHEDULE["window"], SCHEDULE["lookahead"],
                                  SCHEDULE["updates"], s) * s
        rows.append(score(x.numpy(), scan["reference"], roi=True)["mean"])
    if not rows:
        raise SystemExit(f"no {split}_*.npz scans in {data} (rtcine train --data {data} builds them)")
    return {"psnr": float(np.mean([r["psnr"] for r in rows])), "ssim": float(np.mean([r["ssim"] for r in rows])),
            "scans": len(rows)}


def main(argv=None) -> int:
    from recon_core.networks.streaming import load_model, model_path

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--file", default="runs/bench_scan120.h5")
    p.add_argument("--splits", default="test,test-ood")
    p.add_argument("--data", default="runs/data")
    p.add_argument("--json")
    args = p.parse_args(argv)
    rows = []
    for name, path in MODELS.items():
        model, _ = load_model(model_path("imunne", path), "cpu")
        if args.file:
            rows.append({"model": name, "data": args.file, **file_quality(args.file, path)})
        for split in filter(None, args.splits.split(",")):
            rows.append({"model": name, "data": split, **split_quality(args.data, split, model)})
    print(f"{'model':10s} {'data':28s} {'PSNR dB':>8s} {'SSIM':>6s}   (real-time schedule, body ROI)")
    for r in rows:
        print(f"{r['model']:10s} {os.path.basename(r['data']):28s} {r['psnr']:8.2f} {r['ssim']:6.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=float)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
