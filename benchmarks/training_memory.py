"""Training memory of one step, measured exactly: the bytes of every tensor autograd saves
for the backward pass (``torch.autograd.graph.saved_tensors_hooks``), plus wall time.

    python benchmarks/training_memory.py [--window 5 --matrix 128 --iterations 2,6,20]

IMUNNE (Jacobian-free) keeps one block's activations whatever its iteration count;
Alt-UN keeps all of its blocks'; CU-Net one pass; DUNE (4 iterations, exact VJP or
heuristic DC) and FLAT (4 steps) keep all of theirs (FLAT's flow loss uses the same graph). Weights are random (memory does not
depend on them); the problem is a simulated 8-coil, 13-spoke window.
"""
import argparse
import time

import torch

from recon_core.coils import estimate_maps
from recon_core.networks.problem import make_problem
from recon_core.networks.unrolled import build_model
from recon_core.simulate import SimulationConfig, simulate


def saved_bytes(model, problem, target):
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        x, info = model(problem)
        loss = (x - target).abs().mean()
    loss.backward()
    return total[0] / 2 ** 20, time.perf_counter() - t0, info["iterations"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--matrix", type=int, default=128)
    p.add_argument("--iterations", default="2,6,20")
    p.add_argument("--blocks", default="2,4,8")
    a = p.parse_args()
    scan = simulate(SimulationConfig(frames=a.window, matrix=a.matrix, seed=4242))
    c, r = scan.kspace.shape[1], scan.kspace.shape[-1]
    maps = estimate_maps(scan.kspace.transpose(0, 2, 1, 3).reshape(-1, c, r), scan.coords.reshape(-1, r, 2),
                         (a.matrix, a.matrix), "lowres")
    problem = make_problem(torch.from_numpy(scan.kspace), torch.from_numpy(scan.coords), torch.from_numpy(maps))
    target = torch.from_numpy(scan.reference) / problem.scale
    arch = {"channels": 16, "levels": 2, "unshuffle": 2}
    print(f"window {a.window} frames of {a.matrix}x{a.matrix}; memory = tensors saved for backward")
    rows = [("cunet", {}, build_model("cunet", **arch))]
    rows += [(f"imunne K={k}", {}, build_model("imunne", **arch, max_iter=k, tol=0)) for k in
             map(int, a.iterations.split(","))]
    rows += [(f"altun n={n}", {}, build_model("altun", **arch, blocks=n)) for n in map(int, a.blocks.split(","))]
    rows += [(f"dune K=4 {dc}", {}, build_model("dune", **arch, iterations=4, dc=dc)) for dc in ("vjp", "heuristic")]
    rows += [("flat K=4", {}, build_model("flat", **arch, steps=4))]
    for name, _, model in rows:
        model.train()
        mb, seconds, iters = saved_bytes(model, problem, target)
        print(f"{name:14s} saved for backward {mb:8.1f} MB   step {seconds:6.2f} s   iterations {iters}")


if __name__ == "__main__":
    main()
