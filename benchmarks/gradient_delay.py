"""Gradient delays: RING estimates (ours and ``bart estdelay -R``) over a grid of simulated
delays, CG-SENSE quality with the correction off / auto / the true delay, and the cost of
the chain's correction stage.

1. Estimates: for every (dx, dy) of ``--grid`` x ``--grid`` a simulated scan (``--matrix``,
   8 coils, 13 golden-angle spokes per frame, SNR 30); ours from the first ``--frames``
   frames as the chain pools them, BART's from the same spokes written as one BART frame
   (``bart estdelay -R -r 8 traj ksp``: ``-r 8`` searches intersections within +-4 samples,
   as ours; BART's default region 1.5 cannot see delays beyond ~0.7 samples and warns),
   converted with :func:`recon_core.gradient_delay.from_bart`.
2. Quality: for each of ``--psnr-delays``, mean PSNR (body ROI, vs the simulated reference)
   of ``rtcine replay`` (CG-SENSE, ESPIRiT maps, waiting for them) with ``gradient_delay``
   off, auto and the true delay, and of the delay-free scan.
3. Cost: milliseconds per frame of the stage while calibrating and afterwards, and of the
   frame's density weights (prepared per frame) on nominal and corrected spokes.

    python benchmarks/gradient_delay.py --json runs/gradient_delay.json
    python benchmarks/gradient_delay.py --grid -2,0,2 --psnr-delays "1.5,-1;2,-2" --matrix 64
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")     # before numpy loads, as rtcine does (paced replays)
import numpy as np  # noqa: E402


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def simulate_scan(delay, matrix, frames, seed):
    from recon_core.simulate import SimulationConfig, simulate

    return simulate(SimulationConfig(frames=frames, coils=8, matrix=matrix, spokes_per_frame=13, snr=30, seed=seed,
                                     gradient_delay=tuple(delay)))


def bart_estimate(scan, frames, matrix):
    from recon_core.bart_io import bart_available, kspace_to_bart, traj_to_bart, write_cfl
    from recon_core.gradient_delay import from_bart

    if not bart_available():
        return None
    k, c = scan.kspace[:frames], scan.coords[:frames]
    t, coils, s, r = k.shape
    with tempfile.TemporaryDirectory(prefix="rtcine_estdelay_") as d:
        write_cfl(os.path.join(d, "k"), kspace_to_bart(k.transpose(1, 0, 2, 3).reshape(1, coils, t * s, r)))
        write_cfl(os.path.join(d, "t"), traj_to_bart(c.reshape(1, t * s, r, 2), matrix))
        out = subprocess.run(["bart", "estdelay", "-R", "-r", "8", "t", "k"], cwd=d, capture_output=True, text=True,
                             check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return from_bart(out.stdout.strip().splitlines()[-1])


def estimates(a, log):
    from recon_core.gradient_delay import estimate_delay

    rows = []
    for dx in floats(a.grid):
        for dy in floats(a.grid):
            scan = simulate_scan((dx, dy), a.matrix, a.frames, a.seed)
            ours = estimate_delay(scan.kspace[:a.frames], scan.coords[:a.frames])
            theirs = bart_estimate(scan, a.frames, a.matrix)
            row = {"true": [dx, dy], "ours": [ours.x, ours.y, ours.xy],
                   "bart": None if theirs is None else [theirs.x, theirs.y, theirs.xy]}
            rows.append(row)
            log(f"true {dx:+.2f},{dy:+.2f}  ours {ours.x:+.3f},{ours.y:+.3f},{ours.xy:+.3f}  "
                + ("bart -" if theirs is None else f"bart {theirs.x:+.3f},{theirs.y:+.3f},{theirs.xy:+.3f}"))
    err = lambda key: float(max(max(abs(r[key][0] - r["true"][0]), abs(r[key][1] - r["true"][1]), abs(r[key][2]))
                                for r in rows if r[key] is not None)) if any(r[key] for r in rows) else None
    gap = [max(abs(o - b) for o, b in zip(r["ours"], r["bart"])) for r in rows if r["bart"] is not None]
    summary = {"max_error_ours": err("ours"), "max_error_bart": err("bart"),
               "max_ours_vs_bart": float(max(gap)) if gap else None}
    log(f"largest error: ours {summary['max_error_ours']}, bart {summary['max_error_bart']}; "
        f"largest ours-bart difference {summary['max_ours_vs_bart']}")
    return {"rows": rows, "summary": summary}


def quality(a, log):
    import ismrmrd

    from gadgets.replay import replay
    from recon_core.config import ReconConfig
    from recon_core.evaluation import body_mask
    from recon_core.metrics import psnr
    from recon_core.simulate import write_dataset

    def run(scan, mode, realtime=False):
        images = []
        with tempfile.TemporaryDirectory(prefix="rtcine_gd_") as d:
            src = os.path.join(d, "in.h5")
            write_dataset(src, scan)
            cfg = ReconConfig.from_mapping(dict(recon="cgsense", wait_for_maps=not realtime, gradient_delay=mode))
            summary = replay(src, cfg, realtime=realtime, sink=images.append)
        x = np.stack([np.asarray(i.data)[0, 0] for i in images if isinstance(i, ismrmrd.Image)])
        mask = body_mask(scan.reference)
        return float(np.mean([psnr(p, q, mask) for p, q in zip(x, scan.reference)])), summary

    clean = run(simulate_scan((0.0, 0.0), a.matrix, a.psnr_frames, a.seed), "auto")[0]
    clean_off = run(simulate_scan((0.0, 0.0), a.matrix, a.psnr_frames, a.seed), "off")[0]
    log(f"delay-free: {clean_off:.2f} dB off, {clean:.2f} dB auto")
    rows = [{"true": [0.0, 0.0], "off": clean_off, "auto": clean, "given": clean_off}]
    for text in a.psnr_delays.split(";"):
        delay = floats(text)
        scan = simulate_scan(delay, a.matrix, a.psnr_frames, a.seed)
        off = run(scan, "off")[0]
        auto, summary = run(scan, "auto")
        given = run(scan, ",".join(str(v) for v in delay))[0]
        rows.append({"true": delay, "off": off, "auto": auto, "given": given,
                     "estimate": summary.get("gradient_delay", "")})
        log(f"delay {text}: off {off:.2f}, auto {auto:.2f} ({summary.get('gradient_delay', '')}), "
            f"true {given:.2f} dB (delay-free {clean:.2f})")
    latency = {}
    scan = simulate_scan(floats(a.psnr_delays.split(";")[0]), a.matrix, a.latency_frames, a.seed) \
        if a.latency_frames else None
    for mode in ("off", "auto") if a.latency_frames else ():
        value, summary = run(scan, mode, realtime=True)
        lat = summary["latency_ms"]
        latency[mode] = {"psnr": value, "p50": lat.get("p50"), "p99": lat.get("p99"), "max": lat.get("max")}
        log(f"realtime replay, {a.latency_frames} frames, delay {a.psnr_delays.split(';')[0]}, gradient_delay "
            f"{mode}: latency p50 {lat.get('p50', float('nan')):.1f} ms, p99 {lat.get('p99', float('nan')):.1f} ms "
            f"(PSNR {value:.2f} dB)")
    return {"rows": rows, "realtime_latency": latency}


def cost(a, log):
    from gadgets.frames import Frame
    from gadgets.gradient_delay import gradient_delay_correction
    from recon_core.config import ReconConfig
    from recon_core.trajectory import density_compensation

    scan = simulate_scan((1.5, -1.0), a.matrix, a.cost_frames, a.seed)
    cfg = ReconConfig.from_mapping(dict(recon="cgsense", calibration_frames=10))
    frames = [Frame(f, scan.kspace[f], scan.coords[f].copy(), None, 0.0) for f in range(scan.kspace.shape[0])]
    source = iter(frames)
    stage = gradient_delay_correction(source, cfg)
    ms = []
    out = []
    for _ in frames:
        t0 = time.perf_counter()
        out.append(next(stage))
        ms.append(1e3 * (time.perf_counter() - t0))
    calib, after = ms[:cfg.calibration_frames], ms[cfg.calibration_frames:]

    def timed(fn, n=20):
        t = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            t.append(1e3 * (time.perf_counter() - t0))
        return float(np.median(t))

    dens_nominal = timed(lambda: density_compensation(scan.coords[0]))
    dens_corrected = timed(lambda: density_compensation(out[-1].coords))
    result = {"stage_ms_calibrating": {"median": float(np.median(calib)), "max": float(np.max(calib))},
              "stage_ms_after": {"median": float(np.median(after)), "max": float(np.max(after))} if after else None,
              "density_ms_nominal": dens_nominal, "density_ms_corrected_1.5,-1": dens_corrected}
    log(f"stage: {result['stage_ms_calibrating']['median']:.2f} ms/frame calibrating (max "
        f"{result['stage_ms_calibrating']['max']:.2f}), "
        + (f"{result['stage_ms_after']['median']:.3f} ms/frame after" if after else "")
        + f"; density weights {dens_nominal:.2f} ms nominal, {dens_corrected:.2f} ms corrected (1.5,-1)")
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", default="-2,-1,0,1,2", help="dx and dy values (samples) of the estimate grid")
    p.add_argument("--frames", type=int, default=10, help="frames pooled for the estimates (calibration_frames)")
    p.add_argument("--matrix", type=int, default=128)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--psnr-delays", default="1.5,-1;2,2;-2,1;2,-2", help="';'-separated dx,dy for the quality table")
    p.add_argument("--psnr-frames", type=int, default=16)
    p.add_argument("--cost-frames", type=int, default=40)
    p.add_argument("--latency-frames", type=int, default=100,
                   help="frames of the realtime replays (off, auto; 0: none)")
    p.add_argument("--no-estimates", dest="do_estimates", action="store_false")
    p.add_argument("--no-quality", dest="do_quality", action="store_false")
    p.add_argument("--no-cost", dest="do_cost", action="store_false")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)

    def log(msg):
        print(msg, flush=True)

    import torch
    torch.set_num_threads(1)
    result = {"matrix": a.matrix, "frames": a.frames}
    if a.do_estimates:
        result["estimates"] = estimates(a, log)
    if a.do_quality:
        result["quality"] = quality(a, log)
    if a.do_cost:
        result["cost"] = cost(a, log)
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
