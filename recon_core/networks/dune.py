"""DUNE: unrolled reconstruction in a learned representation space with exact data
consistency by vector-Jacobian products (document 000, METHODS.md "DUNE").

An encoder ``E`` maps the complex frames to a real representation ``z``, a decoder ``D``
maps it back. With ``f(x) = 1/(2L) ||A x - y_w||^2`` (``L`` the Problem's Lipschitz
estimate, so that step sizes near 1 are stable, as in :mod:`.unrolled`):

    z_0 = E(x_0)
    g_k = J_D(z)^H grad f(D(z))  at z = z_{k-1}                  (the exact gradient of f o D)
        = autograd.grad(D(z), z, grad_outputs = A^H (A D(z) - y_w) / L)
    z_k = z_{k-1} - eta_k g_k + Reg_k(z_{k-1}),   k = 1..K
    x   = D(z_K)

``A^H (A x - y_w)`` is ``op.normal(x) - rhs`` (Toeplitz, pure torch), so in training the
VJP is differentiated again (``create_graph=True``, a second-order pass through ``D``
only; the NUFFT is not involved). ``dc="heuristic"`` is the alternative of earlier
representation-space networks, for comparison: the data-consistency step is taken in
image space and re-encoded,

    z_k = E(D(z_{k-1}) - eta_k grad f(D(z_{k-1}))) + Reg_k(z_{k-1}).

Our choices (documented, to be revised by measurement):

- The default representation keeps a lossless copy of the image: ``z = [s2d(x), F(x)]``,
  ``s2d`` the space-to-depth rearrangement of the (real, imag) channels by ``unshuffle``
  and ``F`` learned features (``latent`` channels); the default decoder is
  ``D(z) = d2s(z_img + H(z))`` with ``H``'s last convolution zero at initialisation. So
  ``D(E(x)) = x`` and, with ``Reg_k`` also starting at zero, the untrained DUNE is plain
  gradient descent on ``f`` (like the untrained Alt-UN), and learning departs from there.
- ``eta_k = softplus(.) > 0`` learned per iteration; ``Reg_k`` separate per iteration
  (``shared=True``: one for all).
- Any backbone plugs in: pass ``encoder`` (complex ``(B, T, Y, X)`` -> real tensor ``z``)
  and ``decoder`` (``z`` -> complex ``(B, T, Y, X)``), and ``latent_channels`` (the
  channel count of ``z`` on dim 1, for the default ``Reg_k``; ``z`` must be
  ``(B, C, T, Y', X')``) or a ``regularizers`` list. :func:`encoder_from_stem` wraps a
  ConvNeXt-style stem (torchvision ``convnext_*().features[0]``, timm ``.stem``),
  loading its weights from a local file only. A checkpoint (:mod:`.checkpoint`)
  rebuilds only the default architecture from its YAML; a custom backbone has to be
  constructed the same way before ``load_state_dict``.

Shapes: ``forward(problem)`` returns ``(x (T, Y, X), info)`` in the Problem's normalised
units, like the other networks; ``info["gradient_norms"]`` holds ``||g_k||`` per iteration.
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cunet import Stage, _depth_to_space, _space_to_depth
from .problem import Problem, prior_weights


def _to_channels(x: torch.Tensor) -> torch.Tensor:
    """complex (B, T, Y, X) -> real (B, 2, T, Y, X)."""
    return torch.stack([x.real, x.imag], dim=1)


def _channels_first(stages: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Apply CU-Net :class:`Stage` s (frames-major ``(B, T, C, Y, X)``) to channels-first ``h (B, C, T, Y, X)``."""
    return stages(h.transpose(1, 2)).transpose(1, 2)


def _softplus_inverse(v: float) -> float:
    return float(torch.log(torch.expm1(torch.tensor(float(v)))))


class ConvFeatures(nn.Module):
    """Default learned features: (B, 2, T, Y, X) -> (B, latent, T, Y/r, X/r)."""

    def __init__(self, unshuffle: int = 2, channels: int = 16, latent: int = 16):
        super().__init__()
        self.unshuffle = unshuffle
        self.stage = Stage(2 * unshuffle ** 2, channels)
        self.out = nn.Conv3d(channels, latent, 1)

    def forward(self, h):
        return self.out(_channels_first(self.stage, _space_to_depth(h, self.unshuffle)))


