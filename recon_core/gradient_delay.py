"""Radial gradient delays: the model, the coordinate correction and RING estimation.

Model. A delay of the gradients on a physical axis shifts every sample of a radial spoke
along that axis of k-space. For a spoke with unit direction ``n = (cos t, sin t)`` (the
direction of increasing sample index) the sample acquired at nominal position ``k`` lies at

    k_actual = k - dk * S n,        S = [[Sx, Sxy], [Sxy, Sy]]

where ``dk`` is the spoke's sample spacing (``1/R`` cycles/pixel for ``R`` samples, see
:mod:`recon_core.trajectory`) and ``S`` the delay matrix in **readout samples of the acquired
readout** (with the usual 2x readout oversampling one sample is ``1/(2N)`` cycles/pixel, half
a Cartesian k-space step). ``Sx`` and ``Sy`` are the delays of the x and y gradients of the
trajectory's coordinate system; a positive delay means the gradient lags its nominal timing,
so the echo (k = 0) is reached ``S`` samples after the nominal centre sample. ``Sxy`` is zero
when the trajectory's axes are the physical gradient axes and appears for oblique slices
(``S = R^T diag(dx, dy) R`` for the in-plane rotation ``R``). The shift ``dk S n`` is not
parallel to the spoke when ``Sx != Sy``: its perpendicular part is kept.

Estimation (RING: Rosenzweig, Holme, Uecker, MRM 81:1898-1906, 2019). Two spokes ``a`` and
``b`` of different angles cross at one k-space point. Their samples agree there, at the
sample offsets ``t_a``, ``t_b`` from each spoke's nominal centre that satisfy

    t_a n_a - S n_a = t_b n_b - S n_b,   i.e.   S (n_a - n_b) = t_a n_a - t_b n_b,

two equations linear in ``(Sx, Sy, Sxy)`` per pair. The offsets are found where the
multi-coil distance ``sum_c |y_a,c(t_a) - y_b,c(t_b)|^2`` is smallest, the spokes being
band-limited interpolated (their projection cropped to ``crop`` of the readout field of
view) on a grid of ``step`` samples within ``+-search`` samples of the centre and the
minimum refined by a quadratic fit; ``S`` is the least-squares solution over all pairs (one
pass of outlier rejection). Pairs are formed within one frame, of spokes at least 44 degrees
apart (``|sin| >= MIN_SIN``), so the spokes of a pair are tens of ms apart (no motion between
them) and of one slice. With ``search = 4`` delays up to about 3 samples per axis are found
(an intersection further out is discarded); one frame of 13 spokes already gives the delay
to ~0.01 samples on simulated data at SNR 30 (tests/test_gradient_delay.py).

BART (``bart estdelay -R``) implements the same method; its output ``Sx:Sy:Sxy`` is the
shift ``+S n`` in readout samples of its own trajectory axes, whose angle is measured from
BART's ``ky``: see :func:`from_bart` for the conversion to this module's convention.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

#: RING defaults: interpolation grid step and half-width (samples), projection crop, least
#: |sin| of the angle between the spokes of a pair, pairs per frame at most
STEP = 0.2
SEARCH = 4.0
CROP = 0.6
MIN_SIN = 0.7
MAX_PAIRS = 64
#: largest rms residual (samples) of the RING equations for an estimate to be believed
MAX_RESIDUAL = 0.25


@dataclass(frozen=True)
class GradientDelay:
    """Delay matrix ``S = [[x, xy], [xy, y]]`` in readout samples (see the module docstring)."""
    x: float = 0.0
    y: float = 0.0
    xy: float = 0.0

    def matrix(self) -> np.ndarray:
        return np.array([[self.x, self.xy], [self.xy, self.y]], dtype=np.float64)

    def __str__(self) -> str:
        text = f"{self.x:.3f},{self.y:.3f}"
        return text + (f",{self.xy:.3f}" if self.xy else "")

    @property
    def is_zero(self) -> bool:
        return self.x == 0.0 and self.y == 0.0 and self.xy == 0.0

    @classmethod
    def parse(cls, text: str) -> "GradientDelay":
        """``"dx,dy"`` or ``"dx,dy,dxy"`` (samples) -> :class:`GradientDelay`; ValueError if not."""
        parts = [p.strip() for p in str(text).split(",")]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) not in (2, 3):
            raise ValueError("expected two or three numbers dx,dy[,dxy] (readout samples)")
        if not all(math.isfinite(v) for v in values):
            raise ValueError("delays must be finite numbers")
        return cls(*values)


#: largest delay (samples, any entry) a configuration may give
MAX_DELAY = 16.0
MODES = ("auto", "off")


def setting_text(value) -> str:
    """A ``gradient_delay`` configuration value as text: YAML's ``off``/``on`` (booleans) ->
    ``"off"``/``"auto"``, a list ``[dx, dy]`` -> ``"dx,dy"``; anything else ``str(value)``."""
    if isinstance(value, bool):
        return "auto" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def parse_setting(value) -> tuple[str, "GradientDelay | None"]:
    """The ``gradient_delay`` key -> ``("auto", None)``, ``("off", None)`` or ``("fixed",
    GradientDelay)``; ValueError saying what is wrong otherwise."""
    text = setting_text(value).strip()
    if text.lower() in MODES:
        return text.lower(), None
    if not any(ch.isdigit() for ch in text):
        raise ValueError("expected auto, off or dx,dy[,dxy] in readout samples")
    delay = GradientDelay.parse(text)
    if max(abs(delay.x), abs(delay.y), abs(delay.xy)) > MAX_DELAY:
        raise ValueError(f"delays of more than {MAX_DELAY:g} samples are not gradient delays")
    return "fixed", delay


def spoke_geometry(coords: np.ndarray):
    """Direction, centre and spacing of straight spokes ``coords (..., R, 2)`` (cycles/pixel).

    Returns ``n (..., 2)`` the unit direction of increasing sample index, ``centre (...)`` the
    (fractional) sample index of the point nearest to k = 0 on the spoke's line and
    ``dk (...)`` the sample spacing in cycles/pixel."""
    c = np.asarray(coords, dtype=np.float64)
    span = c[..., -1, :] - c[..., 0, :]
    length = np.linalg.norm(span, axis=-1)
    samples = c.shape[-2]
    dk = length / max(samples - 1, 1)
    n = span / np.maximum(length, 1e-30)[..., None]
    centre = -np.sum(c[..., 0, :] * n, axis=-1) / np.maximum(dk, 1e-30)
    return n, centre, dk


def delayed_coordinates(coords: np.ndarray, delay: GradientDelay) -> np.ndarray:
    """The k-space positions ``(..., R, 2)`` at which samples with nominal coordinates
    ``coords (..., R, 2)`` (cycles/pixel) are acquired under ``delay``: ``k - dk S n`` per
    spoke. The corrected trajectory of a delayed acquisition (what the reconstruction must
    use) and the trajectory a simulator samples on are both this. float32 out."""
    c = np.asarray(coords, dtype=np.float32)
    if delay.is_zero:
        return c.copy()
    n, _, dk = spoke_geometry(c)
    shift = (n @ delay.matrix().T) * dk[..., None]                    # (..., 2), S symmetric
    return (c - shift[..., None, :].astype(np.float32)).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _kernel_rows(centre: float, samples: int, step: float, search: float, crop: float) -> np.ndarray:
    """Band-limited interpolation weights ``(T, R)`` for the positions ``centre + offsets[t]``
    of an ``R``-sample spoke: the Dirichlet kernel of the projection band ``|x| <= crop R / 2``
    (read-only; cached: the spokes of a stream share their centre)."""
    band = max(1, int(crop * samples / 2))
    u = centre + _offsets(step, search)[:, None] - np.arange(samples)[None, :]
    num = np.sin(np.pi * u * (2 * band + 1) / samples)
    den = np.sin(np.pi * u / samples)
    small = np.abs(den) < 1e-9
    kernel = (np.where(small, 2 * band + 1, num / np.where(small, 1.0, den)) / samples).astype(np.float32)
    kernel.flags.writeable = False
    return kernel


def _offsets(step: float, search: float) -> np.ndarray:
    """Sample offsets ``(T,)`` from a spoke's centre searched for intersections."""
    return np.arange(-search, search + step / 2, step)


