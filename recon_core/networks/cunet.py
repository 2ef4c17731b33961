"""CU-Net: a complex U-Net for 2D + time, the learned regularizer of the unrolled networks.

Each stage is a 2D spatial convolution ``(1, 3, 3)`` then a 1D temporal convolution
``(3, 1, 1)``, each followed by a leaky ReLU; the encoder downsamples space by average
pooling, the decoder upsamples by transposed convolution and adds the skip connection;
a final 3D convolution ``(3, 3, 3)`` maps back to the image channels.

Complex images enter as two real channels (real, imaginary). To keep the per-frame
cost small on a CPU, the input can first be rearranged losslessly from ``(2, T, Y, X)``
to ``(2 r^2, T, Y/r, X/r)`` (space-to-depth, ``r = unshuffle``) and back at the end.

With ``noise_input``, one more input channel carries the data's noise level (a constant
map of :func:`noise_feature`, appended after space-to-depth), so that one network can
denoise weakly at high SNR and strongly at low SNR; its first-layer weights start at zero,
so a network initialised from one without the channel computes the same function.
With ``composite_input = K``, K complex images shared by all frames (the stream's
composites, :mod:`~recon_core.networks.composite`) enter the first stage through their own
2D convolution (``composite_in``, on their space-to-depth channels, image by image), added
to the first spatial convolution's output of every frame; it starts at zero weight, and as
a tensor of its own it can train at another learning rate than a network it is added to.
A network with more composites initialised from one with fewer gets zero weights for the
new images (the same function at start).

Shapes: ``forward(x, noise, composite)`` takes and returns complex ``(B, T, Y, X)``
(``composite (B, K, Y, X)``, or ``(B, Y, X)`` for K = 1); Y and X must be
divisible by ``unshuffle * 2**(levels - 1)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _space_to_depth(x: torch.Tensor, r: int) -> torch.Tensor:
    """(B, C, T, Y, X) -> (B, C r^2, T, Y/r, X/r)."""
    if r == 1:
        return x
    b, c, t, y, w = x.shape
    x = x.reshape(b, c, t, y // r, r, w // r, r).permute(0, 1, 4, 6, 2, 3, 5)
    return x.reshape(b, c * r * r, t, y // r, w // r)


def _depth_to_space(x: torch.Tensor, r: int) -> torch.Tensor:
    """Inverse of :func:`_space_to_depth`."""
    if r == 1:
        return x
    b, c, t, y, w = x.shape
    x = x.reshape(b, c // (r * r), r, r, t, y, w).permute(0, 1, 4, 5, 2, 6, 3)
    return x.reshape(b, c // (r * r), t, y * r, w * r)


def _temporal_taps(h: torch.Tensor) -> torch.Tensor:
    """(B, T, C, Y, X) -> (B, T, 3C, Y, X): each frame with its two neighbours (zero padded
    in time), in the order t-1, t, t+1 of a size-3 temporal kernel. Written into one zeroed
    tensor (pad + cat copied the data twice: 230 -> 160 us for a 2-frame window)."""
    c = h.shape[2]
    out = h.new_zeros(*h.shape[:2], 3 * c, *h.shape[3:])
    out[:, 1:, :c] = h[:, :-1]
    out[:, :, c:2 * c] = h
    out[:, :-1, 2 * c:] = h[:, 1:]
    return out


def _half(v: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling of ``(N, C, Y, X)`` (even Y, X) as a sum of four strided views: the
    same values as ``F.avg_pool2d(v, 2)`` (to rounding) in a third of its time on this CPU."""
    return (v[..., ::2, ::2] + v[..., 1::2, ::2] + v[..., ::2, 1::2] + v[..., 1::2, 1::2]) * 0.25


