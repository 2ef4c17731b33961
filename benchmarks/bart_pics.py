"""Compressed sensing for real-time radial cine: our temporal TV vs BART's ``pics``.

1. Sweep (validation scans ``runs/data/val_*.npz``): PSNR (per-frame magnitude, LS-scaled, vs
   the reference; mean over frames and scans) of our temporal-TV CS for each relative
   ``lam`` and data weighting, at several iteration counts, and of
   ``bart pics -S -i ITER -R T:1024:0:LAM -t traj ksp maps out`` for each BART ``lam``.
2. Test (held-out ``runs/data/test_*.npz``): mean PSNR/SSIM and time per frame of gridding,
   CG-SENSE (8 iterations), our temporal TV at its best setting, BART pics temporal TV at its
   best ``lam`` (and sigpy's per-frame L1-wavelet with ``--sigpy``).

Everything single-threaded (``torch.set_num_threads(1)``, ``OMP_NUM_THREADS=1`` for bart):
the machine is shared. Time per frame = wall time of the whole reconstruction of a scan
(all its frames at once: operator set-up, NUFFTs, iterations; for BART the ``bart pics``
process, not our .cfl export) divided by its number of frames.

    python benchmarks/bart_pics.py --json runs/cs/all.json           # sweep (4 val scans) + test (4 scans)
    python benchmarks/bart_pics.py --no-sweep --bart-lam 0.002 --sigpy --sigpy-lam 0.01 --json out.json
    python benchmarks/bart_pics.py --no-test --no-sweep-bart ...      # parts: see --help

Without a sweep, ours runs at the defaults of :mod:`recon_core.compressed_sensing` (the best
of the sweep recorded in docs/performance.md, "Compressed sensing against BART and sigpy").
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from recon_core.bart_io import bart_available, pics
from recon_core.compressed_sensing import (DEFAULT_CG_ITERATIONS, DEFAULT_ITERATIONS, DEFAULT_LAM,
                                           DEFAULT_WEIGHTING, l1_wavelet_sigpy, make_tv_operator, tv_solve)
from recon_core.metrics import psnr, ssim
from recon_core.reconstructors import cg_sense, flatten_kspace, gridding
from recon_core.training.data import load_scan, split_file, split_files


#: BART's best temporal-TV weight on the validation sweep (bart pics -i 30), used without a sweep.
BART_DEFAULT_LAM = 0.002


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def mean_psnr(x: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean([psnr(a, b) for a, b in zip(x, ref)]))


def mean_ssim(x: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean([ssim(a, b) for a, b in zip(x, ref)]))


def scans(split: str, count: int, data: str) -> list[str]:
    paths = split_files(data, split)
    if not paths:
        sys.exit(f"no {split_file(split, '*')} in {data}")
    return paths[:count] if count else paths


def tensors(scan):
    return tuple(torch.from_numpy(scan[k]) for k in ("kspace", "coords", "maps"))


def ours(scan, lam, iterations, weighting, cg_iterations=DEFAULT_CG_ITERATIONS, callback=None):
    """Our temporal TV; returns (images, seconds) with the operator set-up timed."""
    k, c, m = tensors(scan)
    t0 = time.perf_counter()
    with torch.no_grad():
        op = make_tv_operator(c, m, weighting)
        res = tv_solve(op, op.weigh(flatten_kspace(k)), lam=lam, iterations=iterations,
                       cg_iterations=cg_iterations, callback=callback)
    return res.x.numpy(), time.perf_counter() - t0


def sweep(paths, a, log):
    """Validation sweep of ours (lam x weighting x iterations) and BART (lam)."""
    checkpoints = sorted(set(ints(a.checkpoints) + [a.sweep_iterations]))
    out = {"ours": {}, "bart": {}, "scans": [os.path.basename(p) for p in paths],
           "iterations_checkpoints": checkpoints, "bart_iterations": a.bart_iterations}
    for path in paths:
        scan = load_scan(path)
        ref = scan["reference"]
        name = os.path.basename(path)
        if a.sweep_ours:
            for weighting in a.weightings.split(","):
                for lam in floats(a.lams):
                    rows = {}

                    def cb(it, x):
                        if it in checkpoints:
                            rows[it] = mean_psnr(x.numpy(), ref)

                    _, sec = ours(scan, lam, max(checkpoints), weighting, callback=cb)
                    for it, v in rows.items():
                        out["ours"].setdefault(f"{weighting}|{lam:g}|{it}", {})[name] = v
                    log(f"{name} ours {weighting:7s} lam={lam:<6g} "
                        + " ".join(f"it{it}:{v:.2f}" for it, v in sorted(rows.items())) + f"  ({sec:.0f} s)")
        if a.sweep_bart:
            for lam in floats(a.bart_lams):
                x, sec = pics(scan["kspace"], scan["coords"], scan["maps"], lam, a.bart_iterations)
                out["bart"].setdefault(f"{lam:g}", {})[name] = mean_psnr(x, ref)
                log(f"{name} bart lam={lam:<6g} {out['bart'][f'{lam:g}'][name]:.2f}  ({sec:.0f} s)")
    if a.sigpy:
        for path in paths[:a.sigpy_val_scans]:
            scan = load_scan(path)
            name = os.path.basename(path)
            for lam in floats(a.sigpy_lams):
                x, sec = timed_np(lambda k, c, m: l1_wavelet_sigpy(k, c, m, lam, a.sigpy_iterations), scan)
                out.setdefault("sigpy", {}).setdefault(f"{lam:g}", {})[name] = mean_psnr(x, scan["reference"])
                log(f"{name} sigpy L1-wavelet lam={lam:<6g} {out['sigpy'][f'{lam:g}'][name]:.2f}  ({sec:.0f} s)")
    summary = {"ours": {k: float(np.mean(list(v.values()))) for k, v in out["ours"].items()},
               "bart": {k: float(np.mean(list(v.values()))) for k, v in out["bart"].items()},
               "sigpy": {k: float(np.mean(list(v.values()))) for k, v in out.get("sigpy", {}).items()}}
    out["mean"] = summary
    if summary["ours"]:
        best = max(summary["ours"], key=summary["ours"].get)
        w, lam, it = best.split("|")
        out["best_ours"] = {"weighting": w, "lam": float(lam), "iterations": int(it), "psnr": summary["ours"][best]}
    if summary["bart"]:
        best = max(summary["bart"], key=summary["bart"].get)
        out["best_bart"] = {"lam": float(best), "psnr": summary["bart"][best]}
    if summary["sigpy"]:
        best = max(summary["sigpy"], key=summary["sigpy"].get)
        out["best_sigpy"] = {"lam": float(best), "psnr": summary["sigpy"][best]}
    return out


def evaluate(paths, a, cfg, log):
    """Test table: mean PSNR/SSIM and time per frame for each method."""
    methods = {
        "gridding": lambda s: timed_torch(gridding, s),
        "cg-sense (8 it)": lambda s: timed_torch(lambda k, c, m: cg_sense(k, c, m, iterations=8), s),
        f"temporal TV, ours ({cfg['weighting']}, lam {cfg['lam']:g}, {cfg['iterations']} it)":
            lambda s: ours(s, cfg["lam"], cfg["iterations"], cfg["weighting"]),
    }
    if bart_available():
        methods[f"BART pics temporal TV (lam {cfg['bart_lam']:g}, -i {a.bart_iterations})"] = \
            lambda s: pics(s["kspace"], s["coords"], s["maps"], cfg["bart_lam"], a.bart_iterations)
    else:
        log("bart not on PATH: BART row skipped")
    if a.sigpy:
        methods[f"L1-wavelet, sigpy per frame (lam {a.sigpy_lam:g}, {a.sigpy_iterations} it)"] = \
            lambda s: timed_np(lambda k, c, m: l1_wavelet_sigpy(k, c, m, a.sigpy_lam, a.sigpy_iterations), s)
    rows = {name: {"psnr": [], "ssim": [], "ms_per_frame": []} for name in methods}
    for path in paths:
        scan = load_scan(path)
        ref, frames = scan["reference"], scan["kspace"].shape[0]
        for name, run in methods.items():
            x, sec = run(scan)
            r = rows[name]
            r["psnr"].append(mean_psnr(x, ref))
            r["ssim"].append(mean_ssim(x, ref))
            r["ms_per_frame"].append(1e3 * sec / frames)
            log(f"{os.path.basename(path)} {name}: PSNR {r['psnr'][-1]:.2f} SSIM {r['ssim'][-1]:.3f} "
                f"{r['ms_per_frame'][-1]:.0f} ms/frame")
    return {name: {"psnr": float(np.mean(r["psnr"])), "ssim": float(np.mean(r["ssim"])),
                   "ms_per_frame": float(np.mean(r["ms_per_frame"])), "per_scan": r}
            for name, r in rows.items()}


def timed_torch(fn, scan):
    k, c, m = tensors(scan)
    t0 = time.perf_counter()
    with torch.no_grad():
        x = fn(k, c, m)
    return x.numpy(), time.perf_counter() - t0


def timed_np(fn, scan):
    t0 = time.perf_counter()
    x = fn(scan["kspace"], scan["coords"], scan["maps"])
    return x, time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="runs/data")
    p.add_argument("--val-scans", type=int, default=4, help="validation scans for the sweep (0: all)")
    p.add_argument("--test-split", default="test", help="test or test-ood")
    p.add_argument("--test-scans", type=int, default=4, help="held-out scans for the table (0: all)")
    p.add_argument("--no-sweep", dest="do_sweep", action="store_false")
    p.add_argument("--no-sweep-ours", dest="sweep_ours", action="store_false")
    p.add_argument("--no-sweep-bart", dest="sweep_bart", action="store_false")
    p.add_argument("--no-test", dest="do_test", action="store_false")
    p.add_argument("--lams", default="0.003,0.005,0.01,0.03,0.1", help="our relative temporal-TV weights")
    p.add_argument("--weightings", default="density,none")
    p.add_argument("--sweep-iterations", type=int, default=40)
    p.add_argument("--checkpoints", default="10,20,30,40", help="iteration counts scored in the sweep")
    p.add_argument("--bart-lams", default="0.0005,0.001,0.002,0.005,0.01,0.02")
    p.add_argument("--bart-iterations", type=int, default=30)
    p.add_argument("--lam", type=float, default=None,
                   help=f"ours for the test (default: sweep best, else {DEFAULT_LAM})")
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--weighting", default=None)
    p.add_argument("--bart-lam", type=float, default=None,
                   help=f"BART lam for the test (default: sweep best, else {BART_DEFAULT_LAM})")
    p.add_argument("--sigpy", action="store_true", help="add sigpy's per-frame L1-wavelet")
    p.add_argument("--sigpy-lam", type=float, default=None, help="for the test (default: sweep best, else 0.01)")
    p.add_argument("--sigpy-lams", default="0.001,0.003,0.01,0.03,0.1", help="sweep (slow: per frame, sigpy NUFFT)")
    p.add_argument("--sigpy-val-scans", type=int, default=1)
    p.add_argument("--sigpy-iterations", type=int, default=40)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"

    def log(msg):
        print(msg, flush=True)

    result = {"machine": f"{os.cpu_count()} CPUs, torch threads 1, OMP_NUM_THREADS=1", "argv": sys.argv[1:]}
    if a.do_sweep:
        if a.sweep_bart and not bart_available():
            log("bart not on PATH: BART sweep skipped")
            a.sweep_bart = False
        result["sweep"] = sw = sweep(scans("val", a.val_scans, a.data), a, log)
        log("\nvalidation sweep, mean PSNR over scans (dB):")
        for key, v in sorted(sw["mean"]["ours"].items(), key=lambda kv: (kv[0].split("|")[0],
                             float(kv[0].split("|")[1]), int(kv[0].split("|")[2]))):
            log(f"  ours {key:24s} {v:.2f}")
        for key, v in sorted(sw["mean"]["bart"].items(), key=lambda kv: float(kv[0])):
            log(f"  bart lam={key:8s} {v:.2f}")
        for key, v in sorted(sw["mean"]["sigpy"].items(), key=lambda kv: float(kv[0])):
            log(f"  sigpy L1-wavelet lam={key:8s} {v:.2f}  ({a.sigpy_val_scans} scan(s))")
        log(f"best ours: {sw.get('best_ours')}  best bart: {sw.get('best_bart')}  best sigpy: {sw.get('best_sigpy')}")
    best_o = result.get("sweep", {}).get("best_ours", {})
    best_b = result.get("sweep", {}).get("best_bart", {})
    cfg = {"lam": a.lam if a.lam is not None else best_o.get("lam", DEFAULT_LAM),
           "iterations": a.iterations or best_o.get("iterations", DEFAULT_ITERATIONS),
           "weighting": a.weighting or best_o.get("weighting", DEFAULT_WEIGHTING),
           "bart_lam": a.bart_lam if a.bart_lam is not None else best_b.get("lam", BART_DEFAULT_LAM)}
    best_s = result.get("sweep", {}).get("best_sigpy", {})
    a.sigpy_lam = a.sigpy_lam if a.sigpy_lam is not None else best_s.get("lam", 0.01)
    result["config"] = cfg
    if a.do_test:
        table = evaluate(scans(a.test_split, a.test_scans, a.data), a, cfg, log)
        result["test"] = {"split": a.test_split, "scans": a.test_scans, "methods": table}
        log(f"\n{a.test_split} scans ({a.test_scans or 'all'}), mean over scans of per-frame means:")
        log(f"| {'method':62s} | PSNR (dB) | SSIM  | time/frame (ms) |")
        log(f"| {'-' * 62} | --------- | ----- | --------------- |")
        for name, r in table.items():
            log(f"| {name:62s} | {r['psnr']:9.2f} | {r['ssim']:.3f} | {r['ms_per_frame']:15.0f} |")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
        log(f"wrote {a.json}")


if __name__ == "__main__":
    main()
