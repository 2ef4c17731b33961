"""The DUNE and FLAT papers' claims, tested side by side with the baselines: one table of
PSNR, SSIM, data-consistency residual, time per frame and training cost, on the
in-distribution test split and on the shifted suite's test part.

    PYTHONPATH=. python benchmarks/claims_table.py \\
        --model "FLAT=runs/claims/flat_w1/model.safetensors" \\
        --model "FLAT final-only=runs/claims/flat_w0/model.safetensors" \\
        --model "DUNE=runs/claims/dune_vjp/model.safetensors" ... \\
        [--baselines cgsense,cs,altun,imunne] [--data runs/data --split test] \\
        [--suite runs/shifted --part test] [--cs-lam 0.01] [--json docs/claims_table.json]

- **In distribution**: the simulator's ``--split`` scans, scored on the body ROI (as
  ``rtcine compare --split test --roi``). **Shifted**: the suite's ``--part`` files through
  the chain's input stages, whole image (as ``rtcine compare --suite shifted``).
- Every method reconstructs each scan's frames as one window (``recon_core.evaluation.compare``):
  PSNR / SSIM (magnitude, least-squares scaled), the data-consistency residual
  ``||A x - y|| / ||y||`` and seconds per frame.
- Baselines: ``cgsense`` (8 iterations), ``cs`` (temporal TV at ``--cs-lam``, the lambda
  tuned on the suite's val part), ``altun`` and ``imunne`` (the shipped models; IMUNNE to
  tol 1e-3, at most 50 iterations).
- Training cost comes from each model's YAML (steps, seconds per step, peak RSS).
- FLAT-kind models also report the PSNR after each step (the paper's claim: monotone
  improvement step by step) on the in-distribution scans.

Time per frame is that of this machine in this run: say whether other jobs were running.
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

from recon_core.evaluation import classical_methods, compare  # noqa: E402
from recon_core.networks.evaluation import network_method  # noqa: E402
from recon_core.networks.flat import psnr_per_step  # noqa: E402
from recon_core.networks.problem import make_problem  # noqa: E402
from recon_core.training.checkpoint import load_checkpoint  # noqa: E402
from recon_core.training.data import load_scan, split_file, split_files  # noqa: E402

SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recon_core", "models")


def methods_for(models: dict, baselines: list[str], cs_lam: float) -> tuple[dict, dict]:
    """``({name: fn(kspace, coords, maps)}, {name: (model, meta)})`` for the table's rows."""
    fns, nets = {}, {}
    classical = classical_methods()
    for b in baselines:
        if b == "cgsense":
            fns["CG-SENSE (8 it.)"] = classical["cgsense"]
        elif b == "cs":
            from recon_core.compressed_sensing import temporal_tv

            def cs(k, c, m):
                with torch.no_grad():
                    return temporal_tv(torch.from_numpy(k), torch.from_numpy(c), torch.from_numpy(m),
                                       lam=cs_lam).numpy()
            fns[f"t-TV CS, lam {cs_lam:g}"] = cs
        elif b in ("altun", "imunne"):
            models = {("Alt-UN (shipped)" if b == "altun" else "IMUNNE (shipped)"):
                      os.path.join(SHIPPED, f"{b}_small.safetensors"), **models}
        else:
            raise SystemExit(f"unknown baseline {b!r}: expected cgsense, cs, altun, imunne")
    for name, path in models.items():
        model, meta, _ = load_checkpoint(path)
        kw = {"max_iter": 50, "tol": 1e-3} if meta["kind"] == "imunne" else {}
        fns[name] = network_method(model, **kw)
        nets[name] = (model, meta)
    return fns, nets


