"""Image quality along the scan: the real-time network and the streaming CS peer, frame by frame.

    PYTHONPATH=. python benchmarks/scan_length.py [--suite-dir runs/shifted96] [--part val]
        [--model-dir recon_core/models] [--lam 0.01] [--methods realtime,cs-stream] [--json out.json]
        [--png out.png]

Streams every scan of one part of a built suite (``rtcine suite build --frames 96`` for
3.75 s scans) through the chain, unpaced (the schedules' quality, not the machine's speed;
ESPIRiT installed at the frames a paced run gets it), with the real-time model and with the
streaming temporal-TV CS peer at ``--lam`` (tune it on the val part with ``rtcine compare
--suite shifted --methods cs-stream --unpaced``). Prints PSNR / SSIM (magnitude, least-squares
scaled, whole image) per method and scan over ranges of frames, and plots both against the
frame index, mean over the scans.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

METHODS = ("realtime", "cs-stream")


def per_frame(suite_dir: str, part: str, model_dir: str, lam: float, methods=METHODS, log=print) -> dict:
    """``{method: {scan: {"psnr": [...], "ssim": [...]}}}`` for every scan of ``part``."""
    from gadgets.images import image_frame
    from recon_core.evaluation import score
    from recon_core.mrd import read_images
    from recon_core.shifted_suite.acquisition import REFERENCE_GROUP
    from rtcine.suite_compare import Runner

    runner = Runner(suite_dir, model_dir, paced=False, use_cache=False, log=lambda *a: None)
    out = {m: {} for m in methods}
    for name in sorted(os.listdir(os.path.join(suite_dir, part))):
        path = os.path.join(suite_dir, part, name)
        reference = np.stack([image_frame(i) for i in read_images(path, REFERENCE_GROUP)])
        for method in methods:
            images, _ = runner.streamed(method, path, lam if method == "cs-stream" else None)
            s = score(images, reference)
            rows, m = s["frames"], s["mean"]
            out[method][name] = {k: [float(r[k]) for r in rows] for k in ("psnr", "ssim")}
            log(f"{method:10s} {part}/{name:20s} {len(rows)} frames  PSNR {m['psnr']:6.2f}  SSIM {m['ssim']:.3f}")
    return out


def ranges(frames: int) -> list[tuple[int, int]]:
    """The start-up (fallback maps), the first second, and the rest in two halves."""
    cuts = [0, min(8, frames), min(32, frames)]
    rest = frames - cuts[-1]
    if rest > 0:
        cuts += [cuts[-1] + rest // 2, frames]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def table(result: dict) -> str:
    frames = min(len(v["psnr"]) for per in result.values() for v in per.values())
    spans = ranges(frames)
    lines = ["| method | " + " | ".join(f"frames {a}-{b - 1}" for a, b in spans) + " | all |",
             "| --- |" + " --- |" * (len(spans) + 1)]
    for method, per in result.items():
        cells = []
        for a, b in spans + [(0, frames)]:
            p = np.mean([np.mean(v["psnr"][a:b]) for v in per.values()])
            s = np.mean([np.mean(v["ssim"][a:b]) for v in per.values()])
            cells.append(f"{p:.2f} / {s:.3f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: dict, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for method, per in result.items():
        frames = min(len(v["psnr"]) for v in per.values())
        for ax, key in zip(axes, ("psnr", "ssim")):
            ax.plot(np.arange(frames), np.mean([v[key][:frames] for v in per.values()], axis=0), label=method)
    for ax, label in zip(axes, ("PSNR (dB)", "SSIM")):
        ax.set_xlabel("frame (39 ms each)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite-dir", default="runs/shifted96")
    p.add_argument("--part", default="val")
    p.add_argument("--model-dir", default=os.path.join("recon_core", "models"))
    p.add_argument("--lam", type=float, default=0.01, help="the CS peer's lambda (tuned on val)")
    p.add_argument("--methods", default=",".join(METHODS), help="of " + ", ".join(METHODS))
    p.add_argument("--json", default="")
    p.add_argument("--png", default="")
    args = p.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"--methods: unknown {sorted(unknown)}; choose from {', '.join(METHODS)}")
    result = per_frame(args.suite_dir, args.part, args.model_dir, args.lam, methods)
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"suite_dir": args.suite_dir, "part": args.part, "lam": args.lam, "per_frame": result}, f)
    if args.png:
        plot(result, args.png, f"{args.part} scans of {args.suite_dir}, unpaced; CS peer lam {args.lam:g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
