"""Radial trajectories: spoke angles, k-space coordinates and density compensation.

Conventions (the ones Gadgetron's radial gadgets use):

- A spoke is a full diameter through the k-space centre, so angles live on [0, pi).
- Spoke ``n`` of a stream (the profile counter, ``idx.kspace_encode_step_1``) has angle
  ``theta_n`` given by the ordering; readout sample ``s`` of ``R`` lies at
  ``k = (s - R/2) / R`` (cycles per reconstruction pixel when the readout is 2x
  oversampled, R = 2N) along ``(cos theta, sin theta)``.
- Coordinates are returned as ``(..., 2)`` arrays ``(kx, ky)``, the layout of ``acq.traj``.
"""
from __future__ import annotations

import math

import numpy as np

GOLDEN_RATIO = (1.0 + math.sqrt(5.0)) / 2.0
#: Golden angle for spokes on [0, pi): pi / phi ~ 111.246 degrees.
GOLDEN_ANGLE = math.pi / GOLDEN_RATIO
#: Number N of the tiny golden angle pi / (phi + N - 1) (Wundrak et al. 2016); N = 7 gives ~23.63 degrees.
TINY_GOLDEN_N = 7
TINY_GOLDEN_ANGLE = math.pi / (GOLDEN_RATIO + TINY_GOLDEN_N - 1)

ORDERINGS = ("golden", "tiny-golden", "linear")


def spoke_angles(profile: np.ndarray, ordering: str, spokes_per_frame: int,
                 linear_interleaves: int = 4) -> np.ndarray:
    """Angle in radians on [0, pi) of each spoke, from its profile counter.

    Args:
        profile: integer profile counters ``n`` (any shape), counted from the first spoke.
        ordering: ``golden`` (increment pi/phi), ``tiny-golden`` (pi/(phi+6)) or
            ``linear`` (``spokes_per_frame`` equispaced spokes, the frame rotated by
            ``1/linear_interleaves`` of the spacing each frame, in turn).
        spokes_per_frame: spokes per frame, used by ``linear`` only.
    """
    n = np.asarray(profile, dtype=np.float64)
    if ordering == "golden":
        theta = n * GOLDEN_ANGLE
    elif ordering == "tiny-golden":
        theta = n * TINY_GOLDEN_ANGLE
    elif ordering == "linear":
        p = np.mod(n, spokes_per_frame)
        f = np.mod(np.floor(n / spokes_per_frame), linear_interleaves)
        theta = math.pi * (p + f / linear_interleaves) / spokes_per_frame
    else:
        raise ValueError(f"unknown radial ordering {ordering!r}; expected one of {ORDERINGS}")
    return np.mod(theta, math.pi)


def readout_positions(samples: int) -> np.ndarray:
    """Radial positions ``(s - R/2) / R`` of the ``samples`` readout points, shape ``(R,)``."""
    return (np.arange(samples, dtype=np.float64) - samples / 2.0) / samples


def radial_coordinates(angles: np.ndarray, samples: int) -> np.ndarray:
    """k-space coordinates ``(..., R, 2)`` (kx, ky) in cycles/pixel of spokes at ``angles`` ``(...)``."""
    r = readout_positions(samples)
    a = np.asarray(angles, dtype=np.float64)[..., None]
    return np.stack([np.cos(a) * r, np.sin(a) * r], axis=-1).astype(np.float32)


def angles_from_coordinates(coords: np.ndarray) -> np.ndarray:
    """Spoke angle on [0, pi) recovered from coordinates ``(..., R, 2)`` of full spokes."""
    c = np.asarray(coords, dtype=np.float64)
    d = c[..., -1, :] - c[..., 0, :]
    return np.mod(np.arctan2(d[..., 1], d[..., 0]), math.pi)


#: samples beyond the largest offset of spokes passing beside k = 0 whose weights are Voronoi cells
CENTRAL_CELLS = 8