def _interpolation_kernel(centre: np.ndarray, samples: int, step: float, search: float, crop: float) -> np.ndarray:
    """Interpolation weights ``(S, T, R)`` for spokes with (fractional) centres ``centre (S,)``."""
    keys = np.round(centre, 4)
    return np.stack([_kernel_rows(float(c), samples, step, search, crop) for c in keys])


def _pairs(n: np.ndarray, min_sin: float, max_pairs: int) -> np.ndarray:
    """Index pairs ``(P, 2)`` of spokes whose directions ``n (S, 2)`` differ by at least
    ``asin(min_sin)``, the most orthogonal first, at most ``max_pairs``."""
    cross = np.abs(n[:, None, 0] * n[None, :, 1] - n[:, None, 1] * n[None, :, 0])
    a, b = np.triu_indices(n.shape[0], k=1)
    keep = cross[a, b] >= min_sin
    a, b, s = a[keep], b[keep], cross[a, b][keep]
    order = np.argsort(-s, kind="stable")[:max_pairs]
    return np.stack([a[order], b[order]], axis=1)


# Least-squares fit of f = c0 + c1 x + c2 y + c3 x^2 + c4 xy + c5 y^2 on the 3x3 stencil
_STENCIL = np.array([(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)], dtype=np.float64)
_QUAD_PINV = np.linalg.pinv(np.stack([np.ones(9), _STENCIL[:, 0], _STENCIL[:, 1], _STENCIL[:, 0] ** 2,
                                      _STENCIL[:, 0] * _STENCIL[:, 1], _STENCIL[:, 1] ** 2], axis=1))


