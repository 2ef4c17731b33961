"""One reconstruction problem for the networks: a window of frames with its operator.

The data are normalised by a scalar ``scale`` (the 99th percentile of the starting
image's magnitude), so networks see intensities of order one whatever the scanner's
gain; outputs are multiplied back.

The data-consistency gradient is divided by ``lipschitz``, an estimate of the largest
eigenvalue of ``A^H A`` (:func:`~recon_core.operators.lipschitz_estimate`). With density
weights that eigenvalue is about the undersampling factor (pi N / (2 S): ~15 for 13 spokes
at N = 128), so an unscaled gradient step of size 0.5 diverges. The estimate is ``max |K| / 4`` over the window's
Toeplitz kernels ``K`` on the 2x grid (free: the kernels exist); measured against power
iteration on simulated 9-21-spoke frames it is within 4-10% below the true value, so
steps ``eta < 1.8`` stay stable.

``noise`` is the standard deviation of the k-space noise in the Problem's units. After
prewhitening (ours or Gadgetron's NoiseAdjustGadget) it is known exactly: the whitened noise
has ``E|n|^2 = 2 * relativeReceiverNoiseBandwidth`` per complex sample whatever the dwell
times, so ``noise = WHITENED_NOISE_STD / scale``; the intensity scale alone then tells a
network the scan's SNR. (Data that were never prewhitened have an unknown noise level;
the same formula is used.)

A network may add a quadratic smoothness prior to the data term (``prior = (mu_s, mu_t)``
in :meth:`Problem.gradient`, a model's ``arch: tikhonov``): the energy whose gradient it
steps along is then

    F(x) = ||A x - y_w||^2 / (2L) + mu_s/2 ||D_s x||^2 + mu_t/2 ||D_t x||^2

``D_s`` the spatial and ``D_t`` the temporal forward differences over the window's frames
(:mod:`recon_core.compressed_sensing`). It damps what radial data leave free, high spatial
and temporal frequencies, by at most ``eta (8 mu_s + 4 mu_t)`` per unit step, and leaves
the densely sampled low frequencies to the data.

With ``arch: tikhonov_noise: p`` the two weights scale with the data's noise level,
``mu (noise / TIKHONOV_NOISE_REF)^p`` (clamped to a factor in [1/4, 8];
:func:`noise_scaled_prior`): the MAP estimate under Gaussian noise weighs a prior by the
noise variance (p = 2), so a fixed weight smooths low-SNR scans too little and high-SNR scans
too much. For the shipped real-time model on the shifted suite's val scans, mu_s = 0.02
raised SSIM on the SNR 3-6 scan by 0.019 at -0.09 dB and cost 0.8 dB on an SNR 14-24 one,
whose best weight was the shipped 0.005.

A stream's window may carry ``previous``, the stream's last estimate of the frame just
before the window (for 2-frame windows with 1 look-ahead, the image it emitted; fixed, not a
variable). A network's ``arch: memory`` weight ``mu_m``
then adds the temporal difference across the window's start,

    + mu_m/2 ||x_0 - previous||^2

so a sliding window of 2 frames keeps a memory of every frame before it at no extra NUFFT:
what the current frames' spokes leave undetermined or noisy is pulled toward the stream's
last image, a recursive (Kalman-like) temporal average, the temporal regularisation of
real-time radial NLINV (Uecker et al. 2010), which damps toward the previous frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from ..coils import DEFAULT_RECEIVER_NOISE_BANDWIDTH
from ..compressed_sensing import spatial_grad, spatial_grad_adjoint, temporal_diff, temporal_diff_adjoint
from ..operators import RadialSense, lipschitz_estimate
from ..reconstructors import flatten_kspace, make_operator
from ..solvers import conjugate_gradient


#: standard deviation of prewhitened k-space noise per complex sample (see the module docstring)
WHITENED_NOISE_STD = (2.0 * DEFAULT_RECEIVER_NOISE_BANDWIDTH) ** 0.5


#: the noise level (Problem units) at which ``arch: tikhonov`` applies as given under
#: ``tikhonov_noise``: the shifted suite's val scans at SNR 14-24 have 1.4-2.3 there
TIKHONOV_NOISE_REF = 2.2


def noise_scaled_prior(prior: tuple[float, float], noise: float, power: float) -> tuple[float, float]:
    """``prior = (mu_s, mu_t)`` times ``(noise / TIKHONOV_NOISE_REF)^power``, the factor
    clamped to [1/4, 8]; ``prior`` itself for ``power = 0``."""
    if not power:
        return prior
    f = min(8.0, max(0.25, (float(noise) / TIKHONOV_NOISE_REF) ** power))
    return prior[0] * f, prior[1] * f


def prior_weights(tikhonov) -> tuple[float, float]:
    """A model's ``arch: tikhonov`` as the ``prior`` of :meth:`Problem.gradient`: ``(mu_s, mu_t)``,
    both >= 0 (a clear error otherwise)."""
    if len(tikhonov) != 2 or min(tikhonov) < 0:
        raise ValueError(f"tikhonov={list(tikhonov)}: expected [mu_spatial, mu_temporal], both >= 0")
    return float(tikhonov[0]), float(tikhonov[1])


@dataclass
class Problem:
    """``op`` for T frames; ``y_w (T, C, M)`` weighted data, ``rhs = A^H y_w (T, Y, X)``,
    ``x0 (T, Y, X)`` the starting image; all divided by ``scale``."""
    op: RadialSense
    y_w: torch.Tensor
    rhs: torch.Tensor
    x0: torch.Tensor
    scale: float
    lipschitz: float = 0.0
    noise: float = 0.0
    previous: torch.Tensor | None = None      # (Y, X): the stream's image of the frame before the window
    composite: torch.Tensor | None = None     # (K, Y, X): the stream's composites, one per rate (networks.composite)

    def __post_init__(self):
        if not self.lipschitz:
            self.lipschitz = lipschitz_estimate(self.op.kernel)
        if not self.noise:
            self.noise = WHITENED_NOISE_STD / float(self.scale)

    @cached_property
    def support(self) -> torch.Tensor:
        """``(Y, X)`` bool: the pixels where some coil map is nonzero (all of them for maps
        that are nowhere zero, such as the stream's fallback maps)."""
        maps = self.op.maps
        return (maps.abs().reshape(-1, *maps.shape[-2:]) > 0).any(0)

    def gradient(self, x: torch.Tensor, prior: tuple[float, float] = (0.0, 0.0), memory: float = 0.0) -> torch.Tensor:
        """``(T, Y, X)``: the normalised data-consistency gradient ``A^H (A x - y_w) / L``
        (Toeplitz, pure torch), plus ``mu_s D_s^H D_s x + mu_t D_t^H D_t x`` for ``prior =
        (mu_s, mu_t)`` (the smoothness prior of the module docstring), plus ``memory (x_0 -
        previous)`` on the first frame when the problem has a ``previous`` image."""
        g = (self.op.normal(x) - self.rhs) / self.lipschitz
        mu_s, mu_t = prior
        if mu_s:
            g = g + mu_s * spatial_grad_adjoint(spatial_grad(x))
        if mu_t and x.shape[0] > 1:
            g = g + mu_t * temporal_diff_adjoint(temporal_diff(x))
        if memory and self.previous is not None:
            g = torch.cat([g[:1] + memory * (x[:1] - self.previous), g[1:]])
        return g


def intensity_scale(x0: torch.Tensor) -> float:
    """The normalisation of a Problem: the 99th percentile of ``|x0|`` (every 7th value, for
    speed) of a starting image, at least 1e-12. The stream and the streaming loss fix it by
    their first frame, a window's Problem by its whole window."""
    return float(torch.quantile(x0.detach().abs().flatten()[::7], 0.99).clamp_min(1e-12))


def make_problem(kspace: torch.Tensor, coords: torch.Tensor, maps: torch.Tensor, start: str = "cgsense",
                 cg_iterations: int = 3, scale: float | None = None) -> Problem:
    """kspace ``(T, C, S, R)``, coords ``(T, S, R, 2)``, maps ``(C, Y, X)`` -> normalised Problem.

    ``start``: ``gridding`` (x0 = A^H y_w) or ``cgsense`` (a few CG iterations from zero).
    """
    op = make_operator(coords, maps, toeplitz=True)
    y_w = op.weigh(flatten_kspace(kspace))
    rhs = op.adjoint(y_w)
    x0 = rhs if start == "gridding" else conjugate_gradient(op.normal, rhs, iterations=cg_iterations)
    if scale is None:
        scale = intensity_scale(x0)
    return Problem(op, y_w / scale, rhs / scale, x0 / scale, scale)


class FrameCache:
    """Per-frame parts of a scan's problems, computed once: Toeplitz kernels, ``A^H y_w``,
    the CG-SENSE start and the density weights of every frame (each frame's CG-SENSE is
    independent of the others, so a window's start is the slice of these). Training
    draws many windows from the same scans; with this cache a window costs no NUFFT.

    kspace ``(T, C, S, R)``, coords ``(T, S, R, 2)``, maps ``(C, Y, X)``.
    """

    def __init__(self, kspace: torch.Tensor, coords: torch.Tensor, maps: torch.Tensor, cg_iterations: int = 3):
        op = make_operator(coords, maps, toeplitz=True)
        self.maps = maps
        self.coords = op.coords
        self.weights = op.weights
        self.kernel = op.kernel
        self.y_w = op.weigh(flatten_kspace(kspace))
        self.rhs = op.adjoint(self.y_w)
        self.x0 = conjugate_gradient(op.normal, self.rhs, iterations=cg_iterations)
        #: the scan's first frames on other maps (the chain's fallback maps), for streaming
        #: training (:mod:`recon_core.training.stream_schedule`); None: every frame on ``maps``
        self.early: FrameCache | None = None

    def problem(self, frames: slice) -> Problem:
        """The normalised Problem of the window ``frames`` (same as :func:`make_problem`)."""
        op = RadialSense(self.coords[frames], self.maps, self.weights[frames], kernel=self.kernel[frames])
        x0 = self.x0[frames]
        scale = intensity_scale(x0)
        return Problem(op, self.y_w[frames] / scale, self.rhs[frames] / scale, x0 / scale, scale)
