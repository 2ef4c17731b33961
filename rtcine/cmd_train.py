"""``rtcine train``: train IMUNNE, Alt-UN, CU-Net, DUNE or FLAT on simulated data.

    rtcine train --model imunne --data runs/data --out runs/imunne [--train-scans 80 --steps 1200 ...]
    rtcine train --model dune --blocks 4 [--dc heuristic]          # DUNE, K = --blocks iterations
    rtcine train --model flat --blocks 4 [--schedule cosine]       # FLAT, K = --blocks Euler steps
    rtcine train --model altun --supervision ssdu                  # any model, self-supervised (SSDU)

On several processes (DistributedDataParallel; gloo on CPUs, NCCL on GPUs), e.g. two:

    torchrun --nproc-per-node 2 -m rtcine train --model imunne ...

each step then takes ``--batch`` windows per process; rank 0 builds the data, validates,
logs and checkpoints (:mod:`recon_core.training.distributed`).

Builds the training/validation splits in ``--data`` first if they are missing (resumable),
then trains with a progress bar, validates every ``--validate-every`` steps, checkpoints
(safetensors + YAML, no pickle) every ``--checkpoint-every`` steps and draws
``curve.png``. Re-running the same command resumes from the last checkpoint.
"""
from __future__ import annotations

import os


#: options that default to None: given, they win over the --finetune model's settings
OVERRIDES = ("channels", "tikhonov", "tikhonov_noise", "memory", "recurrence", "composite", "stream_window", "stream_lookahead", "stream_updates")


