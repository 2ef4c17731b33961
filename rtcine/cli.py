"""``rtcine``: real-time radial cine reconstruction, from the command line.

Commands (``rtcine COMMAND --help`` for each; ``rtcine --version``):

    rtcine simulate OUT.h5 [--frames --coils --matrix --spokes-per-frame --snr --seed --trajectory --no-traj]
                    [--slices N --slice-order sequential|interleaved --no-spf-header --dummy-scans N --phasecorr --navigator-every N]
    rtcine replay IN.h5 [--out OUT.h5] [--preset realtime|causal|quality|cgsense|gridding]
                  [--recon gridding|cgsense|imunne|altun|dune|flat] [--realtime] [--config C.yaml] [--set k=v]
    rtcine serve --port P [--host 127.0.0.1] [--preset NAME] [--ready-file F]
    rtcine health --port P [--ready-file F]
    rtcine evaluate RECON.h5 --reference IN.h5 [--json] [--roi]
    rtcine demo [--out DIR]
"""
from __future__ import annotations

import os

# numpy's OpenBLAS (used by ESPIRiT on the calibration thread) starts its own busy-waiting
# threads; beside the preparation and reconstruction threads they fight for 2 cores. One
# OpenBLAS thread, set before numpy loads: the real-time preset's p99 over 120 frames was
# 135-187 ms in four runs with it, 143-234 without, ESPIRiT's maps from frame 23-25 against
# 24-47. Set OPENBLAS_NUM_THREADS yourself to override.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402

from recon_core.config import RECONS  # noqa: E402
from rtcine import __version__  # noqa: E402

log = logging.getLogger("rtcine")


def _recon_config(args):
    from recon_core.config import ReconConfig

    values = {}
    if getattr(args, "config", None):
        values.update(ReconConfig.read_yaml(args.config))
    for item in getattr(args, "set", None) or []:
        if "=" not in item:
            raise SystemExit(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        values[key.strip()] = value.strip()
    for key in ("recon", "device", "model"):
        if getattr(args, key, None):
            values[key] = getattr(args, key)
    # layers: field defaults < preset (--preset, else the YAML's or --set's ``preset``, else
    # the preset of --recon if there is one, else realtime) < YAML keys < --set < --recon/--device/--model
    return ReconConfig.from_mapping(values, preset=getattr(args, "preset", None))


def _gradient_delay_arg(text: str) -> tuple:
    from recon_core.gradient_delay import GradientDelay

    try:
        d = GradientDelay.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return (d.x, d.y, d.xy)


def cmd_simulate(args) -> int:
    from tqdm import tqdm

    from recon_core.simulate import SimulationConfig, write_dataset
    from recon_core.simulate_stack import simulate_scan

    cfg = SimulationConfig(frames=args.frames, coils=args.coils, matrix=args.matrix,
                           spokes_per_frame=args.spokes_per_frame, snr=args.snr, seed=args.seed,
                           trajectory=args.trajectory, include_traj=not args.no_traj, tr_ms=args.tr)
    cfg.gradient_delay = args.gradient_delay
    cfg.slices, cfg.slice_order, cfg.spf_header = args.slices, args.slice_order, not args.no_spf_header
    cfg.dummy_scans, cfg.phasecorr, cfg.navigator_every = args.dummy_scans, args.phasecorr, args.navigator_every
    with tqdm(total=cfg.frames * cfg.slices, unit="frame", desc="simulate", disable=args.quiet) as bar:
        scan = simulate_scan(cfg, progress=lambda n: bar.update(n - bar.n))
    if os.path.exists(args.out):       # ISMRMRD would append a second scan to it
        print(f"rtcine simulate: {args.out} exists: overwriting it", file=sys.stderr)
        os.remove(args.out)
    write_dataset(args.out, scan)
    extras = [f"{cfg.slices} {cfg.slice_order} slices" if cfg.slices > 1 else "",
              "no spokes_per_frame in the header" if args.no_spf_header else "",
              f"{cfg.dummy_scans} dummy scans per slice" if cfg.dummy_scans else "",
              "a phase-correction acquisition per slice" if cfg.phasecorr else "",
              f"a navigator every {cfg.navigator_every} spokes" if cfg.navigator_every else ""]
    print(f"wrote {args.out}: {cfg.frames} frames x {cfg.spokes_per_frame} spokes, {cfg.coils} coils, "
          f"{cfg.matrix}x{cfg.matrix}, {cfg.trajectory} ordering, SNR {cfg.snr:g}, "
          f"{scan.noise.shape[0]} noise scans, references in /dataset/reference"
          + "".join(f"; {e}" for e in extras if e))
    return 0


def cmd_replay(args) -> int:
    from gadgets.replay import format_summary, replay

    cfg = _recon_config(args)
    if args.out and os.path.exists(args.out):
        if os.path.exists(args.input) and os.path.samefile(args.out, args.input):
            print(f"rtcine replay: error: --out {args.out} is the input file: choose another output file",
                  file=sys.stderr)
            return 2
        print(f"rtcine replay: {args.out} exists: overwriting it", file=sys.stderr)
    viewer = None
    if args.view:
        from gadgets.viewer import LiveViewer
        viewer = LiveViewer("127.0.0.1", args.view_port).start()
        print(f"live viewer: {viewer.url}", flush=True)
    if args.server:
        if viewer is not None:
            print("--view shows local replays only: for a server, run `rtcine view` and forward to it")
        from gadgets.client import ServerError, replay_to_server
        if args.preset or args.recon or args.config or args.set or args.device or args.model:
            log.warning("with --server the chain XML's <configuration> decides the reconstruction: "
                        "--preset, --recon, --config, --set, --device and --model are ignored")
        try:
            summary = replay_to_server(args.input, args.server, args.chain, out=args.out, realtime=args.realtime,
                                       speed=args.speed)
        except ServerError as exc:
            print(f"rtcine replay: error: {exc}", file=sys.stderr)
            return 2
    else:
        summary = replay(args.input, cfg, out=args.out, realtime=args.realtime, speed=args.speed,
                         progress=not args.quiet, sink=viewer)
    summary.pop("images_list", None)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary))
    if args.picture and args.out:
        from rtcine.pictures import cine_montage
        cine_montage(args.out, args.picture)
        print(f"picture of the cine: {args.picture}")
    if viewer is not None:
        from rtcine.cmd_view import serve_until_interrupted
        serve_until_interrupted(viewer, f"replay done; the viewer keeps serving at {viewer.url} for review "
                                        "(Ctrl-C stops)")
    return 0 if summary["images"] > 0 or summary["frames"] == 0 else 1


