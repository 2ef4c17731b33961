"""A randomised dynamic cardiac phantom: short-axis-like anatomy that beats and breathes.

Every draw from :func:`random_anatomy` varies what a network could otherwise memorise:
body shape and size, fat rim, lungs, liver, spine, vessels, heart position, size,
orientation and wall thickness, blood/myocardium/tissue contrast, smooth texture,
a smooth complex phase, heart rate, ejection fraction and breathing. Objects have soft
edges (about one fine pixel) so that rendering on a grid finer than the reconstruction
matrix approximates a continuous object.

Coordinates are in units of the field of view: ``[-1, 1)`` spans the reconstructed FOV.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Anatomy:
    """Parameters of one subject (one draw); see :func:`random_anatomy`."""
    body_axes: tuple
    body_angle: float
    fat: float
    fat_thickness: float
    tissue: float
    lung: float
    lung_axes: tuple
    liver: float
    heart_center: tuple
    heart_angle: float
    lv_radius: float
    lv_ellipticity: float
    wall: float
    rv_scale: float
    blood: float
    myocardium: float
    heart_rate_bpm: float
    ejection: float
    breath_period_s: float
    breath_amplitude: float
    vessels: list
    texture_seed: int
    phase_coeffs: tuple


def random_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one subject's anatomy, contrast and physiology."""
    u = rng.uniform
    return Anatomy(
        body_axes=(u(0.72, 0.95), u(0.55, 0.82)), body_angle=u(-0.25, 0.25),
        fat=u(0.5, 1.0), fat_thickness=u(0.02, 0.07), tissue=u(0.18, 0.4),
        lung=u(0.01, 0.08), lung_axes=(u(0.16, 0.26), u(0.25, 0.42)), liver=u(0.2, 0.45),
        heart_center=(u(-0.15, 0.15), u(-0.15, 0.1)), heart_angle=u(0, 2 * math.pi),
        lv_radius=u(0.1, 0.17), lv_ellipticity=u(0.85, 1.15), wall=u(0.035, 0.07),
        rv_scale=u(0.9, 1.5), blood=u(0.65, 1.0), myocardium=u(0.12, 0.3),
        heart_rate_bpm=u(50, 110), ejection=u(0.25, 0.45),
        breath_period_s=u(3.0, 6.0), breath_amplitude=u(0.0, 0.06),
        vessels=[(u(-0.5, 0.5), u(-0.5, 0.4), u(0.02, 0.05), u(0.4, 1.0)) for _ in range(rng.integers(1, 4))],
        texture_seed=int(rng.integers(2**31)),
        phase_coeffs=tuple(rng.normal(0, 0.6, 6)))


def cardiac_contraction(phase: np.ndarray | float) -> np.ndarray:
    """Fraction of maximal contraction, 0 at end-diastole, 1 at end-systole, over the
    cycle ``phase`` in [0, 1): fast systole (35% of the cycle), slower diastolic filling."""
    p = np.mod(phase, 1.0)
    systole = 0.35
    up = 0.5 - 0.5 * np.cos(np.pi * np.clip(p / systole, 0, 1))
    down = 0.5 + 0.5 * np.cos(np.pi * np.clip((p - systole) / (1 - systole) * 1.6, 0, 1))
    return np.where(p < systole, up, down)


def _soft(d: np.ndarray, edge: float) -> np.ndarray:
    """Soft indicator of ``d < 0`` with an edge of width ``edge``."""
    return 0.5 * (1 - np.tanh(d / edge))


def _ellipse(x, y, cx, cy, a, b, angle=0.0):
    """Signed-ish distance (in FOV units) from the boundary of an ellipse, negative inside."""
    c, s = math.cos(angle), math.sin(angle)
    xr = (x - cx) * c + (y - cy) * s
    yr = -(x - cx) * s + (y - cy) * c
    r = np.sqrt((xr / a) ** 2 + (yr / b) ** 2)
    return (r - 1.0) * min(a, b)


def _smooth_field(rng: np.random.Generator, n: int, cutoff: float) -> np.ndarray:
    """Zero-mean, unit-std random field on an n x n grid, band-limited to ``cutoff`` cycles/FOV."""
    noise = rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))
    f = np.fft.fftfreq(n) * n
    kk = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    field = np.fft.ifft2(noise * np.exp(-(kk / cutoff) ** 2)).real
    return (field - field.mean()) / (field.std() + 1e-12)


