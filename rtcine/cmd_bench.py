"""``rtcine bench``: replay a file at scanner pace with every method and measure them.

    rtcine bench IN.h5 [--methods gridding,cgsense,imunne-cold,imunne-warm,imunne-rt]
                       [--device cpu|cuda] [--speed 1] [--json OUT.json] [--histogram lat.png]

Each method runs in a fresh process (so its peak memory is its own), warmed up first as a
server is before a scan (ESPIRiT imported and run once, the reconstructor built once), on
the same file at scanner pace (acquisitions paced by their time stamps, read on a thread that stamps
their arrival). Reported per method: latency from a frame's last spoke to its image
(p50/p95/p99/max), sustained output frames per second and its ratio to the acquisition
frame rate, iterations per frame, skipped frames, peak resident memory, and PSNR/SSIM
against the file's reference frames (body ROI; ``PSNR*`` over the steady-state frames, those
with the ESPIRiT maps, which the first ~1 s of a scan lacks). For network methods, the
reference PSNR of the kind's model (``--model``, else the shipped one; for ``imunne-rt`` the shipped IMUNNE,
not the real-time model) run offline to convergence (all frames in one window, 50
iterations, tol 1e-4) is given too, computed once per kind after the timed runs.

``--preset NAME`` (repeatable) benches a configuration preset (``rtcine replay --preset``:
realtime, causal, quality, cgsense, gridding), alone or after ``--methods``.

Method presets (override any key with ``--set key=value``, applied to all):
  gridding, cgsense                   the classical chain
  imunne-cold                         network, 5-frame windows (2 look-ahead), 10 updates per
                                      window, every window from its CG-SENSE start
  imunne-warm                         the same windows, warm start from the previous window,
                                      3 updates per window (1 already beats the cold start's 10)
  altun, dune, flat                   a finite unrolled network of that kind (``--model NAME=PATH``;
                                      altun ships), 5-frame windows from CG-SENSE
  imunne-rt                           real-time setting: the shipped real-time model
                                      (imunne_rt_small: IMUNNE fine-tuned for this schedule),
                                      2-frame windows (1 look-ahead), 2 updates per window,
                                      warm start (each frame gets 4 updates before it is
                                      emitted: 4 frame-updates of work per frame, ~25 ms of
                                      this CPU's 39 ms frame interval), no update begun that
                                      would end more than 100 ms after the frame's last spoke
                                      (deadline_ms=100: p99 99-126 ms in the 8 final runs,
                                      152-155 without, same PSNR), overload=reduce from 2
                                      frames behind (queue_size=2)
  cs-rt                               the streaming CS peer (recon: cs, recon_core/streaming_cs.py)
                                      on the imunne-rt schedule: temporal TV on the same 2-frame
                                      windows (1 look-ahead), warm start, 100 ms deadline,
                                      overload=reduce; cs_iterations (3, about the cost of the
                                      network's 2 updates) primal-dual iterations per window at
                                      cs_lambda (0.005)
"""
from __future__ import annotations

import json
import multiprocessing as mp

from recon_core.config import NETWORK_RECONS

DEFAULT_METHODS = ["gridding", "cgsense", "imunne-cold", "imunne-warm", "imunne-rt"]

PRESETS = {
    "gridding": {"recon": "gridding"},
    "cgsense": {"recon": "cgsense"},
    "imunne-cold": {"recon": "imunne", "warm_start": False, "max_iterations": 10},
    "imunne-warm": {"recon": "imunne", "warm_start": True, "max_iterations": 3},
    "altun": {"recon": "altun"},
    "dune": {"recon": "dune"},
    "flat": {"recon": "flat"},
    "imunne-rt": {"recon": "imunne", "model": "imunne_rt", "warm_start": True, "window": 2,
                  "lookahead": 1, "max_iterations": 2, "deadline_ms": 100, "overload": "reduce",
                  "queue_size": 2},
    "cs-rt": {"recon": "cs", "model": "", "warm_start": True, "window": 2, "lookahead": 1, "deadline_ms": 100,
              "overload": "reduce", "queue_size": 2},
}


def add_parser(sub):
    p = sub.add_parser("bench", help="latency, throughput, memory and quality of every method at scanner pace")
    p.add_argument("input")
    p.add_argument("--methods", default=None,
                   help="comma-separated method presets above, or configuration presets (rtcine replay --preset); "
                        "default gridding,cgsense,imunne-cold,imunne-warm,imunne-rt")
    p.add_argument("--preset", action="append", default=[], metavar="NAME",
                   help="a configuration preset to bench (realtime, causal, quality, cgsense, gridding; "
                        "repeatable); with --methods, benched after them")
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", action="append", default=[], metavar="[KIND=]PATH",
                   help="network model: PATH for imunne (default: the shipped one), KIND=PATH for altun/dune/flat")
    p.add_argument("--speed", type=float, default=1.0, help="multiple of scanner pace")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-offline", action="store_true", help="skip the offline-converged network PSNR")
    p.add_argument("--json", help="write all numbers here")
    p.add_argument("--histogram", default="bench_latency.png", help="latency histogram picture")
    p.set_defaults(func=run)


