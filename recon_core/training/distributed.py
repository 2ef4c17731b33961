"""Data-parallel training across processes with PyTorch's own tools (torchrun, DDP).

    torchrun --nproc-per-node 2 -m rtcine train ...                      # one machine, 2 processes
    torchrun --nnodes 2 --node-rank R --rdzv-backend c10d \\
             --rdzv-endpoint HOST:29400 --nproc-per-node 4 -m rtcine train ...   # 2 machines

torchrun sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`setup` then joins the
process group (gloo on CPUs, NCCL on CUDA devices) and each process trains on its own
device (``cuda:LOCAL_RANK`` when ``--device cuda``). Without torchrun (``WORLD_SIZE``
unset or 1) nothing changes: one process, no process group.

What each rank does (:mod:`.train`):

- every step draws one *global* batch of ``world_size x batch`` windows from a generator
  seeded by ``(seed, step)`` alone, and rank ``r`` takes its ``r``-th share
  (:func:`rank_share`), so the ranks see disjoint windows and one process trained with
  ``batch = world_size x batch`` sees exactly their union (and a resumed run draws what an
  uninterrupted one would have);
- the loss of the rank's windows (window loss, streaming loss) is one forward of a
  :class:`torch.nn.parallel.DistributedDataParallel` module, so the gradient all-reduce
  happens once per step, after the whole backward, however often the loss calls the
  network (JFB's no-grad fixed point, the streamed windows);
- rank 0 alone validates, logs, draws the curve and writes the checkpoint; on resume it
  reads the checkpoint and broadcasts weights, optimizer state and history to the others
  (no shared file system needed), then every rank continues from the same step.
"""
from __future__ import annotations

import contextlib
import datetime
import os

import torch
import torch.distributed as dist

#: how long a rank waits for the others at a collective (rank 0 builds the data and
#: validates while the others wait)
TIMEOUT = datetime.timedelta(hours=2)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """Started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str = "cpu") -> str:
    """Join the process group when launched by torchrun; the device this rank trains on.

    gloo for CPU training, NCCL for CUDA (``cuda`` becomes ``cuda:LOCAL_RANK``)."""
    if not launched() or dist.is_initialized():
        return device
    cuda = device.startswith("cuda")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return device


def shutdown(clean: bool = True) -> None:
    """Leave the process group. ``clean`` (every rank got here without an error): wait for the
    other ranks first, so that no rank tears down its gloo connections while another is still
    sending on them (rank 0 aborting with "terminate called without an active exception" as a
    torchrun job ended, about once in three CI runs). After an error, leave at once: the other
    ranks may never arrive."""
    if dist.is_available() and dist.is_initialized():
        if clean and world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: str = "cpu"):
    """``with process_group(device) as device:`` :func:`setup` on entering (the device this
    rank trains on); :func:`shutdown` on leaving, ``clean`` unless an exception leaves."""
    device = setup(device)
    try:
        yield device
    except BaseException:
        shutdown(clean=False)
        raise
    shutdown()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """``obj`` from rank ``src`` on every rank (pickled by torch.distributed; only between
    our own processes)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def rank_share(items: list, per_rank: int) -> list:
    """This rank's ``per_rank`` items of a global batch ``items`` (``world_size x per_rank`` long)."""
    r = rank()
    return items[r * per_rank:(r + 1) * per_rank]


def wrap(module: torch.nn.Module, device: str) -> torch.nn.Module:
    """``module`` in DistributedDataParallel when there is more than one rank, else itself.

    ``find_unused_parameters=True``: a rank whose loss does not reach a parameter in one step
    (e.g. only the window loss, no streaming clip) still takes part in that step's all-reduce
    instead of hanging the others; ``broadcast_buffers=False``: the networks keep no buffers."""
    if world_size() == 1:
        return module
    ids = [torch.device(device).index] if device.startswith("cuda") else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True,
                                                     broadcast_buffers=False)


def parameter_checksum(model: torch.nn.Module) -> torch.Tensor:
    """One float64 per parameter tensor (its sum): cheap to compare across ranks."""
    return torch.stack([p.detach().double().sum().cpu() for p in model.parameters()])


def check_in_sync(model: torch.nn.Module, step: int, atol: float = 1e-6) -> None:
    """Raise if the ranks' weights differ (all-gathered checksums): the sign of a broken
    all-reduce, which would otherwise train N diverging models silently."""
    if world_size() == 1:
        return
    mine = parameter_checksum(model)
    gathered = [torch.zeros_like(mine) for _ in range(world_size())]
    dist.all_gather(gathered, mine)
    for r, other in enumerate(gathered):
        if not torch.allclose(other, gathered[0], atol=atol, rtol=1e-6):
            worst = float((other - gathered[0]).abs().max())
            raise RuntimeError(f"step {step}: rank {r}'s weights differ from rank 0's (checksum difference "
                               f"{worst:.3g}): the gradient all-reduce is broken")
