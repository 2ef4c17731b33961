"""The stream's composite image: a running gridding of every spoke so far.

A 2-frame window sees 26 spokes. Where nothing moves, all the spokes the stream has
received describe the same image; streaming temporal-TV CS profits from them through its
warm start and kept improving along a 32-frame scan (+5 dB on the low-SNR val scan from
frame 8 to 30) while the real-time network did not. The composite gives the network that
past as an input, not as a pull (a pull toward the previous image, ``arch: memory``, lagged
the moving heart): the regularizer sees it beside the window's frames and decides, pixel by
pixel, where it can be trusted (nothing moved) and where not (view sharing, the composite
image of real-time radial methods).

It is the exponentially weighted mean of the frames' density-compensated adjoints
``A_t^H y_w,t`` (the right-hand sides the stream computes anyway), frame ``t`` weighted
``rate (1 - rate)^age`` (the first frame enters with weight one):

    c_t = (1 - rate) c_{t-1} + rate A_t^H y_w,t

With golden-angle spokes the frames' streaks point in different directions and average
out, and so does the noise: over 32 frames at rate 1/8 it scored 28-30 dB (magnitude,
LS-scaled) on in-distribution val scans where one frame's 3-iteration CG-SENSE scored
20-28 dB. Its scale is that of the images (``A^H y_w`` of a density-compensated frame is
0.8-0.96 x its CG-SENSE start over the v3 scans). It costs one blend per frame; a
CG-SENSE of the running normal operator (the frames' Toeplitz kernels blended alike) cost
30 ms per frame for two warm-started iterations (12 coils, 1 thread), more than the budget.
It does not depend on the network, so training precomputes it for a clip
(:func:`composite_sequence`). A stream keeps the coil images' blend, so that new coil maps
re-combine it (:meth:`Composite.image`).

A stream can keep several composites at once, one per rate (``arch: composite: [0.125,
0.03125]``): a fast one that follows the moving heart and a slow one whose spokes fill
k-space (32 frames of 13 spokes are 416 spokes, twice the Nyquist count of a 128 matrix)
where nothing moves. Alone, as images, the fast one scores best where the object moves and
the slow one where it does not; the network sees both and chooses pixel by pixel.

Shapes: data ``(Y, X)`` (combined) or ``(C, Y, X)`` (coil images), maps ``(C, Y, X)``; the
composite of ``K`` rates is ``(K, Y, X)``.
"""
from __future__ import annotations

import torch

from ..frame_prep import combine


def composite_rates(value) -> tuple[float, ...]:
    """The rates of an ``arch: composite`` value: a rate, a list of rates, or 0 / None / [] for
    none. Raises ``ValueError`` naming a rate outside (0, 1]."""
    if value is None:
        return ()
    rates = [value] if isinstance(value, (int, float)) else list(value)
    if rates == [0]:
        return ()
    for r in rates:
        if not 0.0 < float(r) <= 1.0:
            raise ValueError(f"composite rate={r}: expected 0 < rate <= 1 (or 0 alone for none)")
    return tuple(float(r) for r in rates)


class Composite:
    """The running composites of one stream, one per rate."""

    def __init__(self, rates):
        self.rates = composite_rates(rates)
        if not self.rates:
            raise ValueError(f"composite rates={rates!r}: expected at least one rate in (0, 1]")
        self.data: torch.Tensor | None = None       # (K, ...): the blends of what add() was given
        self._weights: torch.Tensor | None = None   # (K, 1, ...): the rates, shaped and typed as data

    def add(self, data: torch.Tensor) -> None:
        """One more frame's ``A^H y_w (Y, X)`` or coil images ``F^H w y (C, Y, X)``."""
        if self.data is None:
            self.data = data.expand(len(self.rates), *data.shape).clone()
            self._weights = torch.tensor(self.rates, dtype=data.dtype, device=data.device).view(-1, *[1] * data.dim())
            return
        self.data = torch.lerp(self.data, data.expand_as(self.data), self._weights)

    def image(self, maps: torch.Tensor) -> torch.Tensor:
        """``(K, Y, X)``: the blends of coil images combined with ``maps`` (or the combined blends)."""
        return combine(self.data, maps) if self.data.dim() == 4 else self.data


def composite_sequence(rhs: torch.Tensor, rates) -> torch.Tensor:
    """The composites after each of a clip's frames, ``(T, K, Y, X)``, from their ``A^H y_w (T, Y, X)``."""
    comp, out = Composite(rates), []
    with torch.no_grad():
        for r in rhs:
            comp.add(r)
            out.append(comp.data)
    return torch.stack(out)