class StemFeatures(nn.Module):
    """A 2D stem (e.g. ConvNeXt's ``Conv2d(3, C, 4, stride 4) + LayerNorm``) applied frame by
    frame to the 3-channel image (real, imag, magnitude): (B, 2, T, Y, X) -> (B, C, T, Y/s, X/s)."""

    def __init__(self, stem: nn.Module):
        super().__init__()
        self.stem = stem

    def forward(self, h):
        b, _, t, y, x = h.shape
        mag = torch.sqrt(h[:, 0] ** 2 + h[:, 1] ** 2 + 1e-12)
        rgb = torch.stack([h[:, 0], h[:, 1], mag], dim=2).reshape(b * t, 3, y, x)   # (B T, 3, Y, X)
        out = self.stem(rgb)                                                       # (B T, C, Y/s, X/s)
        return out.reshape(b, t, *out.shape[1:]).transpose(1, 2)


class Encoder(nn.Module):
    """``E(x) = [s2d(x), features(x)]`` on dim 1: complex (B, T, Y, X) -> real (B, 2r^2 + C, T, Y/r, X/r).

    The first ``2 r^2`` channels are the image itself (lossless), the rest learned."""

    def __init__(self, features: nn.Module, unshuffle: int):
        super().__init__()
        self.features = features
        self.unshuffle = unshuffle

    def forward(self, x):
        h = _to_channels(x)
        return torch.cat([_space_to_depth(h, self.unshuffle), self.features(h)], dim=1)


class Decoder(nn.Module):
    """``D(z) = d2s(z[:, :2r^2] + H(z))``: real (B, 2r^2 + C, T, Y', X') -> complex (B, T, Y, X).

    ``H`` = Stage + 3D convolution, the convolution zero at initialisation (``D(E(x)) = x``)."""

    def __init__(self, latent_channels: int, unshuffle: int = 2, channels: int = 16):
        super().__init__()
        self.unshuffle = unshuffle
        self.image_channels = 2 * unshuffle ** 2
        self.stage = Stage(latent_channels, channels)
        self.out = nn.Conv3d(channels, self.image_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, z):
        h = z[:, :self.image_channels] + self.out(_channels_first(self.stage, z))
        h = _depth_to_space(h, self.unshuffle)
        return torch.complex(h[:, 0], h[:, 1])


class LatentRegularizer(nn.Module):
    """``Reg(z)``: ``levels`` Stages then a 3D convolution back to the latent channels, zero at
    initialisation (so the untrained update is a pure data-consistency step)."""

    def __init__(self, latent_channels: int, channels: int = 16, levels: int = 2):
        super().__init__()
        stages, c = [], latent_channels
        for _ in range(max(1, levels)):
            stages.append(Stage(c, channels))
            c = channels
        self.stages = nn.Sequential(*stages)
        self.out = nn.Conv3d(channels, latent_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, z):
        return self.out(_channels_first(self.stages, z))


def _state_dict_from_file(path: str) -> dict:
    if "://" in path or not os.path.isfile(path):
        raise FileNotFoundError(f"backbone weights must be a local file; {path!r} is not one (no downloads)")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):          # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def load_stem_weights(stem: nn.Module, path: str, prefix: str | None = None) -> nn.Module:
    """Load ``stem``'s weights from a local file (safetensors or a tensors-only torch file).

    The file may hold the stem's own state dict or a whole model's: ``prefix`` selects the
    stem's keys; by default the first of ``""``, ``"features.0."`` (torchvision ConvNeXt),
    ``"stem."`` (timm ConvNeXt) that covers all of the stem's keys. Strict: every stem
    tensor must be found with its shape."""
    state = _state_dict_from_file(path)
    wanted = stem.state_dict().keys()
    prefixes = [prefix] if prefix is not None else ["", "features.0.", "stem."]
    for p in prefixes:
        if all(p + k in state for k in wanted):
            stem.load_state_dict({k: state[p + k] for k in wanted}, strict=True)
            return stem
    raise KeyError(f"{path} holds no complete stem state dict under prefixes {prefixes}")


def encoder_from_stem(stem: nn.Module, weights: str | None = None, prefix: str | None = None,
                      freeze: bool = False) -> tuple[Encoder, int, int]:
    """An :class:`Encoder` whose learned features are a pretrained-style 2D stem.

    ``stem`` maps ``(N, 3, H, W)`` to ``(N, C, H/s, W/s)`` (ConvNeXt: ``s = 4``), e.g.
    ``torchvision.models.convnext_tiny().features[0]`` or ``timm`` ConvNeXt ``.stem``; its
    input is (real, imag, magnitude) of each frame. ``weights``: a local file only (see
    :func:`load_stem_weights`); nothing is downloaded. ``freeze`` stops its gradients.

    Returns ``(encoder, latent_channels, unshuffle)``: pass them to :class:`DUNE` together
    with ``Decoder(latent_channels, unshuffle)`` (or your own)."""
    if weights:
        load_stem_weights(stem, weights, prefix)
    if freeze:
        for p in stem.parameters():
            p.requires_grad_(False)
    with torch.no_grad():
        probe = stem(torch.zeros(1, 3, 64, 64))
    stride = 64 // probe.shape[-1]
    if probe.shape[-1] * stride != 64 or probe.shape[-2] * stride != 64:
        raise ValueError(f"stem output {tuple(probe.shape)} is not an integer downsampling of 64x64")
    latent = 2 * stride ** 2 + probe.shape[1]
    return Encoder(StemFeatures(stem), stride), latent, stride