def cmd_serve(args) -> int:
    from gadgets.serve import MAX_CONCURRENT, serve

    cfg = _recon_config(args) if (args.config or args.set or args.recon or args.preset) else None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: reachable from other machines", args.host)
    serve(args.port, args.host, cfg, max_connections=args.max_connections,
          max_concurrent=MAX_CONCURRENT if args.max_concurrent is None else args.max_concurrent,
          ready_file=args.ready_file)
    return 0


def cmd_evaluate(args) -> int:
    """Score the images against the references, slice by slice (matched by ``slice``, frames
    by ``image_index``); one slice prints as before, a stack prints each slice and the mean
    over slices (JSON: ``{"slices": {slice: result}, "mean": ...}``)."""
    import numpy as np

    from gadgets.images import image_frame
    from recon_core.evaluation import by_slice, data_consistency, score
    from recon_core.mrd import read_images
    from recon_core.simulate import REFERENCE_GROUP

    mine = by_slice(read_images(args.recon_file, args.group))
    theirs = by_slice(read_images(args.reference, REFERENCE_GROUP))
    frames_by_slice: dict = {}
    if not args.no_dc:
        from gadgets.frames_from_file import load_frames
        from recon_core.config import ReconConfig

        for f in load_frames(args.reference, ReconConfig())[1]:
            frames_by_slice.setdefault(f.slice, []).append(f)
    results = {}
    for s in mine:
        if s not in theirs:
            log.warning("slice %d: %d images but no reference frames: not scored", s, len(mine[s]))
            continue
        images = np.stack([image_frame(i) for i in mine[s]])
        reference = np.stack([image_frame(i) for i in theirs[s]])
        if len(images) != len(reference):
            log.warning("slice %d: %d images vs %d reference frames: scoring the first %d", s, len(images),
                        len(reference), min(len(images), len(reference)))
        result = score(images, reference, roi=args.roi)
        if not args.no_dc:
            frames = frames_by_slice.get(s, [])
            n = min(len(frames), len(images))
            full = [f for f in frames[:n] if not f.partial]
            res = data_consistency(images[:len(full)], np.stack([f.kspace for f in full]),
                                   np.stack([f.coords for f in full]))
            for row, r in zip(result["frames"], res):
                row["dc_residual"] = float(r)
            result["mean"]["dc_residual"] = float(np.mean(res))
        results[s] = result
    for s in theirs:
        if s not in mine:
            log.warning("slice %d: %d reference frames but no images", s, len(theirs[s]))
    if len(results) == 1 and len(theirs) == 1:
        result = next(iter(results.values()))
    else:
        keys = next(iter(results.values()))["mean"].keys() if results else []
        result = {"slices": {str(s): r for s, r in results.items()},
                  "mean": {k: float(np.mean([r["mean"][k] for r in results.values()])) for k in keys}}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for s, r in results.items():
        keys = [k for k in ("psnr", "ssim", "nrmse", "dc_residual") if k in r["mean"]]
        if "slices" in result:
            print(f"slice {s}")
        print("frame " + " ".join(f"{k:>11}" for k in keys))
        for i, row in enumerate(r["frames"]):
            print(f"{i:5d} " + " ".join(f"{row[k]:11.4f}" for k in keys))
        print("mean  " + " ".join(f"{r['mean'][k]:11.4f}" for k in keys))
    if "slices" in result and results:
        keys = [k for k in ("psnr", "ssim", "nrmse", "dc_residual") if k in result["mean"]]
        print("mean over slices  " + " ".join(f"{k} {result['mean'][k]:.4f}" for k in keys))
        for s, r in results.items():
            print(f"slice {s:3d}  " + " ".join(f"{k} {r['mean'][k]:.4f}" for k in keys))
    return 0