def _worker(path, values, speed, queue):
    import resource

    import numpy as np
    import torch

    from gadgets.images import image_frame
    from gadgets.replay import replay
    from recon_core.allocator import keep_freed_memory
    from recon_core.config import ReconConfig
    from recon_core.evaluation import score
    from recon_core.metrics import latency_stats
    from recon_core.mrd import read_images
    from recon_core.simulate import REFERENCE_GROUP

    torch.set_num_threads(max(1, torch.get_num_threads()))
    keep_freed_memory()          # a fresh (spawned) process: as rtcine and the Gadgetron entry do
    cfg = ReconConfig.from_mapping(values)
    # warmed up first, as a server is before a scan (replay(realtime=True) does it: ESPIRiT,
    # the reconstructor built once, for this file's protocol), so that it is not timed
    s = replay(path, cfg, realtime=True, speed=speed)
    images = s.pop("images_list")
    result = {k: v for k, v in s.items()}
    result["latencies_ms"] = None
    # steady state: frames reconstructed once the ESPIRiT maps are in (the calibration runs
    # on the second core during the first seconds of a scan)
    steady = [i for i in images if i.meta["rtcine_coil_maps"] == "espirit"]
    result["latency_steady_ms"] = latency_stats([float(i.meta["rtcine_latency_ms"]) for i in steady]) \
        if steady else None
    result["steady_frames"] = len(steady)
    # when ESPIRiT's maps came in
    result["espirit_from_frame"] = min(int(i.meta["rtcine_frame"]) for i in steady) if steady else None
    try:
        reference = np.stack([image_frame(i) for i in read_images(path, REFERENCE_GROUP)])
        by_frame = {int(i.meta["rtcine_frame"]): image_frame(i) for i in images}
        idx = sorted(k for k in by_frame if k < len(reference))
        q = score(np.stack([by_frame[k] for k in idx]), reference[idx], roi=True)
        result.update(psnr=q["mean"]["psnr"], ssim=q["mean"]["ssim"],
                      psnr_frames={k: r["psnr"] for k, r in zip(idx, q["frames"])})
    except Exception as exc:  # a file without references: timing only
        result.update(psnr=float("nan"), ssim=float("nan"), quality_error=str(exc))
    result["iterations_per_frame"] = s["iterations_mean"]
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    queue.put(result)


def _offline_psnr(path, cfg, model: str):
    import numpy as np

    from gadgets.frames_from_file import load_frames
    from gadgets.images import image_frame
    from recon_core.coils import calibration_images, espirit_maps
    from recon_core.evaluation import score
    from recon_core.networks.evaluation import network_method
    from recon_core.mrd import read_images
    from recon_core.networks.streaming import load_model, model_path
    from recon_core.simulate import REFERENCE_GROUP

    protocol, frames = load_frames(path, cfg)
    frames = [f for f in frames if not f.partial]
    kspace = np.stack([f.kspace for f in frames])
    coords = np.stack([f.coords for f in frames])
    t, c, s, r = kspace.shape
    calib = min(cfg.calibration_frames, t)
    maps = espirit_maps(calibration_images(kspace[:calib].transpose(0, 2, 1, 3).reshape(-1, c, r),
                                           coords[:calib].reshape(-1, r, 2), (protocol.matrix, protocol.matrix)))
    model, _ = load_model(model_path(cfg.recon, model), "cpu")
    images = network_method(model, max_iter=50, tol=1e-4)(kspace, coords, maps)
    reference = np.stack([image_frame(i) for i in read_images(path, REFERENCE_GROUP)])
    return [r["psnr"] for r in score(images, reference[:len(images)], roi=True)["frames"]]


def _steady_psnr(result: dict, offline: list | None = None) -> float:
    """Mean PSNR over the steady-state frames (from ``espirit_from_frame`` on) of the run's
    per-frame PSNRs, or of ``offline``'s over the same frames."""
    start = result.get("espirit_from_frame")
    frames = {int(k): v for k, v in (result.get("psnr_frames") or {}).items()}   # str keys once in JSON
    if start is None or not frames:
        return float("nan")
    keys = [k for k in frames if k >= start]
    values = [offline[k] for k in keys if k < len(offline)] if offline is not None else [frames[k] for k in keys]
    return float(sum(values) / len(values)) if values else float("nan")