def add_parser(sub):
    p = sub.add_parser("train", help="train a network (imunne, altun, cunet, dune, flat) on simulated scans")
    p.add_argument("--model", choices=("imunne", "altun", "cunet", "dune", "flat"), default="imunne")
    p.add_argument("--data", nargs="+", default=["runs/data"],
                   help="folder of the simulator's prepared scans (built if missing), or recorded ISMRMRD "
                        ".h5 files and folders of them (taken through the chain's input stages; with "
                        "--supervision ssdu, as they carry no ground truth)")
    p.add_argument("--val-data", nargs="+", default=None,
                   help="validation scans: recorded .h5 files carrying references (default: the "
                        "simulator's validation split, in --data or runs/data)")
    p.add_argument("--finetune", default="",
                   help="fine-tune this model: a shipped name (imunne, imunne_rt, altun, cunet, dune, flat) "
                        "or a .safetensors path; its kind, architecture and streaming schedule are kept, "
                        "its weights are the start (implies --init)")
    p.add_argument("--out", help="output folder (default runs/<model>[-heuristic][-ssdu])")
    p.add_argument("--train-scans", type=int, default=80)
    p.add_argument("--val-scans", type=int, default=6)
    p.add_argument("--scan-frames", type=int, default=None, metavar="T",
                   help="frames per simulated scan, default 16 (train and val splits; files of another length are "
                        "kept apart by name). Longer scans let --stream-clip replay longer streams")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--window", type=int, default=5, help="frames per training window")
    p.add_argument("--batch", type=int, default=1,
                   help="windows per step (per process under torchrun: the global batch is "
                        "processes x this)")
    p.add_argument("--channels", type=int, default=None,
                   help="CU-Net width (default 16); with --finetune, a wider network starts as the fine-tuned one "
                        "(the new channels' outgoing weights zero: the same function at start)")
    p.add_argument("--levels", type=int, default=2)
    p.add_argument("--noise-input", action="store_true",
                   help="imunne/altun/cunet: the regularizer also sees the data's noise level (after "
                        "prewhitening it is known: recon_core.networks.problem.WHITENED_NOISE_STD)")
    p.add_argument("--max-iter", type=int, default=6, help="IMUNNE fixed-point iterations in training")
    p.add_argument("--tol", type=float, default=1e-2)
    p.add_argument("--anderson", type=int, default=0,
                   help="IMUNNE: Anderson acceleration memory for the fixed point (0: plain iteration)")
    p.add_argument("--start-weight", type=float, default=0.0,
                   help="IMUNNE: fixed point of (1 - w) R(x) + w x0, anchored at the CG-SENSE start x0: "
                        "iteration contracts by at least 1 - w per step, so it converges instead of "
                        "drifting (0: the fixed point of R)")
    p.add_argument("--tikhonov", type=float, nargs=2, default=None, metavar=("MU_S", "MU_T"),
                   help="IMUNNE, DUNE, FLAT: add the quadratic smoothness prior mu_s/2 |D_s x|^2 + mu_t/2 |D_t x|^2 "
                        "to the data term they step along (spatial and temporal differences; damps the directions "
                        "the radial data leave free; default none, or the --finetune model's)")
    p.add_argument("--tikhonov-noise", type=float, default=None, metavar="P",
                   help="IMUNNE: scale the smoothness prior's weights with the data's noise level, "
                        "x (noise / 2.2)^P in the Problem's units, clamped to [1/4, 8] (default 0, or the "
                        "--finetune model's)")
    p.add_argument("--memory", type=float, default=None, metavar="MU_M",
                   help="IMUNNE in a stream: add mu_m/2 |x_0 - previous|^2, the temporal difference between the "
                        "window's first frame and the image the stream emitted before it (default none, or the "
                        "--finetune model's)")
    p.add_argument("--recurrence", action="store_true", default=None,
                   help="IMUNNE in a stream: end every update by blending the window's first frame toward the "
                        "image the stream emitted before it, by a learned per-pixel gate (a recursive temporal "
                        "filter; recon_core/networks/recurrence.py; default off, or the --finetune model's)")
    p.add_argument("--composite", type=float, nargs="+", default=None, metavar="RATE",
                   help="IMUNNE in a stream: give the regularizer the stream's composite image, a running "
                        "gridding of every spoke so far with frames weighted rate (1 - rate)^age; several "
                        "rates give one image each, e.g. 0.125 0.03125 (a fast and a slow memory; a model "
                        "fine-tuned from one with the first rate starts as it) "
                        "(recon_core/networks/composite.py; default none, or the --finetune model's)")
    p.add_argument("--support", action="store_true",
                   help="IMUNNE and FLAT: project every iterate, DUNE: its output, onto the coil maps' "
                        "support (the data say nothing outside it)")
    p.add_argument("--blocks", type=int, default=4, help="Alt-UN blocks, DUNE iterations, FLAT steps")
    p.add_argument("--supervision", choices=("supervised", "ssdu"), default="supervised",
                   help="loss: against the reference, or self-supervised by spoke splitting (SSDU)")
    p.add_argument("--ssdu-fraction", type=float, default=0.6, help="SSDU: share of spokes in Theta")
    p.add_argument("--dc", choices=("vjp", "heuristic"), default="vjp", help="DUNE data consistency")
    p.add_argument("--schedule", choices=("uniform", "cosine"), default="uniform", help="FLAT time schedule")
    p.add_argument("--flat-velocity-weight", type=float, default=1.0,
                   help="FLAT: weight of the velocity-alignment term (0: the same network trained on its "
                        "final output only)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--validate-every", type=int, default=100)
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--device", default="cpu")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in --out")
    p.add_argument("--fixed-point-weight", type=float, default=0.0,
                   help="IMUNNE: weight of the fixed-point residual |R(x*) - x*| in the loss")
    p.add_argument("--contraction-weight", type=float, default=0.0,
                   help="IMUNNE: weight of the penalty on the spectral radius of dR/dx at the fixed point "
                        "above --contraction-target (keeps plain iteration converging there)")
    p.add_argument("--contraction-target", type=float, default=0.9)
    p.add_argument("--anchor-scans", type=int, default=0,
                   help="with recorded --data and --supervision ssdu: also train on this many simulated scans "
                        "of the train split with their supervised loss, so that fine-tuning keeps what the "
                        "simulator taught")
    p.add_argument("--anchor-data", default="runs/data", help="the simulator's folder for --anchor-scans")
    p.add_argument("--noise-augment", type=float, default=0.0,
                   help="add k-space noise to each training window, level uniform in [0, this] x RMS")
    p.add_argument("--stream-weight", type=float, default=0.0,
                   help="IMUNNE: weight of a loss on the real-time streaming schedule (0: off): each step "
                        "also replays the stream on a clip of --stream-clip frames (sliding windows, warm "
                        "start, --stream-updates updates per window), backpropagating through all of it, "
                        "and scores every emitted image against the reference")
    p.add_argument("--stream-window", type=int, default=None,
                   help="streaming loss: frames per sliding window (default 2, or the --finetune model's)")
    p.add_argument("--stream-lookahead", type=int, default=None,
                   help="streaming loss: frames of look-ahead (a frame is emitted once this many newer "
                        "frames are in its window; default 1, or the --finetune model's)")
    p.add_argument("--stream-updates", type=int, default=None,
                   help="streaming loss: network updates R(x) per window (the stream's max_iterations; "
                        "default 1, or the --finetune model's)")
    p.add_argument("--stream-clip", type=int, default=8,
                   help="streaming loss: consecutive frames per clip (memory and time grow with it)")
    p.add_argument("--stream-burn-in", type=int, default=0,
                   help="streaming loss: leave out the clip's first frames (they start from the clip's "
                        "CG-SENSE start; a running stream's frames start from their predecessor's)")
    p.add_argument("--stream-history", action="store_true",
                   help="streaming loss: stream each clip's scan from its first frame, the frames before the "
                        "clip without gradients, so a clip late in a long scan (--scan-frames) is trained from "
                        "the state a stream has there")
    p.add_argument("--stream-ssim", type=float, default=0.0,
                   help="streaming loss: weight of (1 - SSIM) of the streamed magnitudes beside their "
                        "complex L1 (0: L1 alone)")
    p.add_argument("--stream-fallback", type=int, default=0, metavar="K",
                   help="streaming loss: a scan's first K frames on the chain's fallback coil maps (lowres, "
                        "zero outside the object), as a stream has them before ESPIRiT's (0: the scan's maps)")
    p.add_argument("--window-weight", type=float, default=1.0,
                   help="weight of the usual window loss (JFB for imunne); 0 with --stream-weight trains "
                        "for the streaming schedule alone (a real-time model)")
    p.add_argument("--init", default="", help="initialise the regularizer from this checkpoint (e.g. a CU-Net)")
    p.add_argument("--new-lr-scale", type=float, default=1.0, metavar="S",
                   help="with --init or --finetune: train the tensors the checkpoint does not hold (e.g. the "
                        "--recurrence gate) and the new elements of those it holds in part (a convolution given "
                        "more input or output channels: one more --composite rate, a wider --channels) at --lr x S")
    p.set_defaults(func=run)