def _refine(cost: np.ndarray):
    """Grid index of the minimum of each ``cost (P, T, T)`` refined by a quadratic fit:
    returns fractional indices ``(P,)``, ``(P,)`` and a validity mask (minimum not on the edge)."""
    p, t, _ = cost.shape
    flat = cost.reshape(p, -1).argmin(axis=1)
    i, j = np.divmod(flat, t)
    valid = (i > 0) & (i < t - 1) & (j > 0) & (j < t - 1)
    ii, jj = np.clip(i, 1, t - 2), np.clip(j, 1, t - 2)
    rows = np.arange(p)[:, None]
    patch = cost[rows, ii[:, None] + _STENCIL[None, :, 0].astype(int), jj[:, None] + _STENCIL[None, :, 1].astype(int)]
    c = patch @ _QUAD_PINV.T                                              # (P, 6)
    hess = np.stack([np.stack([2 * c[:, 3], c[:, 4]], -1), np.stack([c[:, 4], 2 * c[:, 5]], -1)], -2)
    det = np.linalg.det(hess)
    ok = (det > 1e-12 * np.maximum(np.abs(hess).max(axis=(1, 2)) ** 2, 1e-30)) & (c[:, 3] > 0)
    safe = np.where(ok[:, None, None], hess, np.eye(2)[None])
    step = -np.linalg.solve(safe, c[:, 1:3, None])[..., 0]               # (P, 2)
    step = np.where(ok[:, None], np.clip(step, -1.0, 1.0), 0.0)
    return ii + step[:, 0], jj + step[:, 1], valid


