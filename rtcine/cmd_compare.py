"""``rtcine compare``: every method side by side on held-out scans (the issue-3 table).

    rtcine compare --data runs/data --split test --methods gridding,cgsense,cs,cunet,altun,imunne \
        [--models recon_core/models] [--noise 0,0.05] [--json out.json]

    rtcine compare --suite shifted --suite-dir runs/shifted --methods all [--model-dir DIR] [--json out.json]

With ``--suite``, every method (``all``: gridding, cgsense, cs, bart, cunet, altun, imunne,
realtime, cs-stream) is scored on the suite's in-distribution and shifted test scans, per
axis and overall, lambdas tuned on its val part (see rtcine/suite_compare.py).

Networks are read from ``--models`` (``<kind>_small.safetensors``) or given one by one
with ``--model kind=PATH``. Each scan is reconstructed as a whole (all its frames as one
window); PSNR/SSIM/NRMSE are means over frames and scans (magnitude, LS-scaled, vs the
reference); seconds per frame is wall time on this machine.
"""
from __future__ import annotations

import json
import os
import time


def add_parser(sub):
    p = sub.add_parser("compare", help="all methods side by side on held-out scans (PSNR/SSIM/time)")
    p.add_argument("--data", default="runs/data")
    p.add_argument("--split", default="test", help="test (standard protocol) or test-ood (unseen settings)")
    p.add_argument("--scans", type=int, default=0, help="use only the first N scans (0: all)")
    p.add_argument("--methods", default="gridding,cgsense,cs,cunet,altun,imunne")
    p.add_argument("--models", default=os.path.join(os.path.dirname(os.path.dirname(__file__)), "recon_core",
                                                    "models"))
    p.add_argument("--model", action="append", default=[], metavar="KIND=PATH")
    p.add_argument("--noise", default="0", help="comma-separated k-space noise levels (fraction of RMS)")
    p.add_argument("--roi", action="store_true")
    p.add_argument("--imunne-max-iter", type=int, default=50,
                   help="iteration cap of implicit networks (they run to tol 1e-3 or this many iterations)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--suite", choices=("shifted",), help="compare on a built suite of ISMRMRD files instead "
                   "(in-distribution and shifted scans, streaming methods through the chain; rtcine/suite_compare.py)")
    p.add_argument("--suite-dir", default="runs/shifted", help="with --suite: the suite's folder")
    p.add_argument("--parts", default="indist,test", help="with --suite: parts to score (indist, test, val)")
    p.add_argument("--model-dir", help="with --suite: folder of the network models (<kind>_small.safetensors, "
                   "imunne_rt_small.safetensors); default --models")
    p.add_argument("--no-cache", action="store_true", help="with --suite: recompute cached results")
    p.add_argument("--lams", action="append", default=[], metavar="METHOD=L1,L2,...",
                   help="with --suite: lambda grid tuned on val for cs, bart or cs-stream (default: "
                        "rtcine/suite_compare.py LAM_GRIDS)")
    p.add_argument("--cached-only", action="store_true", help="with --suite: the table from cached results only "
                   "(nothing is reconstructed)")
    p.add_argument("--unpaced", action="store_true", help="with --suite: replay the streaming methods unpaced "
                   "(schedule quality without scanner pacing) instead of at scanner pace")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="with --suite: a chain setting over the realtime preset for the streaming methods "
                        "(realtime, cs-stream; e.g. first_maps_grid=48), as rtcine replay --set")
    p.set_defaults(func=run)


def stream_overrides(items: list[str]) -> dict:
    """``--set KEY=VALUE`` items as typed ReconConfig fields (checked as the chain checks them)."""
    from recon_core.config import ReconConfig

    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"rtcine compare: --set {item!r}: expected KEY=VALUE")
        values[key.strip()] = value.strip()
    typed = ReconConfig.from_mapping(values, preset="realtime")
    return {key: getattr(typed, key) for key in values}


def _model_paths(args) -> dict:
    from recon_core.networks import REGISTRY
    from recon_core.networks.unrolled import MODELS

    # every kind build_model knows, as the shipped file of --models
    paths = {kind: os.path.join(args.models, f"{kind}_small.safetensors") for kind in MODELS + tuple(REGISTRY)}
    for item in args.model:
        kind, path = item.split("=", 1)
        paths[kind] = path
    return paths


def run_suite(args) -> int:
    from rtcine.suite_compare import ALL_METHODS, compare_suite, format_table

    methods = ALL_METHODS if args.methods == "all" else tuple(args.methods.split(","))
    t0 = time.perf_counter()
    result = compare_suite(args.suite_dir, list(methods), args.model_dir or args.models,
                           parts=tuple(args.parts.split(",")), imunne_max_iter=args.imunne_max_iter,
                           use_cache=not args.no_cache, paced=not args.unpaced, cached_only=args.cached_only,
                           lam_grids={k: tuple(float(v) for v in g.split(",")) for k, g in
                                      (item.split("=", 1) for item in args.lams)},
                           stream_overrides=stream_overrides(args.set),
                           log=lambda m: print(m, flush=True))
    print()
    print(format_table(result))
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def run(args) -> int:
    if args.suite:
        return run_suite(args)
    from tqdm import tqdm

    from recon_core.evaluation import classical_methods, compare
    from recon_core.networks.checkpoint import load_checkpoint
    from recon_core.networks.evaluation import network_method
    from recon_core.training.data import load_scan, split_file, split_files

    files = split_files(args.data, args.split)
    if args.scans:
        files = files[:args.scans]
    if not files:
        raise FileNotFoundError(f"no {split_file(args.split, '*')} scans in {args.data} (build them with "
                                f"python -c \"from recon_core.training.data import build_split; "
                                f"build_split('{args.data}', '{args.split}', 8)\")")
    scans = [load_scan(f) for f in files]
    available = classical_methods()
    paths = _model_paths(args)
    methods = {}
    for name in args.methods.split(","):
        if name in available:
            methods[name] = available[name]
        elif name in paths:
            model, meta, _ = load_checkpoint(paths[name])
            # the implicit network runs to its fixed point (tol 1e-3, at most --imunne-max-iter)
            kw = {"max_iter": args.imunne_max_iter, "tol": 1e-3} if meta["kind"] == "imunne" else {}
            methods[name] = network_method(model, **kw)
        else:
            raise ValueError(f"unknown method {name!r}")
    results = {}
    for level in [float(x) for x in args.noise.split(",")]:
        with tqdm(total=len(scans), desc=f"compare noise={level:g}", unit="scan") as bar:
            results[level] = compare(scans, methods, noise=level, roi=args.roi,
                                     progress=lambda i: bar.update(i - bar.n))
        print(f"\n{args.split}: {len(scans)} scans, k-space noise {level:g} x RMS")
        print(f"{'method':14s} {'PSNR dB':>8s} {'SSIM':>6s} {'NRMSE':>6s} {'DC res':>7s} {'ms/frame':>9s} "
              f"{'iters':>6s}")
        for name, r in results[level].items():
            print(f"{name:14s} {r['psnr']:8.2f} {r['ssim']:6.3f} {r['nrmse']:6.3f} {r['dc_residual']:7.3f} "
                  f"{r['seconds_per_frame'] * 1e3:9.1f} {r['iterations']:6.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({str(k): v for k, v in results.items()}, f, indent=1)
    return 0