def run(args) -> int:
    from recon_core.training import distributed

    with distributed.process_group(args.device) as device:      # joins the process group under torchrun
        return _run(args, device, distributed)


def _run(args, device, distributed) -> int:
    from recon_core.training.data import SCAN_FRAMES, build_split
    from recon_core.training.train import TrainConfig, train

    from gadgets.recorded_scans import recorded_files

    main = distributed.is_main()
    if args.scan_frames is None:
        args.scan_frames = SCAN_FRAMES
    finetune = _finetune_settings(args) if args.finetune else {}
    model = finetune.pop("model", args.model)
    recorded = recorded_files(args.data) if _is_recorded(args.data) else []
    suffix = ("-heuristic" if model == "dune" and args.dc == "heuristic" else "") + \
        ("-final-only" if model == "flat" and args.flat_velocity_weight == 0 else "") + \
        ("-ssdu" if args.supervision == "ssdu" else "")
    # variants get their own default folder, so they never resume (overwrite) another run's checkpoint
    out = args.out or f"runs/{model}{suffix}"

    def built(what, make):
        """``make()`` on rank 0, then on the others (which then only list what rank 0 wrote)."""
        result = make(True) if main else None
        distributed.barrier()
        return result if main else make(False)

    simulator = "runs/data" if recorded else args.data[0]
    if args.anchor_scans and not (recorded and args.supervision == "ssdu"):
        raise SystemExit("rtcine train: --anchor-scans anchors an SSDU fine-tune on recorded .h5 files "
                         "(--data FILES --supervision ssdu); simulated --data is supervised already")
    if recorded:
        if args.supervision != "ssdu":
            raise SystemExit("rtcine train: recorded scans carry no ground truth; train on them with "
                             "--supervision ssdu")
        train_paths = built("recorded", lambda show: _prepare_recorded(recorded, os.path.join(out, "recorded"),
                                                                      args.window, show))
        used = sorted({os.path.basename(p).rsplit("_s", 1)[0] for p in train_paths})
        data = f"recorded: {len(used)} file(s), {len(train_paths)} slice(s): " + ", ".join(used[:8]) + \
            (", ..." if len(used) > 8 else "")
        if args.anchor_scans:
            anchors = built("train", lambda show: _split(build_split, args.anchor_data, "train", args.anchor_scans,
                                                         show, args.scan_frames))
            train_paths = train_paths + anchors
            data += f"; anchored by {len(anchors)} simulated scans of the train split ({args.anchor_data}), supervised"
    else:
        train_paths = built("train", lambda show: _split(build_split, simulator, "train", args.train_scans, show,
                                                          args.scan_frames))
        data = f"simulated: {len(train_paths)} scans of the train split ({simulator})" + \
            (f", {args.scan_frames} frames each" if args.scan_frames != SCAN_FRAMES else "")
    if args.val_data:
        val_files = recorded_files(args.val_data)
        val_paths = built("val", lambda show: _prepare_recorded(val_files, os.path.join(out, "recorded-val"),
                                                                1, show, with_reference=True))
    else:
        val_paths = built("val", lambda show: _split(build_split, simulator, "val", args.val_scans, show,
                                                          args.scan_frames))
    cfg = TrainConfig(model=model, channels=args.channels or TrainConfig.channels, levels=args.levels, max_iter=args.max_iter,
                      noise_input=args.noise_input,
                      tol=args.tol, anderson=args.anderson, start_weight=args.start_weight, support=args.support,
                      blocks=args.blocks, window=args.window,
                      batch=args.batch, steps=args.steps, lr=args.lr,
                      validate_every=args.validate_every, checkpoint_every=args.checkpoint_every,
                      device=device, init=args.init, new_lr_scale=args.new_lr_scale, data=data,
                      fixed_point_weight=args.fixed_point_weight, contraction_weight=args.contraction_weight,
                      contraction_target=args.contraction_target,
                      supervision=args.supervision,
                      ssdu_fraction=args.ssdu_fraction, dc=args.dc, schedule=args.schedule,
                      flat_velocity_weight=args.flat_velocity_weight,
                      noise_augment=args.noise_augment, stream_weight=args.stream_weight,
                      stream_clip=args.stream_clip,
                      stream_burn_in=args.stream_burn_in, stream_ssim=args.stream_ssim,
                      stream_history=args.stream_history,
                      stream_fallback=args.stream_fallback,
                      window_weight=args.window_weight,
                      anchor=bool(args.anchor_scans))
    for key, value in finetune.items():          # the fine-tuned model's architecture and schedule
        setattr(cfg, key, value)
    for key in OVERRIDES:                        # ... unless given here (else TrainConfig's defaults)
        if getattr(args, key) is not None:
            setattr(cfg, key, tuple(args.tikhonov) if key == "tikhonov" else getattr(args, key))
    history = train(cfg, train_paths, val_paths, out, resume=not args.fresh)
    if not main:
        return 0
    t = history.get("timing", {})
    last = history["val"][-1] if history["val"] else {}
    print(f"{model}: {history['step'][-1] if history['step'] else 0} steps, "
          f"val PSNR {last.get('psnr', float('nan')):.2f} dB, SSIM {last.get('ssim', float('nan')):.3f}, "
          f"{t.get('seconds_per_epoch', float('nan')):.0f} s/epoch, peak RSS {t.get('peak_rss_mb', 0):.0f} MB")
    print(f"model: {out}/model.safetensors (+ .yaml), curve: {out}/curve.png")
    return 0


