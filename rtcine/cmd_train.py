"""``rtcine train``: train IMUNNE, Alt-UN, CU-Net, DUNE or FLAT on simulated data.

    rtcine train --model imunne --data runs/data --out runs/imunne [--train-scans 80 --steps 1200 ...]
    rtcine train --model dune --blocks 4 [--dc heuristic]          # DUNE, K = --blocks iterations
    rtcine train --model flat --blocks 4 [--schedule cosine]       # FLAT, K = --blocks Euler steps
    rtcine train --model altun --supervision ssdu                  # any model, self-supervised (SSDU)

Builds the training/validation splits in ``--data`` first if they are missing (resumable),
then trains with a progress bar, validates every ``--validate-every`` steps, checkpoints
(safetensors + YAML, no pickle) every ``--checkpoint-every`` steps and draws
``curve.png``. Re-running the same command resumes from the last checkpoint.
"""
from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("train", help="train a network (imunne, altun, cunet, dune, flat) on simulated scans")
    p.add_argument("--model", choices=("imunne", "altun", "cunet", "dune", "flat"), default="imunne")
    p.add_argument("--data", default="runs/data", help="folder of prepared scans (built if missing)")
    p.add_argument("--out", help="output folder (default runs/<model>[-heuristic][-ssdu])")
    p.add_argument("--train-scans", type=int, default=80)
    p.add_argument("--val-scans", type=int, default=6)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--window", type=int, default=5, help="frames per training window")
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--levels", type=int, default=2)
    p.add_argument("--noise-input", action="store_true",
                   help="imunne/altun/cunet: the regularizer also sees the data's noise level (after "
                        "prewhitening it is known: recon_core.networks.problem.WHITENED_NOISE_STD)")
    p.add_argument("--max-iter", type=int, default=6, help="IMUNNE fixed-point iterations in training")
    p.add_argument("--tol", type=float, default=1e-2)
    p.add_argument("--anderson", type=int, default=0,
                   help="IMUNNE: Anderson acceleration memory for the fixed point (0: plain iteration)")
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
    p.add_argument("--noise-augment", type=float, default=0.0,
                   help="add k-space noise to each training window, level uniform in [0, this] x RMS")
    p.add_argument("--stream-weight", type=float, default=0.0,
                   help="IMUNNE: weight of a loss on the real-time streaming schedule (0: off): each step "
                        "also replays the stream on a clip of --stream-clip frames (sliding windows, warm "
                        "start, --stream-updates updates per window), backpropagating through all of it, "
                        "and scores every emitted image against the reference")
    p.add_argument("--stream-window", type=int, default=2, help="streaming loss: frames per sliding window")
    p.add_argument("--stream-lookahead", type=int, default=1,
                   help="streaming loss: frames of look-ahead (a frame is emitted once this many newer "
                        "frames are in its window)")
    p.add_argument("--stream-updates", type=int, default=1,
                   help="streaming loss: network updates R(x) per window (the stream's max_iterations)")
    p.add_argument("--stream-clip", type=int, default=8,
                   help="streaming loss: consecutive frames per clip (memory and time grow with it)")
    p.add_argument("--stream-burn-in", type=int, default=0,
                   help="streaming loss: leave out the clip's first frames (they start from the clip's "
                        "CG-SENSE start; a running stream's frames start from their predecessor's)")
    p.add_argument("--window-weight", type=float, default=1.0,
                   help="weight of the usual window loss (JFB for imunne); 0 with --stream-weight trains "
                        "for the streaming schedule alone (a real-time model)")
    p.add_argument("--init", default="", help="initialise the regularizer from this checkpoint (e.g. a CU-Net)")
    p.set_defaults(func=run)


def run(args) -> int:
    from tqdm import tqdm

    from recon_core.training.data import build_split
    from recon_core.training.train import TrainConfig, train

    splits = {}
    for split, count in (("train", args.train_scans), ("val", args.val_scans)):
        with tqdm(total=count, desc=f"data {split}", unit="scan") as bar:
            splits[split] = build_split(args.data, split, count, progress=lambda i: bar.update(i - bar.n))
    cfg = TrainConfig(model=args.model, channels=args.channels, levels=args.levels, max_iter=args.max_iter,
                      noise_input=args.noise_input,
                      tol=args.tol, anderson=args.anderson, blocks=args.blocks, window=args.window, steps=args.steps, lr=args.lr,
                      validate_every=args.validate_every, checkpoint_every=args.checkpoint_every,
                      device=args.device, init=args.init,
                      fixed_point_weight=args.fixed_point_weight, supervision=args.supervision,
                      ssdu_fraction=args.ssdu_fraction, dc=args.dc, schedule=args.schedule,
                      flat_velocity_weight=args.flat_velocity_weight,
                      noise_augment=args.noise_augment, stream_weight=args.stream_weight,
                      stream_window=args.stream_window, stream_lookahead=args.stream_lookahead,
                      stream_updates=args.stream_updates, stream_clip=args.stream_clip,
                      stream_burn_in=args.stream_burn_in, window_weight=args.window_weight)
    # variants get their own default folder, so they never resume (overwrite) another run's checkpoint
    suffix = ("-heuristic" if args.model == "dune" and args.dc == "heuristic" else "") + \
        ("-final-only" if args.model == "flat" and args.flat_velocity_weight == 0 else "") + \
        ("-ssdu" if args.supervision == "ssdu" else "")
    out = args.out or f"runs/{args.model}{suffix}"
    history = train(cfg, splits["train"], splits["val"], out, resume=not args.fresh)
    t = history.get("timing", {})
    last = history["val"][-1] if history["val"] else {}
    print(f"{args.model}: {history['step'][-1] if history['step'] else 0} steps, "
          f"val PSNR {last.get('psnr', float('nan')):.2f} dB, SSIM {last.get('ssim', float('nan')):.3f}, "
          f"{t.get('seconds_per_epoch', float('nan')):.0f} s/epoch, peak RSS {t.get('peak_rss_mb', 0):.0f} MB")
    print(f"model: {out}/model.safetensors (+ .yaml), curve: {out}/curve.png")
    return 0