def flat_steps(model, scans) -> list[float]:
    """Mean PSNR after each FLAT step (state 0: the CG-SENSE start) over ``scans``."""
    curves = []
    for scan in scans:
        k, c, m = (torch.from_numpy(scan[key]) for key in ("kspace", "coords", "maps"))
        with torch.no_grad():
            problem = make_problem(k, c, m, cg_iterations=3)
            _, info = model(problem)
        curves.append(psnr_per_step([s * problem.scale for s in info["states"]], scan["reference"]))
    return np.mean(curves, 0).tolist()


def training_cost(meta: dict) -> dict:
    t = meta.get("training") or {}
    out = {k: t[k] for k in ("steps", "seconds_per_step", "peak_rss_mb") if k in t}
    arch = meta.get("arch") or {}
    out.update({f"arch_{k}": arch[k] for k in ("dc", "steps", "iterations") if k in arch})
    if "init" in t:
        out["init"] = t["init"]
    if "loss" in t:
        out["loss"] = t["loss"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--baselines", default="cgsense,cs,altun,imunne")
    ap.add_argument("--data", default="runs/data")
    ap.add_argument("--split", default="test")
    ap.add_argument("--scans", type=int, default=0, help="first N scans of the split (0: all)")
    ap.add_argument("--suite", default="runs/shifted")
    ap.add_argument("--part", default="test")
    ap.add_argument("--cs-lam", type=float, default=0.01)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "0")) or torch.get_num_threads())

    models = dict(item.split("=", 1) for item in args.model)
    fns, nets = methods_for(models, [b for b in args.baselines.split(",") if b], args.cs_lam)
    files = split_files(args.data, args.split)
    files = files[:args.scans] if args.scans else files
    if not files:
        raise SystemExit(f"no {split_file(args.split, '*')} scans in {args.data}")
    suite_files = sorted(glob.glob(os.path.join(args.suite, args.part, "*.h5")))
    if not suite_files:
        raise SystemExit(f"no .h5 scans in {os.path.join(args.suite, args.part)} (rtcine suite build)")
    from rtcine.suite_compare import load_scan_file

    print(f"in distribution: {len(files)} {args.split} scans (ROI); shifted: {len(suite_files)} "
          f"{args.part} files (whole image); {len(fns)} methods", flush=True)
    indist = [load_scan(f) for f in files]
    res_in = compare(indist, fns, roi=True, progress=lambda i: print(f"  in-distribution scan {i}/{len(files)}",
                                                                    flush=True))
    shifted = [load_scan_file(f) for f in suite_files]
    res_sh = compare(shifted, fns, roi=False, progress=lambda i: print(f"  shifted scan {i}/{len(suite_files)}",
                                                                     flush=True))
    rows = {}
    for name in fns:
        row = {"in_distribution": res_in[name], "shifted": res_sh[name]}
        if name in nets:
            model, meta = nets[name]
            row["training"] = training_cost(meta)
            if meta["kind"] == "flat":
                row["psnr_per_step"] = flat_steps(model, indist)
        rows[name] = row
    print("\n| method | in-distribution PSNR / SSIM / DC | shifted PSNR / SSIM / DC | ms/frame | "
          "training steps, s/step, peak MB |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        a, b, t = r["in_distribution"], r["shifted"], r.get("training", {})
        cost = (f"{t.get('steps', '-')}, {t.get('seconds_per_step', float('nan')):.2f}, "
                f"{t.get('peak_rss_mb', float('nan')):.0f}") if t else "-"
        print(f"| {name} | {a['psnr']:.2f} / {a['ssim']:.3f} / {a['dc_residual']:.3f} | {b['psnr']:.2f} / "
              f"{b['ssim']:.3f} / {b['dc_residual']:.3f} | {1e3 * a['seconds_per_frame']:.0f} | {cost} |")
    for name, r in rows.items():
        if "psnr_per_step" in r:
            print(f"{name}: PSNR per step " + " -> ".join(f"{p:.2f}" for p in r["psnr_per_step"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"split": args.split, "scans": len(files), "suite_part": args.part,
                       "suite_files": len(suite_files), "cs_lam": args.cs_lam, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