class DynamicPhantom:
    """Renders frames of one subject on an ``n x n`` grid covering the FOV.

    ``render(t)`` gives the complex image at time ``t`` seconds.
    """

    def __init__(self, anatomy: Anatomy, n: int, texture: float = 1.0, fine_texture: float = 0.0):
        """``texture`` scales the smooth texture's amplitude (1: 8% + 4% std); ``fine_texture``
        adds a fine-grained one (std, band-limited to 50 cycles/FOV), as trabeculae and
        parenchyma give."""
        self.a = anatomy
        self.n = n
        g = (np.arange(n) - n / 2 + 0.5) / (n / 2)
        self.y, self.x = np.meshgrid(g, g, indexing="ij")
        self.edge = 1.0 / n
        rng = np.random.default_rng(anatomy.texture_seed)
        self.texture = 1.0 + texture * (0.08 * _smooth_field(rng, n, 6.0) + 0.04 * _smooth_field(rng, n, 20.0))
        if fine_texture:
            self.texture = self.texture + fine_texture * _smooth_field(rng, n, 50.0)
        self.texture = np.clip(self.texture, 0.0, None)
        c = anatomy.phase_coeffs
        self.phase = np.exp(1j * (c[0] + c[1] * self.x + c[2] * self.y + c[3] * self.x * self.y
                                  + c[4] * self.x ** 2 + c[5] * self.y ** 2))

    def render(self, t: float) -> np.ndarray:
        a, x, y, e = self.a, self.x, self.y, self.edge
        shift = a.breath_amplitude * math.sin(2 * math.pi * t / a.breath_period_s)
        contraction = float(cardiac_contraction(t * a.heart_rate_bpm / 60.0))

        ba, bb = a.body_axes
        body = _soft(_ellipse(x, y, 0, 0, ba, bb, a.body_angle), e)
        inner = _soft(_ellipse(x, y, 0, 0, ba - a.fat_thickness, bb - a.fat_thickness, a.body_angle), e)
        img = a.fat * (body - inner) + a.tissue * inner
        la, lb = a.lung_axes
        for side in (-1, 1):
            lung = _soft(_ellipse(x, y, side * (ba * 0.45), -0.1 + 0.3 * shift, la, lb), e) * inner
            img = img * (1 - lung) + a.lung * lung
        liver = _soft(_ellipse(x, y, -0.2, bb * 0.75 + shift, ba * 0.6, bb * 0.35), e) * inner
        img = img * (1 - liver) + a.liver * liver
        spine = _soft(_ellipse(x, y, 0, -bb * 0.78, 0.06, 0.06), e)
        img = img * (1 - spine) + 0.15 * spine
        for vx, vy, vr, vi in a.vessels:
            pulse = 0.8 + 0.2 * contraction
            v = _soft(_ellipse(x, y, vx, vy + 0.5 * shift, vr, vr), e) * inner
            img = img * (1 - v) + vi * a.blood * pulse * v

        # heart: LV blood pool in a myocardial ring of constant area, RV crescent beside it
        hx, hy = a.heart_center[0], a.heart_center[1] + shift
        r_lv = a.lv_radius * math.sqrt(1 - a.ejection * contraction)
        ring_area = math.pi * ((a.lv_radius + a.wall) ** 2 - a.lv_radius ** 2)
        r_out = math.sqrt(r_lv ** 2 + ring_area / math.pi)
        ang = a.heart_angle
        ell = a.lv_ellipticity
        epi = _soft(_ellipse(x, y, hx, hy, r_out * ell, r_out / ell, ang), e)
        lv = _soft(_ellipse(x, y, hx, hy, r_lv * ell, r_lv / ell, ang), e)
        rv_r = a.lv_radius * a.rv_scale * math.sqrt(1 - 0.8 * a.ejection * contraction)
        rx, ry = hx + math.cos(ang) * (r_out + 0.6 * rv_r), hy + math.sin(ang) * (r_out + 0.6 * rv_r)
        rv = _soft(_ellipse(x, y, rx, ry, rv_r * 1.3, rv_r * 0.75, ang + math.pi / 2), e) * (1 - epi)
        rv_wall = _soft(_ellipse(x, y, rx, ry, rv_r * 1.3 + 0.02, rv_r * 0.75 + 0.02, ang + math.pi / 2),
                        e) * (1 - epi) * (1 - rv)
        img = img * (1 - epi) + a.myocardium * (epi - lv) + a.blood * lv
        img = img * (1 - rv - rv_wall) + a.blood * rv + a.myocardium * rv_wall
        return (img * self.texture * body * self.phase).astype(np.complex64)


COIL_LAYOUTS = ("ring", "panels")


def coil_sensitivities(rng: np.random.Generator, coils: int, n: int, layout: str = "ring") -> np.ndarray:
    """Smooth complex sensitivities ``(coils, n, n)`` of surface coils around the body.

    ``layout``: ``ring``, coil centres on an ellipse just outside the body at jittered,
    evenly spaced angles; ``panels``, an anterior and a posterior array (centres on two lines
    above and below the body, as chest and spine coils), so that the body's centre is far
    from every coil. Magnitude falls off like a loop coil's (``(1 + (d/d0)^2)^-1.5``), phase
    has a per-coil offset and a gentle gradient. Normalised so that ``sum_c |S_c|^2 = 1``
    everywhere: the reference frames are then exactly what a perfect SENSE reconstruction
    with normalised (ESPIRiT-like) maps returns, without coil shading.
    """
    if layout not in COIL_LAYOUTS:
        raise ValueError(f"coil layout {layout!r}: expected one of {COIL_LAYOUTS}")
    g = (np.arange(n) - n / 2 + 0.5) / (n / 2)
    y, x = np.meshgrid(g, g, indexing="ij")
    start = rng.uniform(0, 2 * math.pi)
    rx, ry = rng.uniform(1.0, 1.3), rng.uniform(0.85, 1.2)
    d0 = rng.uniform(0.5, 1.0)
    maps = []
    for c in range(coils):
        if layout == "ring":
            th = start + 2 * math.pi * c / coils + rng.normal(0, 0.15)
            cx, cy = rx * math.cos(th), ry * math.sin(th)
        else:
            row, col = c % 2, c // 2
            per_row = (coils + 1 - row) // 2
            cx = (col + 0.5) / per_row * 1.6 - 0.8 + rng.normal(0, 0.05)
            cy = (1 if row == 0 else -1) * ry * 0.9
        d2 = (x - cx) ** 2 + (y - cy) ** 2
        mag = (1 + d2 / d0 ** 2) ** -1.5
        ph = rng.uniform(0, 2 * math.pi) + rng.normal(0, 0.5) * x + rng.normal(0, 0.5) * y
        maps.append(mag * np.exp(1j * ph))
    maps = np.stack(maps)
    rss = np.sqrt((np.abs(maps) ** 2).sum(0))
    return (maps / rss).astype(np.complex64)
