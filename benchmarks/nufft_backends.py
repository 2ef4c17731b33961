"""Time the NUFFT backends on the standard real-time frame (the numbers in docs/performance.md).

    python benchmarks/nufft_backends.py [--matrix 128 --coils 8 --spokes 13]
"""
import argparse
import time

import numpy as np
import torch

from recon_core import nufft
from recon_core.trajectory import radial_coordinates, spoke_angles


def timed(f, repeats):
    """Median wall time in ms (the median: shared machines have outliers)."""
    f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--matrix", type=int, default=128)
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--spokes", type=int, default=13)
    p.add_argument("--repeats", type=int, default=20)
    a = p.parse_args()
    n = a.matrix
    coords = torch.from_numpy(radial_coordinates(spoke_angles(np.arange(a.spokes), "golden", a.spokes), 2 * n))
    coords = coords.reshape(1, -1, 2)
    x = torch.randn(1, a.coils, n, n, dtype=torch.complex64)
    print(f"{n}x{n}, {a.coils} coils, {a.spokes} spokes x {2 * n} samples, {torch.get_num_threads()} threads")
    settings = [("finufft", 1e-3, 2.0), ("finufft", 1e-3, 1.25), ("finufft", 5e-4, 1.25), ("finufft", 1e-5, 2.0),
                ("torchkbnufft", None, None)]
    for backend, eps, upsampfac in settings:
        if eps:
            nufft.FINUFFT_EPS, nufft.FINUFFT_UPSAMPFAC = eps, upsampfac
        y = nufft.nufft_forward(x, coords, backend)
        reps = a.repeats if backend == "finufft" else max(3, a.repeats // 4)
        fwd = timed(lambda: nufft.nufft_forward(x, coords, backend), reps)
        adj = timed(lambda: nufft.nufft_adjoint(y, coords, (n, n), backend), reps)
        label = f"eps={eps} upsampfac={upsampfac}" if eps else ""
        print(f"{backend:13s} {label:26s} forward {fwd:6.2f} ms  adjoint {adj:6.2f} ms")

if __name__ == "__main__":
    main()
