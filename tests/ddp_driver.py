"""Training driver for tests/test_distributed_training.py, run as one process or by torchrun.

    python tests/ddp_driver.py --data D --out O --batch 2 --steps 4 --dump W
    torchrun --nproc-per-node 2 tests/ddp_driver.py ... --batch 1 --crash-rank 1 --crash-at 3

Trains a tiny IMUNNE (JFB window loss + the streaming-schedule loss) through
:func:`recon_core.training.train.train`, and after every optimizer step writes this rank's
weights to ``W/rank{r}_step{s}.safetensors``. ``--crash-at S --crash-rank R``: rank ``R``
exits hard (as a killed process would) after step ``S``, once (a marker file in ``--out``
says it happened), so that ``torchrun --max-restarts 1`` restarts the ranks and they resume.
"""
import argparse
import glob
import os

from safetensors.torch import save_file

from recon_core.training import distributed
from recon_core.training.train import TrainConfig, train


class _Stop(Exception):
    pass


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--dump", required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=4, help="stop after this step (resume: run again)")
    p.add_argument("--total", type=int, default=0, help="steps of the schedule (default --steps)")
    p.add_argument("--crash-at", type=int, default=0)
    p.add_argument("--crash-rank", type=int, default=1)
    args = p.parse_args()
    with distributed.process_group("cpu"):
        _train(args)


def _train(args) -> None:
    rank = distributed.rank()
    marker = os.path.join(args.out, "crashed")

    def on_step(step, model):
        tensors = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, os.path.join(args.dump, f"rank{rank}_step{step}.safetensors"))
        if step == args.crash_at and rank == args.crash_rank and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        if step == args.steps and step < cfg.steps:
            raise _Stop

    cfg = TrainConfig(model="imunne", channels=4, levels=1, window=3, batch=args.batch, steps=args.total or args.steps,
                      max_iter=3, lr=3e-3, validate_every=args.steps, checkpoint_every=1, val_scans=1,
                      stream_weight=0.5, stream_window=2, stream_clip=4)
    train_paths = sorted(glob.glob(os.path.join(args.data, "train-*.npz")))
    val_paths = sorted(glob.glob(os.path.join(args.data, "val-*.npz")))
    try:
        train(cfg, train_paths, val_paths, args.out, resume=True, progress=False, on_step=on_step)
    except _Stop:                 # stopped after --steps, its checkpoint written at every step
        pass


if __name__ == "__main__":
    main()