class DUNE(nn.Module):
    """Deep unrolled network in representation space (see the module docstring)."""
    kind = "dune"

    def __init__(self, channels: int = 16, levels: int = 2, unshuffle: int = 2, eta: float = 1.0,
                 iterations: int = 4, latent: int = 16, dc: str = "vjp", shared: bool = False,
                 encoder: nn.Module | None = None, decoder: nn.Module | None = None,
                 latent_channels: int | None = None, regularizers: list[nn.Module] | None = None,
                 support: bool = False, tikhonov=(0.0, 0.0)):
        super().__init__()
        self.support = support
        self.tikhonov = prior_weights(tikhonov)     # smoothness prior added to f (Problem.gradient)
        if dc not in ("vjp", "heuristic"):
            raise ValueError(f"dc={dc!r}: expected 'vjp' or 'heuristic'")
        self.dc, self.iterations, self.shared = dc, iterations, shared
        if (encoder is None) != (decoder is None):
            raise ValueError("give both encoder and decoder, or neither")
        if encoder is None:
            encoder = Encoder(ConvFeatures(unshuffle, channels, latent), unshuffle)
            latent_channels = 2 * unshuffle ** 2 + latent
            decoder = Decoder(latent_channels, unshuffle, channels)
        self.encoder, self.decoder = encoder, decoder
        if regularizers is None:
            if latent_channels is None:
                raise ValueError("a custom encoder/decoder needs latent_channels (or regularizers)")
            regularizers = [LatentRegularizer(latent_channels, channels, levels)
                            for _ in range(1 if shared else iterations)]
        self.reg = nn.ModuleList(regularizers)
        self.eta_raw = nn.Parameter(torch.full((iterations,), _softplus_inverse(eta)))

    @property
    def eta(self) -> torch.Tensor:
        return F.softplus(self.eta_raw)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x[None])

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)[0]

    def dc_gradient(self, z: torch.Tensor, problem: Problem, create_graph: bool | None = None):
        """``g = J_D(z)^H A^H (A D(z) - y_w) / L`` by one vector-Jacobian product; returns ``(g, D(z))``.

        Differentiable (``create_graph``) when training with gradients enabled; works under
        ``torch.no_grad()`` too (gradients are switched on locally for the VJP)."""
        if create_graph is None:
            create_graph = self.training and torch.is_grad_enabled()
        with torch.enable_grad():
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            x = self.decode(z)
            residual = problem.gradient(x, self.tikhonov)   # A^H (A x - y_w) / L (+ the prior's gradient)
            (g,) = torch.autograd.grad(x, z, grad_outputs=residual, create_graph=create_graph)
        if not create_graph:
            g, x = g.detach(), x.detach()
        return g, x

    def forward(self, problem: Problem, x_init=None, iterations: int | None = None, deadline=None, **_):
        """``deadline``: a callable asked before each iteration but the first (as by
        :func:`~recon_core.solvers.fixed_point`); when it says the time is up, the current
        representation is decoded (fewer iterations, each one already a complete
        data-consistency + regularizer update). ``support`` (constructor): the decoded image
        is projected onto the coil maps' support, where the data say nothing."""
        x = problem.x0 if x_init is None else x_init
        z = self.encode(x)
        norms = []
        n = iterations or self.iterations
        for k in range(n):
            if k > 0 and deadline is not None and deadline():
                break
            kk = min(k, self.iterations - 1)      # more iterations than trained: reuse the last eta/Reg
            eta = self.eta[kk]
            reg = self.reg[0 if self.shared else kk](z)
            if self.dc == "vjp":
                g, _ = self.dc_gradient(z, problem)
                norms.append(float(g.detach().norm()))
                z = z - eta * g + reg
            else:
                x = self.decode(z)
                grad = problem.gradient(x, self.tikhonov)
                norms.append(float(grad.detach().norm()))
                z = self.encode(x - eta * grad) + reg
        x = self.decode(z)
        if self.support:
            x = x * problem.support
        return x, {"iterations": len(norms), "gradient_norms": norms, "converged": len(norms) == n}
