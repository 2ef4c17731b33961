"""A learned recursive temporal filter for streams: blend a window's first frame toward the
image the stream emitted before it, by how much a small network decides pixel by pixel.

A sliding window of 2 frames sees 26 spokes; whatever the network removes of the noise in
them, it cannot average over the frames before the window. Where nothing moves, the
previous image is an estimate of the same pixel with its own, independent noise, and
averaging the two is the classical recursive (Kalman-like) filter of real-time imaging; where
the heart moves, it blurs. The gate decides between the two per pixel:

    x_0 <- x_0 + g (previous - x_0),     g = sigmoid(G(features)) in (0, 1)

``G`` is a 3-layer CNN at half resolution on ``log(|previous - x_0| + eps)`` (the
difference, in orders of magnitude: motion or noise) and ``|x_0|`` (space to depth by 2),
plus the data's noise level (:func:`~recon_core.networks.cunet.noise_feature`) as a constant
channel: the comparison "difference against the noise level" is then a linear threshold the
first layer can draw. Its last layer starts at weight 0 and bias :data:`GATE_BIAS` (g = 0.047
everywhere). Applied after every update of a window that has a ``previous`` image (a stream's
windows but its first; offline windows have none), so emitted images keep a memory of every
frame before them (the previous image was itself blended with its predecessor). The
blended frame is the one a stream emits when ``lookahead = window - 1`` (the real-time
schedule, 2 frames and 1 look-ahead); with less look-ahead it was emitted before and the
gate reaches the emitted images only through the window's coupling.

Shapes: ``forward(x (T, Y, X), previous (Y, X), noise)`` -> ``(T, Y, X)``, complex; Y and X even.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cunet import _shuffle, _unshuffle, noise_feature

#: the gate's starting logit: sigmoid(-3) = 0.047, a slight pull toward the previous image
GATE_BIAS = -3.0
#: floor inside the log of the difference (normalised units: images are ~1 at their 99th percentile)
LOG_EPS = 1e-3


class TemporalGate(nn.Module):
    def __init__(self, channels: int = 16):
        super().__init__()
        cin = 2 * 4 + 1                  # log|d| and |x_0|, space to depth by 2, and the noise level
        self.conv1 = nn.Conv2d(cin, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv3 = nn.Conv2d(channels, 4, 3, padding=1)
        nn.init.zeros_(self.conv3.weight)
        nn.init.constant_(self.conv3.bias, GATE_BIAS)

    def weight(self, x0: torch.Tensor, previous: torch.Tensor, noise: float) -> torch.Tensor:
        """``g (Y, X)`` in (0, 1) for the first frame ``x0 (Y, X)`` and ``previous (Y, X)``."""
        d = (previous - x0).abs()
        h = torch.stack([torch.log(d + LOG_EPS), x0.abs()])[None]          # (1, 2, Y, X)
        h = _unshuffle(h, 2)
        h = torch.cat([h, h.new_full((1, 1, *h.shape[-2:]), noise_feature(noise))], dim=1)
        h = F.leaky_relu(self.conv1(h), 0.1)
        h = F.leaky_relu(self.conv2(h), 0.1)
        return torch.sigmoid(_shuffle(self.conv3(h), 2))[0, 0]

    def forward(self, x: torch.Tensor, previous: torch.Tensor, noise: float) -> torch.Tensor:
        g = self.weight(x[0], previous, noise)
        first = x[0] + g * (previous - x[0])
        return torch.cat([first[None], x[1:]])