def intersections(kspace: np.ndarray, coords: np.ndarray, step: float = STEP, search: float = SEARCH,
                  crop: float = CROP, min_sin: float = MIN_SIN, max_pairs: int = MAX_PAIRS):
    """RING intersections of the spokes of one frame.

    Args:
        kspace: ``(C, S, R)`` complex samples of ``S`` spokes.
        coords: ``(S, R, 2)`` their nominal coordinates (cycles/pixel).
    Returns:
        ``(n_a, n_b, t_a, t_b)``: unit directions ``(P, 2)`` of the two spokes of each valid
        pair and the sample offsets ``(P,)`` from each spoke's nominal centre at which their
        data agree.
    """
    k = np.asarray(kspace)
    if k.ndim != 3 or np.asarray(coords).shape != (k.shape[1], k.shape[2], 2):
        raise ValueError(f"kspace {k.shape} (C, S, R) and coords {np.asarray(coords).shape} (S, R, 2) do not match")
    n, centre, dk = spoke_geometry(coords)
    empty = (np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0), np.zeros(0))
    good = np.isfinite(centre) & (dk > 0) & np.all(np.isfinite(k), axis=(0, 2))
    pairs = _pairs(n, min_sin, max_pairs) if k.shape[1] >= 2 else np.zeros((0, 2), int)
    pairs = pairs[good[pairs[:, 0]] & good[pairs[:, 1]]] if pairs.size else pairs
    if not pairs.size:
        return empty
    used = np.flatnonzero(np.bincount(pairs.ravel(), minlength=k.shape[1]))
    where = np.full(k.shape[1], -1)
    where[used] = np.arange(used.size)
    offsets = _offsets(step, search)
    kernel = _interpolation_kernel(centre[used], k.shape[2], step, search, crop)  # (U, T, R)
    spokes = np.transpose(k[:, used], (1, 0, 2))                                  # (U, C, R)
    real = np.concatenate([spokes.real, spokes.imag], axis=1).astype(np.float32)  # (U, 2C, R)
    values = real @ np.transpose(kernel, (0, 2, 1))                               # (U, 2C, T)
    energy = np.sum(values ** 2, axis=1)                                          # (U, T)
    ia, ib = where[pairs[:, 0]], where[pairs[:, 1]]
    cross = np.transpose(values[ia], (0, 2, 1)) @ values[ib]                      # (P, T, T)
    cost = energy[ia][:, :, None] + energy[ib][:, None, :] - 2 * cross
    fa, fb, valid = _refine(cost.astype(np.float64))
    t_a, t_b = offsets[0] + fa * step, offsets[0] + fb * step
    return n[pairs[valid, 0]], n[pairs[valid, 1]], t_a[valid], t_b[valid]


def _system(n_a, n_b, t_a, t_b):
    """Rows ``A (2P, 3)`` and right-hand side ``v (2P,)`` of ``S (n_a - n_b) = t_a n_a - t_b n_b``."""
    u = n_a - n_b
    v = t_a[:, None] * n_a - t_b[:, None] * n_b
    zeros = np.zeros(len(u))
    rows_x = np.stack([u[:, 0], zeros, u[:, 1]], axis=1)          # Sx ux + Sxy uy = vx
    rows_y = np.stack([zeros, u[:, 1], u[:, 0]], axis=1)          # Sy uy + Sxy ux = vy
    return np.concatenate([rows_x, rows_y]), np.concatenate([v[:, 0], v[:, 1]])