def run(args) -> int:
    overrides = {}
    for item in args.set:
        k, v = item.split("=", 1)
        overrides[k.strip()] = v.strip()
    models = {}
    for item in args.model:
        kind, _, path = item.rpartition("=")
        models[kind or "imunne"] = path
    ctx = mp.get_context("spawn")
    results, settings = {}, {}
    from recon_core.config import ReconConfig, presets
    methods = args.methods.split(",") if args.methods else ([] if args.preset else DEFAULT_METHODS)
    for name in methods + args.preset:
        if name in PRESETS:
            values = dict(PRESETS[name], device=args.device, **overrides)
        elif name in presets():
            values = {"preset": name, "device": args.device, **overrides}
        else:
            raise ValueError(f"unknown method {name!r}; expected one of {sorted(PRESETS)} or a configuration "
                             f"preset {sorted(presets())}")
        values["recon"] = ReconConfig.from_mapping(values).recon
        settings[name] = values
        if values["recon"] in models:
            values["model"] = models[values["recon"]]
        queue = ctx.Queue()
        proc = ctx.Process(target=_worker, args=(args.input, values, args.speed, queue))
        proc.start()
        print(f"bench {name} ...", flush=True)
        results[name] = queue.get()
        proc.join()
    if not args.no_offline:
        # the reference of every network preset: the kind's model (--model, else the shipped
        # one; not the real-time model) converged offline; computed once per model
        from recon_core.config import ReconConfig
        offline = {}
        for name, values in settings.items():
            kind = values["recon"]
            if kind in NETWORK_RECONS:
                if kind not in offline:
                    print(f"offline converged {kind} ...", flush=True)
                    cfg = ReconConfig.from_mapping({k: v for k, v in values.items() if k != "model"})
                    offline[kind] = _offline_psnr(args.input, cfg, models.get(kind, ""))
                results[name]["offline_psnr"] = sum(offline[kind]) / len(offline[kind])
                results[name]["offline_psnr_steady"] = _steady_psnr(results[name], offline[kind])
    for r in results.values():
        r["psnr_steady"] = _steady_psnr(r)
    _print(results)
    _histogram(results, args.histogram)
    print(f"latency histogram: {args.histogram}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=float)
    return 0


def _print(results):
    head = (f"{'method':12s} {'p50':>6s} {'p95':>6s} {'p99':>6s} {'max':>7s} {'p50*':>6s} {'p99*':>6s} "
            f"{'fps':>6s} {'ratio':>6s} {'iter':>5s} {'skip':>4s} {'RSS MB':>7s} {'PSNR':>6s} {'PSNR*':>6s} "
            f"{'offline':>7s} {'offl.*':>6s} {'maps@':>5s}")
    print("latency in ms from a frame's last spoke to its image (* = steady state: frames with the ESPIRiT "
          "maps); ratio = output fps / acquisition fps; PSNR in dB, body ROI; offline = the kind's model "
          "converged offline; maps@ = first frame with the ESPIRiT maps")
    print(head)
    for name, r in results.items():
        lat = r["latency_ms"]
        st = r.get("latency_steady_ms") or {"p50": float("nan"), "p99": float("nan")}
        ratio = r["output_fps"] / r["acquisition_fps"] if r["acquisition_fps"] else float("nan")
        print(f"{name:12s} {lat['p50']:6.1f} {lat['p95']:6.1f} {lat['p99']:6.1f} {lat['max']:7.1f} "
              f"{st['p50']:6.1f} {st['p99']:6.1f} "
              f"{r['output_fps']:6.1f} {ratio:6.2f} {r['iterations_per_frame']:5.1f} {r['skipped_frames']:4d} "
              f"{r['peak_rss_mb']:7.0f} {r['psnr']:6.2f} {r.get('psnr_steady', float('nan')):6.2f} "
              f"{r.get('offline_psnr', float('nan')):7.2f} {r.get('offline_psnr_steady', float('nan')):6.2f} "
              f"{'-' if r.get('espirit_from_frame') is None else r['espirit_from_frame']:>5}")


def _histogram(results, png):
    """Latency histograms of all methods on shared logarithmic bins, with the frame interval
    and the 150 ms real-time target marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    lists = {name: np.asarray(r.get("latency_list") or [], float) for name, r in results.items()}
    values = np.concatenate([v[v > 0] for v in lists.values()] or [np.ones(1)])
    bins = np.logspace(np.log10(max(values.min(), 0.1)), np.log10(values.max() * 1.05), 60)
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for name, lat in lists.items():
        if lat.size:
            ax.hist(lat[lat > 0], bins=bins, alpha=0.55, label=name)
    acq = next((r["acquisition_fps"] for r in results.values() if r.get("acquisition_fps")), 0)
    if acq:
        ax.axvline(1e3 / acq, color="k", ls=":", lw=1, label=f"frame interval {1e3 / acq:.0f} ms")
    ax.axvline(150, color="r", ls="--", lw=1, label="150 ms target")
    ax.set_xscale("log")
    ax.set_xlabel("latency from last spoke to image (ms, log scale)")
    ax.set_ylabel("frames")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