def cmd_demo(args) -> int:
    """Simulate a scan, reconstruct it with every available method, score and picture it."""
    import os

    import numpy as np

    from gadgets.images import image_frame
    from gadgets.replay import format_summary, replay
    from recon_core.config import ReconConfig
    from recon_core.evaluation import score
    from recon_core.simulate import SimulationConfig, simulate, write_dataset
    from rtcine.pictures import cine_montage

    os.makedirs(args.out, exist_ok=True)
    scan_path = os.path.join(args.out, "scan.h5")
    print(f"simulating a radial cine: {scan_path}")
    scan = simulate(SimulationConfig(frames=args.frames, seed=args.seed))
    write_dataset(scan_path, scan)
    rows = []
    for recon in args.recons.split(","):
        out = os.path.join(args.out, f"cine_{recon}.h5")
        if os.path.exists(out):
            os.remove(out)
        cfg = ReconConfig(recon=recon, wait_for_maps=True)
        summary = replay(scan_path, cfg, out=out, progress=not args.quiet)
        print(format_summary(summary))
        images = np.stack([image_frame(i) for i in summary["images_list"]])
        m = score(images, scan.reference, roi=True)["mean"]
        rows.append((recon, m["psnr"], m["ssim"], summary["latency_ms"]["p50"]))
        png = os.path.join(args.out, f"cine_{recon}.png")
        cine_montage(out, png)
        print(f"picture: {png}")
    print(f"\n{'method':10s} {'PSNR dB':>8s} {'SSIM':>6s} {'p50 ms':>7s}   (body ROI, vs the simulated reference)")
    for name, p, s_, lat in rows:
        print(f"{name:10s} {p:8.2f} {s_:6.3f} {lat:7.1f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rtcine", description="Real-time radial cine MRI reconstruction")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress of the chain")
    p.add_argument("--version", action="version", version=f"rtcine {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="write a simulated multi-coil radial cine ISMRMRD file")
    s.add_argument("out")
    s.add_argument("--frames", type=int, default=40)
    s.add_argument("--coils", type=int, default=8)
    s.add_argument("--matrix", type=int, default=128)
    s.add_argument("--spokes-per-frame", type=int, default=13)
    s.add_argument("--snr", type=float, default=30.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--tr", type=float, default=3.0, help="repetition time in ms (one spoke per TR)")
    s.add_argument("--trajectory", choices=("golden", "tiny-golden", "linear"), default="golden")
    s.add_argument("--no-traj", action="store_true", help="omit acq.traj: angles come from header + counters")
    s.add_argument("--gradient-delay", type=_gradient_delay_arg, default=(0.0, 0.0), metavar="DX,DY[,DXY]",
                   help="sample k-space on the trajectory delayed by DX, DY readout samples (the acquisitions "
                        "carry the nominal one); negative first value: --gradient-delay=-1,0.5")
    s.add_argument("--slices", type=int, default=1, help="a stack of N slices, each its own anatomy, coils, position")
    s.add_argument("--slice-order", choices=("sequential", "interleaved"), default="sequential",
                   help="slice after slice, or the slices' spokes alternating")
    s.add_argument("--no-spf-header", action="store_true",
                   help="no spokes_per_frame user parameter in the header (frames from markers and encodingLimits)")
    s.add_argument("--dummy-scans", type=int, default=0, help="N dummy scans at the start of each slice")
    s.add_argument("--phasecorr", action="store_true", help="a phase-correction acquisition at the start of each slice")
    s.add_argument("--navigator-every", type=int, default=0, metavar="N", help="a navigator every N spokes")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_simulate)

    def recon_options(q):
        from recon_core.config import DEFAULT_PRESET, presets
        q.add_argument("--preset", metavar="NAME",
                       help="named configuration (default: the preset of --recon if there is one, else "
                            f"{DEFAULT_PRESET}); --config, --set, --recon override its keys. "
                            + "; ".join(f"{n}: {p['description']}" for n, p in sorted(presets().items())))
        q.add_argument("--recon", choices=RECONS)
        q.add_argument("--config", help="YAML file of recon configuration keys")
        q.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one configuration key")
        q.add_argument("--device", help="cpu or cuda")
        q.add_argument("--model", help="network model file (default: the shipped model)")

    r = sub.add_parser("replay", help="push a recorded ISMRMRD file through the chain")
    r.add_argument("input")
    r.add_argument("--out", help="output ISMRMRD file for the images (group /dataset/images); an existing file "
                                 "is overwritten, with a notice (never the input file)")
    recon_options(r)
    r.add_argument("--realtime", action="store_true",
                   help="pace acquisitions by their time stamps, warmed up first as a server is; without it the file "
                        "is reconstructed as fast as possible, with no deadline and no overload policy")
    r.add_argument("--speed", type=float, default=1.0, help="with --realtime: multiple of scanner pace")
    r.add_argument("--server", help="HOST:PORT of a Gadgetron server to send the file to instead")
    r.add_argument("--chain", help="with --server: chain XML file to send (default chains/rtcine_connect.xml, the deployment chain)")
    r.add_argument("--picture", help="PNG montage of the cine (needs --out)")
    r.add_argument("--json", action="store_true")
    r.add_argument("-q", "--quiet", action="store_true")
    r.add_argument("--view", action="store_true", help="watch the cine live in a browser (local web page)")
    r.add_argument("--view-port", type=int, default=8080, help="with --view: port of the viewer on 127.0.0.1")
    r.set_defaults(func=cmd_replay)

    v = sub.add_parser("serve", help="wait for Gadgetron (or any ISMRMRD client) as an external module")
    v.add_argument("--port", type=int, default=18000)
    v.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1 only)")
    v.add_argument("--max-connections", type=int, default=0, help="stop after N connections (0: never)")
    v.add_argument("--ready-file", help="write HOST PORT PID here once warm and listening (removed at exit); "
                                        "`rtcine health --ready-file` checks it")
    v.add_argument("--max-concurrent", type=int, default=None,
                   help="refuse a connection while N are being served (default 8; 0: no limit)")
    recon_options(v)
    v.set_defaults(func=cmd_serve)

    d = sub.add_parser("demo", help="simulate a scan, reconstruct, score and picture it (no server needed)")
    d.add_argument("--out", default="demo_output")
    d.add_argument("--frames", type=int, default=24)
    d.add_argument("--seed", type=int, default=1000)
    d.add_argument("--recons", default="gridding,cgsense,imunne", help="comma-separated methods")
    d.add_argument("-q", "--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)

    e = sub.add_parser("evaluate", help="PSNR/SSIM/NRMSE and data consistency against the stored reference")
    e.add_argument("recon_file")
    e.add_argument("--reference", required=True, help="the simulated input file (group /dataset/reference)")
    e.add_argument("--group", default="images", help="image group of the reconstruction file")
    e.add_argument("--roi", action="store_true", help="score inside the body mask only")
    e.add_argument("--no-dc", action="store_true", help="skip the data-consistency residual")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_evaluate)
    for module in COMMAND_MODULES:
        import importlib
        importlib.import_module(module).add_parser(sub)
    return p


#: further subcommands, each a module with ``add_parser(subparsers)`` that sets ``func``
COMMAND_MODULES: list[str] = ["rtcine.cmd_train", "rtcine.cmd_compare", "rtcine.cmd_bench", "rtcine.cmd_view", "rtcine.cmd_export",
                              "rtcine.cmd_health", "rtcine.cmd_suite"]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from recon_core.allocator import keep_freed_memory
    from recon_core.config import ConfigError
    from recon_core.mrd import HeaderError
    keep_freed_memory()
    try:
        return args.func(args)
    except (ConfigError, HeaderError, FileNotFoundError) as exc:
        print(f"rtcine {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