def _split(build_split, folder, split, count, show, frames):
    if not show:
        return build_split(folder, split, count, frames)
    from tqdm import tqdm
    with tqdm(total=count, desc=f"data {split}", unit="scan") as bar:
        return build_split(folder, split, count, frames, progress=lambda i: bar.update(i - bar.n))


def _is_recorded(paths) -> bool:
    """Do ``--data`` paths name recorded ISMRMRD files (rather than a folder of prepared scans)?"""
    for p in paths:
        if p.endswith((".h5", ".mrd")):
            return True
        if os.path.isdir(p) and any(f.endswith((".h5", ".mrd")) for f in os.listdir(p)):
            return True
    return False


def _prepare_recorded(files, folder, min_frames, show, with_reference=False) -> list[str]:
    """Each usable slice of ``files`` as a prepared ``.npz`` in ``folder`` (kept while the file
    is unchanged); files that cannot be used are named, with why, and left out."""
    import logging

    import numpy as np

    from gadgets.recorded_scans import UnusableRecording, prepare_recorded

    log = logging.getLogger("rtcine.train")
    os.makedirs(folder, exist_ok=True)
    paths, refused = [], []
    for f in files:
        stem = os.path.join(folder, os.path.splitext(os.path.basename(f))[0])
        done = sorted(p for p in os.listdir(folder) if p.startswith(os.path.basename(stem) + "_s"))
        if done and all(os.path.getmtime(os.path.join(folder, p)) >= os.path.getmtime(f) for p in done):
            paths += [os.path.join(folder, p) for p in done]
            continue
        if not show:                                  # rank 0 prepared it; nothing to list means refused
            continue
        try:
            scans = prepare_recorded(f, min_frames, with_reference=with_reference)
        except UnusableRecording as e:
            refused.append(str(e))
            log.error("refused: %s", e)
            continue
        for scan in scans:
            if str(scan["skipped"]):
                log.warning("%s: left out %s", f, scan["skipped"])
            path = f"{stem}_s{str(scan['source']).rsplit('#', 1)[1]}.npz"
            np.savez(path + ".tmp.npz", **scan)
            os.replace(path + ".tmp.npz", path)
            paths.append(path)
        print(f"prepared {f}: {len(scans)} slice(s), {scans[0]['kspace'].shape[0]} frames of "
              f"{scans[0]['kspace'].shape[2]} spokes, {scans[0]['kspace'].shape[1]} coils")
    if not paths:
        raise SystemExit("rtcine train: no usable recorded scan" + ("".join(f"\n  {r}" for r in refused)))
    if with_reference:
        missing = [p for p in paths if "reference" not in np.load(p).files]
        if missing:
            raise SystemExit(f"rtcine train: --val-data scans need references (/dataset/reference); "
                             f"{len(missing)} have none, e.g. {missing[0]}")
    return paths