def density_compensation(coords: np.ndarray) -> np.ndarray:
    """Density weights ``(S, R)`` for one frame of full radial spokes ``coords (S, R, 2)``.

    The weight of a sample is the area of its Voronoi cell in k-space, in (cycles/pixel)^2:
    ``|k| * dtheta_s * dk``, where ``dtheta_s`` is the angular width of spoke ``s``
    (half the gap to each neighbour on the circle of period pi: exact for uneven
    golden-angle sets), ``dk`` the sample spacing; the ``S`` samples at the centre share
    the disc of radius ``dk/2``, which amounts to ``|k| = dk/4`` there. With these
    weights the density-compensated adjoint of a fully sampled disc is the identity, so
    gridding returns a flat object at its true intensity.

    Spokes that pass beside k = 0 (trajectories corrected for unequal gradient delays on the
    two axes, see recon_core/gradient_delay.py) do not meet at the centre; within
    ``CENTRAL_CELLS`` samples of their largest offset the samples get the area of their
    Voronoi cell instead (computed by scipy): the weighted sum of a Gaussian of 1-4 samples
    width on 130 golden-angle spokes corrected for delays 1.5,-1 or 2,-2 is then within
    1.5 % of its integral, against 16-67 % off with the radial formula alone.
    """
    coords = np.asarray(coords, dtype=np.float64)
    n_spokes, samples = coords.shape[:2]
    theta = angles_from_coordinates(coords)
    order = np.argsort(theta)
    sorted_t = theta[order]
    gaps = np.diff(np.concatenate([sorted_t, sorted_t[:1] + math.pi]))
    width_sorted = 0.5 * (gaps + np.roll(gaps, 1))
    width = np.empty(n_spokes)
    width[order] = width_sorted
    # coinciding spokes (e.g. the same angle twice) share their cell
    width = np.maximum(width, 1e-12)
    # |k| along each spoke from its own samples ((s - R/2) / R on the nominal spokes); spokes
    # shifted across themselves by a gradient-delay correction (recon_core/gradient_delay.py)
    # pass beside k = 0, and near it their samples get their Voronoi cells instead
    direction = np.stack([np.cos(theta), np.sin(theta)], axis=-1)                   # (S, 2)
    normal = np.stack([-np.sin(theta), np.cos(theta)], axis=-1)
    along = np.einsum("srd,sd->sr", coords, direction)                              # (S, R)
    offset = np.abs(np.einsum("sd,sd->s", coords.mean(axis=1), normal)).max()
    dk = np.linalg.norm(coords[:, -1] - coords[:, 0], axis=-1)[:, None] / max(samples - 1, 1)   # (S, 1)
    weights = width[:, None] * np.maximum(np.abs(along), dk / 4.0) * dk
    if offset > 0.05 * dk.min():            # (a twentieth of a sample across changes nothing)
        weights = _central_cells(coords, weights, offset + CENTRAL_CELLS * dk.max(), 3 * dk.max())
    return weights.astype(np.float32)


def _central_cells(coords: np.ndarray, weights: np.ndarray, inner: float, margin: float) -> np.ndarray:
    """``weights (S, R)`` with the samples within ``inner`` of k = 0 given the area of their
    Voronoi cell among the samples within ``inner + margin`` (coinciding samples share one)."""
    from scipy.spatial import QhullError, Voronoi

    flat = coords.reshape(-1, 2)
    near = np.flatnonzero(np.linalg.norm(flat, axis=-1) < inner + margin)
    scale = max(inner, 1e-12) * 1e-7
    _, first, inverse, counts = np.unique(np.round(flat[near] / scale), axis=0, return_index=True,
                                          return_inverse=True, return_counts=True)
    points = flat[near][first]
    inverse = inverse.reshape(-1)
    if len(points) < 4:
        return weights
    try:
        vor = Voronoi(points)
    except QhullError:                     # degenerate (e.g. collinear) points: keep the radial weights
        return weights
    # a cell's area is the sum of the triangles (its point, ridge) over its ridges
    ridge_p = vor.ridge_points                                                     # (E, 2)
    ridge_v = np.asarray(vor.ridge_vertices)                                       # (E, 2)
    open_ = np.any(ridge_v < 0, axis=1)
    area = np.zeros(len(points))
    unbounded = np.zeros(len(points), bool)
    unbounded[ridge_p[open_].ravel()] = True
    v1, v2 = vor.vertices[ridge_v[~open_, 0]], vor.vertices[ridge_v[~open_, 1]]
    for side in (0, 1):
        p = points[ridge_p[~open_, side]]
        tri = 0.5 * np.abs((v1[:, 0] - p[:, 0]) * (v2[:, 1] - p[:, 1]) - (v1[:, 1] - p[:, 1]) * (v2[:, 0] - p[:, 0]))
        np.add.at(area, ridge_p[~open_, side], tri)
    area[unbounded | (np.linalg.norm(points, axis=-1) >= inner)] = np.nan
    out = weights.reshape(-1).copy()
    cell = area[inverse]
    use = np.isfinite(cell)
    out[near[use]] = cell[use] / counts[inverse[use]]
    return out.reshape(weights.shape)
