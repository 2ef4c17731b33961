"""BART's ``.cfl``/``.hdr`` file format and the layout conversions between our prepared scans
and BART's (``bart pics``) conventions.

File format (BART README, section 3.1): a text header ``NAME.hdr``::

    # Dimensions
    d0 d1 d2 ...

and the raw data ``NAME.cfl``: complex float32 (little endian), column-major (the first
index varies fastest). BART pads missing dimensions with 1 (16 in all).

Layouts (BART ``mri.h`` order: 0 READ/x, 1 PHS1/y, 2 PHS2/z, 3 COIL, ..., 10 TIME):

=========== ======================================= ==========================================
array       ours                                    BART
=========== ======================================= ==========================================
k-space     ``(T, C, S, R)``                        ``(1, R, S, C, 1, ..., 1, T)`` (T in dim 10)
trajectory  ``(T, S, R, 2)`` (kx, ky) cycles/pixel  ``(3, R, S, 1, ..., 1, T)`` (kx, ky, 0) in pixels (x N)
maps        ``(C, Y, X)``                           ``(X, Y, 1, C)`` (x first)
images      ``(T, Y, X)``                           ``(X, Y, 1, 1, ..., 1, T)``
=========== ======================================= ==========================================

Our image axes are (y, x) with ``x`` the last (fastest in C order); BART's first axis is x.
Transposing (y, x) -> (x, y) and writing column-major therefore stores the very same bytes
as our C-order arrays, and BART's kx (trajectory row 0) pairs with its axis 0 = our x.
BART's NUFFT uses the same sign (``exp(-2 pi i k.r)`` forward) and the same centre (index
``N/2``) as ours: checked on a noiseless scan in ``tests/test_compressed_sensing.py``
(``bart pics`` without regularisation agrees with our CG-SENSE after LS scaling with no flip).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

import numpy as np

TIME_DIM = 10
COIL_DIM = 3
DIMS = 16


def write_cfl(name: str, array) -> None:
    """Write ``array`` (any shape, up to 16 dims) as ``name.hdr`` + ``name.cfl`` (complex64, column-major)."""
    a = np.asarray(array)
    if a.ndim > DIMS:
        raise ValueError(f"BART arrays have at most {DIMS} dimensions, got {a.ndim}")
    dims = list(a.shape) or [1]
    with open(name + ".hdr", "w") as f:
        f.write("# Dimensions\n")
        f.write(" ".join(str(d) for d in dims) + "\n")
    a.astype("<c8").ravel(order="F").tofile(name + ".cfl")


def read_cfl(name: str, squeeze_trailing: bool = True) -> np.ndarray:
    """Read ``name.hdr`` + ``name.cfl``; trailing singleton dimensions are dropped (keeping at least one)."""
    with open(name + ".hdr") as f:
        lines = [line.strip() for line in f]
    try:
        dims = [int(d) for d in lines[lines.index("# Dimensions") + 1].split()]
    except (ValueError, IndexError):
        raise ValueError(f"{name}.hdr: no '# Dimensions' line followed by integers") from None
    count = int(np.prod(dims))
    data = np.fromfile(name + ".cfl", dtype="<c8", count=count)
    if data.size != count:
        raise ValueError(f"{name}.cfl holds {data.size} values, header says {dims} = {count}")
    if squeeze_trailing:
        while len(dims) > 1 and dims[-1] == 1:
            dims.pop()
    return data.reshape(dims, order="F")


def _time_shape(*lead, frames):
    """``(*lead, 1, ..., 1, frames)`` with ``frames`` in dim 10."""
    return tuple(lead) + (1,) * (TIME_DIM - len(lead)) + (frames,)


def kspace_to_bart(kspace: np.ndarray) -> np.ndarray:
    """``(T, C, S, R)`` -> ``(1, R, S, C, 1, ..., 1, T)``."""
    t, c, s, r = kspace.shape
    out = np.transpose(kspace, (3, 2, 1, 0))                  # (R, S, C, T)
    return out.reshape(_time_shape(1, r, s, c, frames=t))


def traj_to_bart(coords: np.ndarray, matrix: int) -> np.ndarray:
    """``(T, S, R, 2)`` cycles/pixel -> ``(3, R, S, 1, ..., 1, T)`` in pixels (kz = 0)."""
    t, s, r, _ = coords.shape
    out = np.zeros((3, r, s, t), np.float32)
    out[:2] = np.transpose(coords, (3, 2, 1, 0)) * matrix      # (2, R, S, T)
    return out.reshape(_time_shape(3, r, s, 1, frames=t)).astype(np.complex64)


def maps_to_bart(maps: np.ndarray) -> np.ndarray:
    """``(C, Y, X)`` -> ``(X, Y, 1, C)``."""
    return np.transpose(maps, (2, 1, 0))[:, :, None, :]


def images_from_bart(img: np.ndarray, frames: int) -> np.ndarray:
    """BART image ``(X, Y, [1, ..., 1, T])`` -> ours ``(T, Y, X)``."""
    img = np.asarray(img)
    x, y = img.shape[:2]
    img = img.reshape(x, y, -1)                              # all other dims are 1 except time
    if img.shape[-1] != frames:
        raise ValueError(f"BART image has {img.shape[-1]} frames, expected {frames}")
    return np.ascontiguousarray(np.transpose(img, (2, 1, 0)))


def export_scan(prefix: str, kspace: np.ndarray, coords: np.ndarray, maps: np.ndarray) -> dict:
    """Write ``PREFIX_ksp``, ``PREFIX_traj``, ``PREFIX_maps`` (.cfl/.hdr); returns their names."""
    names = {"ksp": prefix + "_ksp", "traj": prefix + "_traj", "maps": prefix + "_maps"}
    write_cfl(names["ksp"], kspace_to_bart(kspace))
    write_cfl(names["traj"], traj_to_bart(coords, maps.shape[-1]))
    write_cfl(names["maps"], maps_to_bart(maps))
    return names


def bart_available() -> str | None:
    return shutil.which("bart")


def pics(kspace: np.ndarray, coords: np.ndarray, maps: np.ndarray, lam: float = 0.0, iterations: int = 50,
         extra: tuple = (), threads: int = 1, workdir: str | None = None, timeout: float = 3600) -> tuple:
    """Run ``bart pics -S -i ITER [-R T:1024:0:LAM] -t traj ksp maps out`` on one scan.

    ``lam > 0`` adds temporal total variation (BART dim 10 = our frames); ``lam = 0`` is plain
    (unweighted) CG-SENSE. Returns ``(images (T, Y, X) complex64, seconds of the bart call)``.
    ``OMP_NUM_THREADS`` is set to ``threads``.
    """
    exe = bart_available()
    if exe is None:
        raise RuntimeError("bart is not on PATH")
    own = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="rtcine_bart_")
    try:
        names = export_scan(os.path.join(workdir, "scan"), kspace, coords, maps)
        out = os.path.join(workdir, "out")
        cmd = [exe, "pics", "-S", "-i", str(iterations)]
        if lam > 0:
            cmd += ["-R", f"T:{1 << TIME_DIM}:0:{lam:g}"]
        cmd += list(extra) + ["-t", names["traj"], names["ksp"], names["maps"], out]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        seconds = time.perf_counter() - t0
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return images_from_bart(read_cfl(out), kspace.shape[0]).astype(np.complex64), seconds
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
