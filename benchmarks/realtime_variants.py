"""The real-time model with a changed memory weight or streaming schedule, on val scans only.

    PYTHONPATH=. python benchmarks/realtime_variants.py [--model PATH] [--memory M] [--arch KEY=VALUE ...]
        [--window W --lookahead L --updates U] [--data runs/data [--scan-frames T]] [--suite runs/shifted]
        [--json out.json]

Scores the variant, unpaced (the schedule's quality, not the machine's speed), on the val
scans a model may be tuned on: the val split of ``rtcine train``'s data folder (training
simulator, every frame streamed from the first, whole image) and the ``val`` part of the
shifted suite (through the chain, as ``rtcine compare --suite shifted --unpaced``). PSNR /
SSIM: magnitude, least-squares scaled, mean over frames then scans. ``--memory`` replaces
the model's ``arch: memory`` (the pull toward the stream's previous image), ``--arch`` any
other ``arch`` key (a YAML value, e.g. ``support=true``, ``tikhonov=[0.01,0.1]``); the schedule
defaults to the model's YAML ``streaming:``.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recon_core.evaluation import score                                    # noqa: E402
from recon_core.networks.checkpoint import load_checkpoint, model_files     # noqa: E402
from recon_core.networks.problem import FrameCache                           # noqa: E402
from recon_core.networks.streaming import model_path                         # noqa: E402
from recon_core.training.data import SCAN_FRAMES, load_scan, split_file     # noqa: E402
from recon_core.training.stream_schedule import clip_scale, streaming_outputs  # noqa: E402
from rtcine.suite_compare import NETWORK_FILES, Runner                      # noqa: E402


def variant_dir(model: str, memory: float | None, into: str, arch: dict | None = None) -> str:
    """A model folder for the suite runner: the model's files under the real-time model's
    name, its YAML's ``arch: memory`` set to ``memory`` (unless None) and the ``arch`` keys
    of ``arch`` set."""
    weights, card = model_files(model)
    shutil.copy(weights, os.path.join(into, NETWORK_FILES["realtime"]))
    with open(card) as f:
        meta = yaml.safe_load(f)
    if memory is not None:
        meta["arch"]["memory"] = float(memory)
    meta["arch"].update(arch or {})
    with open(os.path.join(into, model_files(NETWORK_FILES["realtime"])[1]), "w") as f:
        yaml.safe_dump(meta, f)
    return into


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="imunne_rt")
    p.add_argument("--memory", type=float, default=None)
    p.add_argument("--arch", action="append", default=[], metavar="KEY=VALUE",
                   help="set an arch key of the model's YAML (value parsed as YAML)")
    p.add_argument("--window", type=int, default=None)
    p.add_argument("--lookahead", type=int, default=None)
    p.add_argument("--updates", type=int, default=None)
    p.add_argument("--data", default="runs/data")
    p.add_argument("--scan-frames", type=int, default=SCAN_FRAMES, help="the in-distribution val scans' length "
                   "(rtcine train --scan-frames)")
    p.add_argument("--suite", default="runs/shifted")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        arch = {}
        for item in args.arch:
            key, sep, value = item.partition("=")
            if not sep:
                p.error(f"--arch {item!r}: expected KEY=VALUE")
            arch[key] = yaml.safe_load(value)
        folder = variant_dir(model_path("imunne", args.model), args.memory, tmp, arch)
        model, meta, _ = load_checkpoint(os.path.join(folder, NETWORK_FILES["realtime"]))
        model.eval()
        trained = meta.get("streaming") or {"window": 2, "lookahead": 1, "updates": 2}
        w = args.window or trained["window"]
        la = trained["lookahead"] if args.lookahead is None else args.lookahead
        u = args.updates or trained["updates"]
        label = f"memory {model.block.memory:g}, window {w}, look-ahead {la}, {u} update(s)" + "".join(
            f", {k} {v}" for k, v in arch.items())
        result = {"model": args.model, "variant": label, "indist_val": {}, "shifted_val": {}}
        seeds = "[0-9]" * 4                 # val seeds 5000-...; "*" would also match "5000_f32"
        for path in sorted(glob.glob(os.path.join(args.data, split_file("val", seeds, args.scan_frames)))):
            s = load_scan(path)
            k, c, m = (torch.as_tensor(s[n]) for n in ("kspace", "coords", "maps"))
            cache = FrameCache(k, c, m)
            scale = clip_scale(cache, 0)
            with torch.no_grad():
                x = streaming_outputs(model, cache, range(k.shape[0]), w, la, u, scale)
            r = score((x * scale).numpy(), s["reference"])["mean"]
            result["indist_val"][os.path.basename(path)] = r
            print(f"{label}: {os.path.basename(path)} {r['psnr']:.2f} / {r['ssim']:.3f}", flush=True)
        runner = Runner(args.suite, folder, paced=False, log=lambda *a: None,
                        stream_overrides={"window": w, "lookahead": la, "max_iterations": u})
        runner.save = lambda: None          # a variant's results stay out of the suite's cache
        for path in sorted(glob.glob(os.path.join(args.suite, "val", "*.h5"))):
            rel = os.path.relpath(path, args.suite)
            r = runner.run("realtime", rel)
            result["shifted_val"][rel] = {k: r[k] for k in ("psnr", "ssim")}
            print(f"{label}: {rel} {r['psnr']:.2f} / {r['ssim']:.3f}", flush=True)
    for part in ("indist_val", "shifted_val"):
        rows = list(result[part].values())
        if rows:
            result[part + "_mean"] = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim")}
            print(f"{label}: {part} ({len(rows)}) {result[part + '_mean']['psnr']:.2f} / "
                  f"{result[part + '_mean']['ssim']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