def _unshuffle(v: torch.Tensor, r: int) -> torch.Tensor:
    """``F.pixel_unshuffle(v, r)`` for ``(N, C, Y, X)`` as one reshape-permute (2x faster here)."""
    n, c, y, x = v.shape
    return v.reshape(n, c, y // r, r, x // r, r).permute(0, 1, 3, 5, 2, 4).reshape(n, c * r * r, y // r, x // r)


def _shuffle(v: torch.Tensor, r: int) -> torch.Tensor:
    """``F.pixel_shuffle(v, r)``, the inverse of :func:`_unshuffle`."""
    n, c, y, x = v.shape
    return v.reshape(n, c // (r * r), r, r, y, x).permute(0, 1, 4, 2, 5, 3).reshape(n, c // (r * r), y * r, x * r)


def _per_frame(fn, h: torch.Tensor) -> torch.Tensor:
    """Apply a 2D op ``fn`` to every frame of ``h (B, T, C, Y, X)``."""
    out = fn(h.flatten(0, 1))
    return out.unflatten(0, h.shape[:2])


def _conv3d_as_2d(conv: nn.Conv3d, h: torch.Tensor) -> torch.Tensor:
    """``conv`` (kernel (kt, 3, 3) or (kt, 1, 1), kt in 1 or 3, 'same' padding) on
    ``h (B, T, C, Y, X)`` as one 2D convolution per frame over the stacked temporal taps.

    Equal to ``conv`` applied in (B, C, T, Y, X) layout, but it runs on the optimised 2D
    convolution kernels: PyTorch's CPU Conv3d takes a slow im2col path (the CU-Net ran 3x
    slower with it here).
    """
    w = conv.weight                                       # (Cout, Cin, kt, ky, kx)
    kt, ky = w.shape[2], w.shape[3]
    if kt == 3:
        h = _temporal_taps(h)
    w2 = w.permute(0, 2, 1, 3, 4).reshape(w.shape[0], kt * w.shape[1], ky, w.shape[4])
    return _per_frame(lambda v: F.conv2d(v, w2, conv.bias, padding=ky // 2), h)


class Stage(nn.Module):
    """Spatial (1,3,3) conv -> leaky ReLU -> temporal (3,1,1) conv -> leaky ReLU.

    Operates on the frames-major layout ``(B, T, C, Y, X)``."""

    def __init__(self, cin: int, cout: int, slope: float = 0.1):
        super().__init__()
        self.spatial = nn.Conv3d(cin, cout, (1, 3, 3), padding=(0, 1, 1))
        self.temporal = nn.Conv3d(cout, cout, (3, 1, 1), padding=(1, 0, 0))
        self.slope = slope

    def forward(self, h, extra=None):
        """``extra (B, Cout, Y, X)``, if given, is added to every frame after the spatial convolution."""
        h = _conv3d_as_2d(self.spatial, h)
        if extra is not None:
            h = h + extra[:, None]
        h = F.leaky_relu(h, self.slope)
        return F.leaky_relu(_conv3d_as_2d(self.temporal, h), self.slope)


def noise_feature(noise: float) -> float:
    """The noise channel's value for a k-space noise standard deviation ``noise`` in the
    Problem's normalised units (:attr:`~recon_core.networks.problem.Problem.noise`):
    ``log(noise) - NOISE_FEATURE_OFFSET``. Measured at the streams' scale (first frame's
    CG-SENSE start): 2.7 to 6.1 over the v3 training scans (SNR 3-60, median 4.4), 3.3 to 3.8
    on the shifted suite's val and test scans but its low-SNR ones, 4.8 to 5.3 on those."""
    return math.log(max(float(noise), 1e-12)) - NOISE_FEATURE_OFFSET


#: shifts :func:`noise_feature` (part of the trained networks' function: changing it changes them)
NOISE_FEATURE_OFFSET = -3.0


class CUNet(nn.Module):
    def __init__(self, channels: int = 24, levels: int = 2, unshuffle: int = 2, noise_input: bool = False,
                 composite_input: int = 0):
        super().__init__()
        self.unshuffle = unshuffle
        self.levels = levels
        self.noise_input = noise_input
        self.composite_input = int(composite_input)     # the number of composite images; 0: none
        cin = 2 * unshuffle * unshuffle
        widths = [channels * 2 ** i for i in range(levels)]
        self.enc = nn.ModuleList()
        c = cin + int(noise_input)
        for w in widths:
            self.enc.append(Stage(c, w))
            c = w
        self.up = nn.ModuleList([nn.ConvTranspose3d(widths[i + 1], widths[i], (1, 2, 2), stride=(1, 2, 2))
                                 for i in range(levels - 1)])
        self.dec = nn.ModuleList([Stage(widths[i], widths[i]) for i in range(levels - 1)])
        self.final = nn.Conv3d(widths[0], cin, 3, padding=1)
        # start as U = 0: the untrained update is a plain gradient step (CG-like, convergent)
        nn.init.zeros_(self.final.weight)
        nn.init.zeros_(self.final.bias)
        if noise_input:
            with torch.no_grad():
                self.enc[0].spatial.weight[:, cin:] = 0
        self.composite_in = (nn.Conv2d(cin * self.composite_input, widths[0], 3, padding=1, bias=False)
                             if self.composite_input else None)
        if self.composite_input:
            nn.init.zeros_(self.composite_in.weight)

    @property
    def multiple(self) -> int:
        return self.unshuffle * 2 ** (self.levels - 1)

    def forward(self, x: torch.Tensor, noise: float | None = None, composite: torch.Tensor | None = None) -> torch.Tensor:
        """complex (B, T, Y, X) -> complex (B, T, Y, X); ``noise``: the data's normalised
        k-space noise level (used only by a ``noise_input`` network, which requires it);
        ``composite (B, K, Y, X)`` (or ``(B, Y, X)`` for K = 1): the images of the
        ``composite_input`` channels (required by such a network)."""
        h = self.input_channels(x)
        b, frames, _, y, x_ = h.shape
        if self.noise_input:
            if noise is None:
                raise ValueError("this network takes the data's noise level (noise_input): pass noise=")
            h = torch.cat([h, h.new_full((b, frames, 1, y, x_), noise_feature(noise))], dim=2)
        extra = None
        if self.composite_input:
            if composite is None:
                raise ValueError("this network takes a composite image (composite_input): pass composite=")
            if composite.dim() == 3:
                composite = composite[:, None]
            if composite.shape[1] != self.composite_input:
                raise ValueError(f"composite of {composite.shape[1]} image(s); this network takes "
                                 f"{self.composite_input} (composite_input)")
            c = self.input_channels(composite)                      # (B, K, 2 r^2, Y/r, X/r)
            extra = self.composite_in(c.flatten(1, 2))              # (B, C0, Y/r, X/r)
        return self.unet(h, extra)

    def input_channels(self, x: torch.Tensor) -> torch.Tensor:
        """complex (B, T, Y, X) -> real (B, T, 2 r^2, Y/r, X/r): two real channels
        (real, imaginary), space to depth by ``r = unshuffle``."""
        h = torch.stack([x.real, x.imag], dim=2)
        return _per_frame(lambda v: _unshuffle(v, self.unshuffle), h) if self.unshuffle > 1 else h

    def unet(self, h: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """The U-Net on input channels ``h (B, T, 2 r^2, Y/r, X/r)`` -> complex (B, T, Y, X);
        ``extra`` is added in the first stage (:meth:`Stage.forward`)."""
        skips = []
        for i, stage in enumerate(self.enc):
            if i > 0:
                h = _per_frame(_half, h)
            h = stage(h, extra if i == 0 else None)
            skips.append(h)
        for i in reversed(range(self.levels - 1)):
            up = self.up[i]
            h = _per_frame(lambda v: F.conv_transpose2d(v, up.weight[:, :, 0], up.bias, stride=2), h)
            h = self.dec[i](h + skips[i])
        h = _conv3d_as_2d(self.final, h)
        if self.unshuffle > 1:
            h = _per_frame(lambda v: _shuffle(v, self.unshuffle), h)
        return torch.complex(h[:, :, 0], h[:, :, 1])