def _finetune_settings(args) -> dict:
    """The TrainConfig fields of the model ``--finetune`` names: kind, architecture,
    streaming schedule, and its weights as ``init``."""
    from recon_core.networks.checkpoint import read_meta
    from recon_core.networks.streaming import model_path

    path = model_path(args.model, args.finetune)
    meta = read_meta(path)
    arch = dict(meta.get("arch", {}))
    kind = meta["kind"]
    out = {"model": kind, "init": path}
    for key in ("channels", "levels", "unshuffle", "eta", "noise_input", "tol", "anderson", "start_weight",
                "support", "tikhonov", "tikhonov_noise", "memory", "recurrence", "composite", "blocks", "dc",
                "schedule"):
        if key in arch:
            out[key] = arch[key]
    if kind == "dune" and "iterations" in arch:
        out["blocks"] = arch["iterations"]
    if kind == "flat" and "steps" in arch:
        out["blocks"] = arch["steps"]
    if meta.get("streaming"):
        out["streaming"] = dict(meta["streaming"])
        if args.stream_weight > 0:      # a real-time model is fine-tuned on the schedule it runs
            out.update({f"stream_{k}": int(v) for k, v in meta["streaming"].items()
                        if k in ("window", "lookahead", "updates")})
    elif kind == "imunne" and "max_iter" in arch:
        out["max_iter"] = min(int(arch["max_iter"]), args.max_iter)   # training iterations stay --max-iter
    return out
