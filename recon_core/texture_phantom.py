"""A second object family for training: random textured regions that deform in time.

The cardiac phantom (:mod:`recon_core.phantom`) draws one kind of anatomy, built from
ellipses. A network trained on it alone learns that kind of image. This family draws
objects with no anatomical template, so that what a network learns is about images in
general (edges, thin lines, texture, dark and bright regions of any shape), not about one
phantom:

- the object's outline is a level set of a smooth random field added to an ellipse;
- inside, 3-7 regions, each a level set of its own random field, painted over each other
  with random intensities (dark ones included, as lungs are);
- 2-9 thin curves (random smooth paths, 0.4-2 fine pixels wide, bright or dark) and a
  few small disks;
- a multiplicative power-law texture ``1/f^beta`` (``beta`` 1-3, amplitude 0-30%) and a
  smooth complex phase;
- motion: a periodic radial contraction around a random centre (a "beat", 50-120 per
  minute, with a Gaussian falloff), a smooth random displacement field that follows the
  same rhythm, and a breathing-like translation; the image is warped (bilinear) to each
  time, so motion within a frame is rendered as finely as the simulator asks.

The interface is :class:`~recon_core.phantom.DynamicPhantom`'s: ``render(t)`` gives the
complex image ``(n, n)`` at time ``t`` seconds, on a grid covering the FOV ``[-1, 1)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .phantom import _smooth_field, _soft

#: ``_smooth_field(rng, n, c)`` has the spectrum ``exp(-(k/c)^2)``: a Gaussian of standard
#: deviation ``c / sqrt(2)`` cycles per FOV; the widths below are standard deviations
_STD = math.sqrt(2.0)


def _field(rng: np.random.Generator, n: int, width: float) -> np.ndarray:
    """Zero-mean, unit-std real random field ``(n, n)``, Gaussian spectrum of standard
    deviation ``width`` cycles per FOV."""
    return _smooth_field(rng, n, _STD * width)


@dataclass
class TextureObject:
    """Parameters of one draw (see :func:`random_texture_object`); ``seed`` makes the fields."""
    seed: int
    regions: int
    curves: int
    disks: int
    texture_amplitude: float
    texture_beta: float
    beat_bpm: float
    beat_center: tuple
    beat_radius: float
    beat_strength: float
    warp_amplitude: float
    breath_period_s: float
    breath_amplitude: tuple

    @property
    def heart_rate_bpm(self) -> float:
        return self.beat_bpm


def random_texture_object(rng: np.random.Generator) -> TextureObject:
    """Draw one object's structure, texture and motion."""
    u = rng.uniform
    return TextureObject(
        seed=int(rng.integers(2**31)), regions=int(rng.integers(3, 8)), curves=int(rng.integers(2, 10)),
        disks=int(rng.integers(0, 5)), texture_amplitude=u(0.0, 0.3), texture_beta=u(1.0, 3.0),
        beat_bpm=u(50, 120), beat_center=(u(-0.4, 0.4), u(-0.4, 0.4)), beat_radius=u(0.1, 0.3),
        beat_strength=u(0.1, 0.35), warp_amplitude=u(0.0, 0.04), breath_period_s=u(2.5, 6.0),
        breath_amplitude=(u(-0.05, 0.05), u(-0.05, 0.05)))


def _power_law(rng: np.random.Generator, n: int, beta: float) -> np.ndarray:
    """Zero-mean, unit-std field with power spectrum ``1/f^beta`` (fine to coarse texture)."""
    f = np.fft.fftfreq(n) * n
    k = np.maximum(np.hypot(f[:, None], f[None, :]), 1.0)
    x = np.fft.ifft2((rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))) * k ** (-beta / 2)).real
    return (x - x.mean()) / (x.std() + 1e-12)


