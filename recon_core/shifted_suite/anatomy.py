"""The object model of the shifted suite: a thorax slice built from star-shaped regions
whose contours are random smooth Fourier series, painted in order onto a fine grid.

A region with centre ``c`` is ``{p : |p - c| < r(theta)}``, ``r(theta) = r0 (1 + Re sum_k
a_k e^{i k theta})``, ``|a_k|`` falling as ``k^-beta``; its edge is a linear ramp one fine
pixel wide (an anti-aliased boundary of a continuous object). Structures: body outline
with a subcutaneous fat rim, muscle with fine band-pass texture, dark lungs with small
bright pulmonary vessels, liver under a moving diaphragm, spine (cortical rim, cord),
descending aorta, ribs, and a small heart: left-ventricular blood pool with trabeculae
(thin dark strands off the endocardium) and two papillary muscles, myocardium that
thickens as the cavity shrinks (wall area kept), right ventricle, a thin pericardial fat
line. A static smooth phase multiplies the whole object.

Coordinates are in units of half the field of view: ``[-1, 1)`` spans the reconstructed
FOV; ``y`` grows with the row index (posterior at large ``y``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .motion import CardiacMotion, RespiratoryMotion


def _contour_coeffs(rng: np.random.Generator, harmonics: int, roughness: float, beta: float = 1.6) -> np.ndarray:
    """Complex Fourier coefficients ``a_1..a_K`` of a smooth star-shaped contour, with
    ``sum |a_k| <= 0.6`` so the radius stays positive."""
    k = np.arange(1, harmonics + 1)
    a = roughness * (rng.normal(size=harmonics) + 1j * rng.normal(size=harmonics)) / k ** beta
    total = np.abs(a).sum()
    return a * (0.6 / total) if total > 0.6 else a


@dataclass
class Region:
    """A star-shaped region: centre ``(cx, cy)``, mean radius ``r0``, contour coefficients
    ``coeffs`` (complex, harmonics 1..K), rotation ``angle`` (rad) of the contour."""
    cx: float
    cy: float
    r0: float
    coeffs: np.ndarray = field(default_factory=lambda: np.zeros(0, complex))
    angle: float = 0.0

    def max_radius(self) -> float:
        return self.r0 * (1 + float(np.abs(self.coeffs).sum()))

    def moved(self, dx: float = 0.0, dy: float = 0.0, scale: float = 1.0, dangle: float = 0.0) -> "Region":
        return Region(self.cx + dx, self.cy + dy, self.r0 * scale, self.coeffs, self.angle + dangle)


class Canvas:
    """A fine grid of ``n x n`` pixels on ``[-1, 1)^2``; pixel ``j`` has centre
    ``(j - n/2 - 1/2) * 2/n`` (so a 2x2 block average is centred on the coarse pixel,
    see :mod:`recon_core.shifted_suite.acquisition`)."""

    def __init__(self, n: int):
        self.n = n
        self.h = 2.0 / n
        self.axis = (np.arange(n) - n / 2 - 0.5) * self.h
        self.image = np.zeros((n, n), np.float64)

    def window(self, cx: float, cy: float, radius: float):
        """Row/column slices covering the disc of ``radius`` around ``(cx, cy)``."""
        def rng(c):
            lo = int(np.floor((c - radius) / self.h + self.n / 2 + 0.5)) - 1
            hi = int(np.ceil((c + radius) / self.h + self.n / 2 + 0.5)) + 2
            return slice(max(lo, 0), min(max(hi, 0), self.n))
        return rng(cy), rng(cx)

    def coverage(self, region: Region, radius_offset: float = 0.0):
        """``(slices, mask)``: fractional coverage in ``[0, 1]`` of the window's pixels by
        ``region`` with its radius grown by ``radius_offset`` (FOV units)."""
        sl = self.window(region.cx, region.cy, region.max_radius() + abs(radius_offset) + 2 * self.h)
        if sl[0].stop <= sl[0].start or sl[1].stop <= sl[1].start:
            return sl, None
        x = self.axis[sl[1]][None, :] - region.cx
        y = self.axis[sl[0]][:, None] - region.cy
        z = x + 1j * y
        rho = np.abs(z)
        r = np.full(rho.shape, region.r0)
        if region.coeffs.size:
            unit = z / np.maximum(rho, 1e-12) * np.exp(-1j * region.angle)
            power = np.ones_like(unit)
            series = np.zeros(rho.shape)
            for a in region.coeffs:
                power = power * unit
                series += (a * power).real
            r = region.r0 * (1 + series)
        return sl, np.clip(0.5 + (r + radius_offset - rho) / self.h, 0.0, 1.0)

    def paint(self, region: Region, value, radius_offset: float = 0.0, inside=None) -> None:
        """Paint ``value`` (scalar or a full-canvas array) over ``region``; ``inside``
        (a full-canvas coverage array) restricts the paint to another region."""
        sl, m = self.coverage(region, radius_offset)
        if m is None:
            return
        if inside is not None:
            m = m * inside[sl]
        v = value[sl] if isinstance(value, np.ndarray) else value
        self.image[sl] = self.image[sl] * (1 - m) + v * m

    def full_coverage(self, region: Region, radius_offset: float = 0.0) -> np.ndarray:
        out = np.zeros((self.n, self.n))
        sl, m = self.coverage(region, radius_offset)
        if m is not None:
            out[sl] = m
        return out

    def strand(self, x0, y0, x1, y1, width: float, value: float) -> None:
        """Paint a straight strand of ``width`` (FOV units) from ``(x0, y0)`` to ``(x1, y1)``."""
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        half = np.hypot(x1 - x0, y1 - y0) / 2
        sl = self.window(cx, cy, half + width + 2 * self.h)
        if sl[0].stop <= sl[0].start or sl[1].stop <= sl[1].start:
            return
        x = self.axis[sl[1]][None, :]
        y = self.axis[sl[0]][:, None]
        dx, dy = x1 - x0, y1 - y0
        length2 = max(dx * dx + dy * dy, 1e-12)
        s = np.clip(((x - x0) * dx + (y - y0) * dy) / length2, 0, 1)
        d = np.hypot(x - x0 - s * dx, y - y0 - s * dy)
        m = np.clip(0.5 + (width / 2 - d) / self.h, 0.0, 1.0)
        self.image[sl] = self.image[sl] * (1 - m) + value * m


def bandpass_texture(rng: np.random.Generator, n: int, low: float, high: float) -> np.ndarray:
    """Zero-mean, unit-RMS random field ``(n, n)`` with spatial frequencies in ``[low, high]``
    cycles per fine pixel (isotropic band)."""
    f = np.fft.fftfreq(n)
    kr = np.hypot(f[:, None], f[None, :])
    band = ((kr >= low) & (kr <= high)).astype(float)
    field_ = np.fft.ifft2(np.fft.fft2(rng.normal(size=(n, n))) * band).real
    return field_ / max(field_.std(), 1e-12)


@dataclass
class Thorax:
    """One subject of the shifted suite. ``detail`` in ``[0, 1]`` scales the fine structure
    (texture amplitude, trabeculae, vessel count); ``heart_scale`` the heart's size;
    ``ejection_fraction`` the LV area change; ``breath_mm`` the diaphragm/heart excursion;
    the motion models drive everything in time."""
    rng_seed: int
    fine: int
    cardiac: CardiacMotion
    respiration: RespiratoryMotion
    detail: float = 0.5
    heart_scale: float = 1.0
    ejection_fraction: float = 0.55
    breath_mm: float = 8.0
    fov_mm: float = 300.0

    def __post_init__(self):
        rng = np.random.default_rng(self.rng_seed)
        n = self.fine
        self.body = Region(rng.uniform(-0.04, 0.04), rng.uniform(-0.02, 0.06), rng.uniform(0.66, 0.8),
                           _contour_coeffs(rng, 6, 0.08), rng.uniform(-0.2, 0.2))
        # flatten into a thorax (wider than deep): a strong second harmonic
        self.body.coeffs = self.body.coeffs.copy()
        self.body.coeffs[1] = 0.18 + 0.04 * rng.normal()
        self.fat_width = rng.uniform(0.025, 0.06)
        self.fat_value = rng.uniform(0.75, 0.95)
        self.muscle_value = rng.uniform(0.3, 0.45)
        self.texture = 0.15 * self.detail * bandpass_texture(rng, n, 0.05, 0.22) \
            + 0.05 * bandpass_texture(rng, n, 0.01, 0.05)
        side = rng.uniform(0.3, 0.38)
        self.lungs = [Region(-side + 0.02 * rng.normal(), -0.05 + 0.03 * rng.normal(), rng.uniform(0.22, 0.3),
                             _contour_coeffs(rng, 5, 0.15), rng.uniform(0, 6.3)),
                      Region(side + 0.02 * rng.normal(), -0.05 + 0.03 * rng.normal(), rng.uniform(0.22, 0.3),
                             _contour_coeffs(rng, 5, 0.15), rng.uniform(0, 6.3))]
        self.lung_value = rng.uniform(0.01, 0.05)
        count = int(6 + 30 * self.detail)
        self.vessels = [(rng.integers(2), rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform(0.05, 0.8)),
                         rng.uniform(0.006, 0.014), rng.uniform(0.5, 0.9)) for _ in range(count)]
        self.liver = Region(rng.uniform(-0.25, -0.1), rng.uniform(0.35, 0.5), rng.uniform(0.3, 0.4),
                            _contour_coeffs(rng, 4, 0.1), rng.uniform(0, 6.3))
        self.liver_value = rng.uniform(0.22, 0.32)
        self.spine = Region(rng.uniform(-0.03, 0.03), self.body.cy + 0.48, rng.uniform(0.08, 0.1),
                            _contour_coeffs(rng, 3, 0.05))
        self.aorta = Region(self.spine.cx + rng.uniform(0.1, 0.16), self.spine.cy - 0.12, rng.uniform(0.03, 0.045))
        self.ribs = [(a, rng.uniform(0.012, 0.02)) for a in np.linspace(0.5, 2 * np.pi - 0.5, int(8 + 6 * self.detail))
                     + 0.08 * rng.normal(size=int(8 + 6 * self.detail))]
        # heart: centre between the lungs, anterior; small
        hr = self.heart_scale * rng.uniform(0.085, 0.11)
        self.heart_c = (rng.uniform(-0.08, 0.04), rng.uniform(-0.12, -0.02))
        self.heart_angle = rng.uniform(-0.8, 0.2)
        self.lv_ed = hr                                        # end-diastolic cavity radius
        self.wall = hr * rng.uniform(0.32, 0.45)
        self.lv_coeffs = _contour_coeffs(rng, 4, 0.05)
        self.rv_ratio = rng.uniform(0.85, 1.1)
        self.blood = rng.uniform(0.85, 1.0)
        self.myo = rng.uniform(0.18, 0.3)
        self.trabeculae = [(rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.3), rng.uniform(0.01, 0.018))
                           for _ in range(int(2 + 7 * self.detail))]
        self.papillary = [self.heart_angle + np.pi / 2 + d for d in (-0.7, 0.7)]
        # static smooth phase (B0 / receiver), up to ~1 rad across the FOV
        c = rng.normal(size=5) * np.array([0.5, 0.5, 0.25, 0.25, 0.25])
        x = np.linspace(-1, 1, n)[None, :]
        y = np.linspace(-1, 1, n)[:, None]
        self.phase = np.exp(1j * (c[0] * x + c[1] * y + c[2] * x * x + c[3] * y * y + c[4] * x * y))

    def render(self, t: float) -> np.ndarray:
        """The complex object ``(fine, fine)`` at time ``t`` (s)."""
        cv = Canvas(self.fine)
        b = float(self.respiration.breathing(t))
        shift = self.breath_mm * b / (self.fov_mm / 2)          # FOV units, posterior-anterior/head-foot in plane
        c = float(self.cardiac.contraction(t))
        expand = 1 + 0.025 * b
        body = self.body.moved(scale=expand)
        tissue = self.muscle_value * (1 + self.texture)
        cv.paint(body, self.fat_value)
        cv.paint(body, tissue, radius_offset=-self.fat_width)
        for a, r in self.ribs:
            rc = body.r0 * 0.92
            p = Region(body.cx + rc * np.cos(a) * 1.1, body.cy + rc * np.sin(a) * 0.8, r)
            cv.paint(p, 0.05)
            cv.paint(p, 0.55, radius_offset=-0.45 * r)
        lungs = [lg.moved(dy=0.3 * shift, scale=1 + 0.06 * b) for lg in self.lungs]
        for lg in lungs:
            cv.paint(lg, self.lung_value)
        for side, a, rr, size, val in self.vessels:
            lg = lungs[side]
            cv.paint(Region(lg.cx + rr * lg.r0 * np.cos(a), lg.cy + rr * lg.r0 * np.sin(a), size), val)
        liver = self.liver.moved(dy=-shift)
        inside_body = cv.full_coverage(body, -self.fat_width)
        cv.paint(liver, self.liver_value * (1 + 0.5 * self.texture), inside=inside_body)
        cv.paint(self.spine, 0.08)
        cv.paint(self.spine, 0.5 * (1 + 0.5 * self.texture), radius_offset=-0.012)
        cv.paint(Region(self.spine.cx, self.spine.cy + self.spine.r0 + 0.03, 0.025), 0.05)
        cv.paint(Region(self.spine.cx, self.spine.cy + self.spine.r0 + 0.03, 0.013), 0.7)
        cv.paint(self.aorta, self.blood * 0.9)
        self._heart(cv, c, -0.4 * shift)
        return (cv.image * self.phase).astype(np.complex64)

    def _heart(self, cv: Canvas, c: float, dy: float) -> None:
        ef = self.ejection_fraction
        scale = np.sqrt(1 - ef * c)                              # LV area ratio 1 - EF at end-systole
        hx, hy = self.heart_c[0] + 0.01 * c * np.cos(self.heart_angle), self.heart_c[1] + dy
        twist = 0.08 * c
        r_in = self.lv_ed * scale
        r_out = np.sqrt(r_in ** 2 + (self.lv_ed + self.wall) ** 2 - self.lv_ed ** 2)
        d = self.lv_ed + self.wall + self.rv_ratio * self.lv_ed * 0.7
        ra = self.heart_angle
        rv = Region(hx + d * np.cos(ra) * 0.8, hy + d * np.sin(ra) * 0.8,
                    self.rv_ratio * self.lv_ed * (1.0 - 0.25 * c) * 1.25, self.lv_coeffs * 0.8, ra)
        # pericardial fat line and RV wall around both ventricles
        epi = Region(hx, hy, r_out, self.lv_coeffs, ra + twist)
        cv.paint(epi, 0.7, radius_offset=0.012)
        cv.paint(rv, 0.7, radius_offset=0.012)
        cv.paint(epi, self.myo, radius_offset=0.004)
        cv.paint(rv, self.myo, radius_offset=0.005)
        cv.paint(rv, self.blood * 0.92)
        cv.paint(epi, self.myo)
        lv = Region(hx, hy, r_in, self.lv_coeffs, ra + twist)
        cv.paint(lv, self.blood)
        for a, length, width in self.trabeculae:
            a = a + twist
            x0, y0 = hx + r_in * 1.02 * np.cos(a), hy + r_in * 1.02 * np.sin(a)
            x1 = hx + r_in * (1 - length * (1 + 0.5 * c)) * np.cos(a)
            y1 = hy + r_in * (1 - length * (1 + 0.5 * c)) * np.sin(a)
            cv.strand(x0, y0, x1, y1, width * (1 + 0.3 * c), self.myo)
        for a in self.papillary:
            a = a + twist
            cv.paint(Region(hx + 0.6 * r_in * np.cos(a), hy + 0.6 * r_in * np.sin(a), 0.22 * self.lv_ed), self.myo)