def solve(a: np.ndarray, v: np.ndarray, pairs: int, min_pairs: int = 3):
    """Least-squares ``(Sx, Sy, Sxy)`` of the stacked RING equations (one pass of outlier
    rejection: pairs whose residual exceeds 4 median absolute residuals are dropped).
    None if fewer than ``min_pairs`` pairs, the angles do not determine all three, or the
    intersections do not fit one delay (rms residual above ``MAX_RESIDUAL`` samples: 0.006
    on simulated scans, 2.6 for a delay of 4.5 samples, beyond the search)."""
    if pairs < min_pairs:
        return None
    if np.linalg.matrix_rank(a, tol=1e-3 * max(np.abs(a).max(), 1e-30)) < 3:
        return None
    s = np.linalg.lstsq(a, v, rcond=None)[0]
    res = np.abs(a @ s - v).reshape(2, pairs).max(axis=0)
    limit = 4 * max(np.median(res), 1e-3)
    keep = np.tile(res <= limit, 2)
    if keep.sum() // 2 >= min_pairs and not keep.all() and np.linalg.matrix_rank(a[keep], tol=1e-3) == 3:
        s = np.linalg.lstsq(a[keep], v[keep], rcond=None)[0]
    else:
        keep = np.ones(len(v), bool)
    if np.sqrt(np.mean((a[keep] @ s - v[keep]) ** 2)) > MAX_RESIDUAL:
        return None
    return GradientDelay(float(s[0]), float(s[1]), float(s[2]))


class RingEstimator:
    """Pools the RING equations of frames as they come; :meth:`estimate` solves them.

    Adding a frame costs its own intersections (``~ S^2/2`` pairs, at most ``max_pairs``);
    solving is a 3-unknown least squares. Frames are kept apart (pairs never span two
    frames), so frames of different slices or times may be pooled.
    """

    def __init__(self, **options):
        self.options = options
        self.rows: list[np.ndarray] = []
        self.rhs: list[np.ndarray] = []
        self.pairs = 0
        self.frames = 0

    def add(self, kspace: np.ndarray, coords: np.ndarray) -> int:
        """Add one frame (``kspace (C, S, R)``, nominal ``coords (S, R, 2)``); returns its valid pairs."""
        n_a, n_b, t_a, t_b = intersections(kspace, coords, **self.options)
        self.frames += 1
        if len(t_a):
            a, v = _system(n_a, n_b, t_a, t_b)
            # keep the rows grouped as (x rows of all pairs, y rows of all pairs) per frame
            self.rows.append(a.reshape(2, -1, 3))
            self.rhs.append(v.reshape(2, -1))
            self.pairs += len(t_a)
        return len(t_a)

    def estimate(self) -> GradientDelay | None:
        if not self.pairs:
            return None
        a = np.concatenate(self.rows, axis=1).reshape(-1, 3)
        v = np.concatenate(self.rhs, axis=1).reshape(-1)
        return solve(a, v, self.pairs)


def estimate_delay(kspace: np.ndarray, coords: np.ndarray, **options) -> GradientDelay | None:
    """RING estimate from frames ``kspace (T, C, S, R)`` with nominal ``coords (T, S, R, 2)``
    (or one frame ``(C, S, R)``, ``(S, R, 2)``); None if the spokes cannot determine it."""
    k, c = np.asarray(kspace), np.asarray(coords)
    if k.ndim == 3:
        k, c = k[None], c[None]
    est = RingEstimator(**options)
    for f in range(k.shape[0]):
        est.add(k[f], c[f])
    return est.estimate()


def from_bart(text: str) -> GradientDelay:
    """Convert ``bart estdelay -R`` output ``"Sx:Sy:Sxy"`` to this module's convention.

    BART measures a spoke's angle ``phi`` from its trajectory's ``ky`` axis (direction
    ``(sin phi, cos phi)`` in its ``(kx, ky)`` rows) and reports the shift ``+S (cos phi,
    sin phi)`` of the sampled positions, so its first axis is our y, its second our x, and
    its sign is the opposite of a delay: ours = ``(-Sy_bart, -Sx_bart, -Sxy_bart)``, for
    data written with ``recon_core.bart_io`` (our kx in BART's row 0)."""
    sx, sy, sxy = (float(v) for v in text.strip().split(":"))
    return GradientDelay(-sy, -sx, -sxy)
