"""Receive coil arrays of the shifted suite: circular loops on anterior and posterior
surfaces, sensitivities from the Biot-Savart law.

Each loop (radius ``a``, centre ``c``, unit normal along +-y, i.e. facing the body) carries
a unit current; its field at the image points ``(x, y, 0)`` is the Biot-Savart sum over
``SEGMENTS`` straight elements, ``B(r) = mu0 / (4 pi) sum dl x (r - r_l) / |r - r_l|^3``.
With B0 along z (through the slice), reciprocity gives the receive sensitivity
``S = (B_x - i B_y) e^{i phi_c}`` (``phi_c`` a per-channel cable phase). The maps are not
normalised per pixel: they keep the depth fall-off and the shading of the array; one
scalar per array makes the mean over the body of ``sum_c |S_c|^2`` equal to 1, so the
suite's SNR means what it means in :mod:`recon_core.simulate`.

Arrays (columns across the body x rows along z, anterior + posterior), by channel count:
4 = 2x2 anterior only; 8 = 2x2 + 2x2; 12 = 3x2 + 3x2; 16 = 4x2 + 4x2; 20 = 5x2 + 5x2;
32 = 4x4 + 4x4. Neighbouring loops overlap (radius 0.55 x the spacing); the anterior
array bends with the chest.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SEGMENTS = 48
#: distance of a loop's centre from the skin (housing and padding), metres
STANDOFF = 0.04
#: smallest loop radius, metres (a 32-channel cardiac array has loops of about 8 cm)
MIN_RADIUS = 0.05
LAYOUTS = {4: ((2, 2), None), 8: ((2, 2), (2, 2)), 12: ((3, 2), (3, 2)), 16: ((4, 2), (4, 2)),
           20: ((5, 2), (5, 2)), 32: ((4, 4), (4, 4))}


@dataclass
class Loop:
    centre: np.ndarray      # (3,) metres
    normal: np.ndarray      # (3,) unit
    radius: float           # metres
    phase: float            # radians


def array_loops(rng: np.random.Generator, coils: int, x: np.ndarray, y: np.ndarray, body: np.ndarray
                ) -> list[Loop]:
    """Loops of a ``coils``-channel array (see ``LAYOUTS``) around the body mask ``body``
    on the in-plane grid ``x, y`` (metres, ``(Y, X)``): columns spread over the body's width,
    each loop ``STANDOFF`` (plus up to 10 mm) outside the body surface below (anterior,
    small y) or above (posterior) its centre."""
    if coils not in LAYOUTS:
        raise ValueError(f"no coil array of {coils} channels; choose one of {sorted(LAYOUTS)}")
    cols_in_body = np.nonzero(body.any(0))[0]
    x0, x1 = x[0, cols_in_body[0]], x[0, cols_in_body[-1]]
    width = x1 - x0
    loops = []
    for side, layout in zip((-1, 1), LAYOUTS[coils]):
        if layout is None:
            continue
        cols, rows = layout
        spacing = width * rng.uniform(0.8, 0.95) / cols
        for r in range(rows):
            for c in range(cols):
                xc = (c - (cols - 1) / 2) * spacing + 0.004 * rng.normal() + 0.5 * (x0 + x1)
                zc = (r - (rows - 1) / 2) * spacing + 0.004 * rng.normal()
                column = body[:, int(np.argmin(np.abs(x[0] - xc)))]
                rows_in = np.nonzero(column)[0] if column.any() else np.nonzero(body.any(1))[0]
                surface = y[rows_in[0], 0] if side < 0 else y[rows_in[-1], 0]
                yc = surface + side * (STANDOFF + rng.uniform(0, 0.01))
                loops.append(Loop(np.array([xc, yc, zc]), np.array([0.0, -side, 0.0]), max(0.55 * spacing, MIN_RADIUS),
                                  rng.uniform(0, 2 * np.pi)))
    return loops


def loop_sensitivity(loop: Loop, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Complex receive sensitivity ``B_x - i B_y`` (arbitrary units) of ``loop`` at the
    in-plane points ``x, y`` (metres, same shape), times the loop's cable phase."""
    n = loop.normal / np.linalg.norm(loop.normal)
    u = np.cross(n, [0.0, 0.0, 1.0]) if abs(n[2]) < 0.9 else np.cross(n, [1.0, 0.0, 0.0])
    u /= np.linalg.norm(u)
    v = np.cross(n, u)
    phi = np.linspace(0, 2 * np.pi, SEGMENTS + 1)
    ring = loop.centre[None] + loop.radius * (np.cos(phi)[:, None] * u + np.sin(phi)[:, None] * v)
    mid = 0.5 * (ring[1:] + ring[:-1])                      # (K, 3)
    dl = ring[1:] - ring[:-1]
    p = np.stack([x.ravel(), y.ravel(), np.zeros(x.size)], axis=-1)
    bx = np.zeros(x.size)
    by = np.zeros(x.size)
    for m, d in zip(mid, dl):
        r = p - m
        inv3 = np.sum(r * r, axis=1) ** -1.5
        bx += (d[1] * r[:, 2] - d[2] * r[:, 1]) * inv3
        by += (d[2] * r[:, 0] - d[0] * r[:, 2]) * inv3
    return ((bx - 1j * by) * np.exp(1j * loop.phase)).reshape(x.shape)


def sensitivities(loops: list[Loop], x: np.ndarray, y: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Maps ``(C, *x.shape)`` complex64 scaled so that the mean of ``sum_c |S_c|^2`` over
    ``body`` (boolean, ``x.shape``) is 1."""
    maps = np.stack([loop_sensitivity(lp, x, y) for lp in loops])
    power = (np.abs(maps) ** 2).sum(0)
    return (maps / np.sqrt(power[body].mean())).astype(np.complex64)

