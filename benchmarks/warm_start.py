"""Warm against cold start of the streaming IMUNNE: image quality per update budget.

    rtcine simulate runs/bench_scan.h5 --frames 40 --coils 8 --matrix 128 --spokes-per-frame 13 --snr 30 --seed 9100
    PYTHONPATH=. python benchmarks/warm_start.py runs/bench_scan.h5 [--model M.safetensors] [--json out.json]

Replays the file through the chain without pacing (ESPIRiT maps awaited, so every run uses
the same maps), 5-frame windows with 2 frames of look-ahead, for cold starts (every window
from CG-SENSE) at 2/5/10 updates per window and warm starts at 1/2/3/5; prints PSNR/SSIM
(body ROI) against the file's reference. Quality only: speed is `rtcine bench`'s job.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gadgets.images import image_frame  # noqa: E402
from gadgets.replay import replay  # noqa: E402
from recon_core.config import ReconConfig  # noqa: E402
from recon_core.evaluation import score  # noqa: E402
from recon_core.mrd import read_images  # noqa: E402
from recon_core.simulate import REFERENCE_GROUP  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input")
    p.add_argument("--model", default="", help="IMUNNE checkpoint (default: the shipped one)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    reference = np.stack([image_frame(i) for i in read_images(args.input, REFERENCE_GROUP)])
    rows = []
    print(f"{'start':6s} {'updates/window':>14s} {'PSNR dB':>8s} {'SSIM':>6s}")
    for warm, updates in [(False, 2), (False, 5), (False, 10), (True, 1), (True, 2), (True, 3), (True, 5)]:
        cfg = ReconConfig(recon="imunne", model=args.model, window=5, lookahead=2, max_iterations=updates,
                          tolerance=1e-6, wait_for_maps=True, warm_start=warm)
        images = {int(i.meta["rtcine_frame"]): image_frame(i) for i in replay(args.input, cfg)["images_list"]}
        idx = sorted(k for k in images if k < len(reference))
        q = score(np.stack([images[k] for k in idx]), reference[idx], roi=True)["mean"]
        rows.append({"warm": warm, "updates_per_window": updates, "psnr": q["psnr"], "ssim": q["ssim"]})
        print(f"{'warm' if warm else 'cold':6s} {updates:14d} {q['psnr']:8.2f} {q['ssim']:6.3f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