def _curve_distance(x, y, points: np.ndarray) -> np.ndarray:
    """Distance of every grid point to the polyline ``points (P, 2)``."""
    best = np.full(x.shape, np.inf)
    for (ax, ay), (bx, by) in zip(points[:-1], points[1:]):
        dx, dy = bx - ax, by - ay
        t = np.clip(((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy + 1e-12), 0.0, 1.0)
        best = np.minimum(best, np.hypot(x - ax - t * dx, y - ay - t * dy))
    return best


class TexturePhantom:
    """Renders one :class:`TextureObject` on an ``n x n`` grid covering the FOV."""

    def __init__(self, obj: TextureObject, n: int):
        self.o, self.n = obj, n
        rng = np.random.default_rng(obj.seed)
        g = (np.arange(n) - n / 2 + 0.5) / (n / 2)
        y, x = np.meshgrid(g, g, indexing="ij")
        edge = 1.0 / n                    # one fine pixel; phantom._soft's edges are 2 edge wide (a logistic of width edge)
        a, b, ang = rng.uniform(0.55, 0.9), rng.uniform(0.45, 0.85), rng.uniform(0, math.pi)
        xr, yr = x * math.cos(ang) + y * math.sin(ang), -x * math.sin(ang) + y * math.cos(ang)
        outline = np.hypot(xr / a, yr / b) - 1.0 + 0.25 * _field(rng, n, 2.5) * rng.uniform(0.2, 1.0)
        support = _soft(outline * min(a, b), 2 * edge)
        img = np.full((n, n), rng.uniform(0.2, 0.6))
        for _ in range(obj.regions):
            level = rng.uniform(0.3, 1.6)
            region = _soft((level - _field(rng, n, rng.uniform(2.0, 9.0))) * 0.05, 2 * edge)
            intensity = rng.uniform(0.0, 0.15) if rng.uniform() < 0.3 else rng.uniform(0.2, 1.0)
            img = img * (1 - region) + intensity * region
        for _ in range(obj.curves):
            start = rng.uniform(-0.7, 0.7, 2)
            steps = np.cumsum(rng.normal(0, 0.06, (24, 2)) + rng.normal(0, 0.04, 2), axis=0)
            kernel = np.exp(-0.5 * (np.arange(-4, 5) / 2.0) ** 2)
            smooth = np.stack([np.convolve(steps[:, i], kernel / kernel.sum(), mode="same") for i in range(2)], 1)
            width = rng.uniform(0.4, 2.0) * edge
            line = _soft(_curve_distance(x, y, start + smooth) - width, edge)
            value = rng.uniform(0.0, 0.1) if rng.uniform() < 0.4 else rng.uniform(0.6, 1.2)
            img = img * (1 - line) + value * line
        for _ in range(obj.disks):
            cx, cy, r = rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), rng.uniform(0.01, 0.05)
            disk = _soft(np.hypot(x - cx, y - cy) - r, 2 * edge)
            img = img * (1 - disk) + rng.uniform(0.5, 1.2) * disk
        img = img * np.clip(1.0 + obj.texture_amplitude * _power_law(rng, n, obj.texture_beta), 0.0, None)
        c = rng.normal(0, 0.6, 4)
        phase = np.exp(1j * (c[0] + c[1] * x + c[2] * y + c[3] * x * y))
        base = img * support * phase
        self.base = torch.from_numpy(np.stack([base.real, base.imag]).astype(np.float32))[None]   # (1, 2, n, n)
        self.grid = torch.from_numpy(np.stack([x, y], -1).astype(np.float32))                     # (n, n, 2) as (x, y)
        warp = torch.from_numpy(np.stack([_field(rng, n, 3.0), _field(rng, n, 3.0)], -1).astype(np.float32))
        rel = self.grid - torch.tensor(obj.beat_center, dtype=torch.float32)
        falloff = torch.exp(-rel.pow(2).sum(-1, keepdim=True) / (2 * obj.beat_radius ** 2))
        # displacement at full contraction (n, n, 2): the point at rel from the beat's centre samples
        # the resting image at (1 + s falloff) rel, which pulls content towards the centre
        self.contraction = obj.beat_strength * falloff * rel + obj.warp_amplitude * warp

    def _rhythm(self, t: float) -> float:
        """0 at rest, 1 at full contraction: a raised cosine over the first 40% of each beat."""
        p = (t * self.o.beat_bpm / 60.0) % 1.0
        return 0.5 - 0.5 * math.cos(2 * math.pi * p / 0.4) if p < 0.4 else 0.0

    def render(self, t: float) -> np.ndarray:
        o = self.o
        breath = math.sin(2 * math.pi * t / o.breath_period_s)
        src = self.grid + self._rhythm(t) * self.contraction - torch.tensor(o.breath_amplitude) * breath
        out = F.grid_sample(self.base, src[None].float(), mode="bilinear", padding_mode="zeros",
                            align_corners=False)[0]
        return (out[0] + 1j * out[1]).numpy().astype(np.complex64)
