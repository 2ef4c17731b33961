"""Training loop for the networks (IMUNNE with Jacobian-free backpropagation, Alt-UN end
to end, CU-Net), with validation, checkpoints, a training-curve picture and timing.

One step draws ``batch`` random windows of ``window`` frames (a random scan each), builds
their normalised :class:`~recon_core.networks.problem.Problem` s (CG-SENSE start), runs
the model and takes an Adam step on the mean complex L1 loss against the phase-consistent
target. An *epoch* is as many windows as there are training scans. Under torchrun the
step's windows are shared out over the processes (:mod:`.distributed`).

DUNE and FLAT (``model="dune"``/``"flat"``) and self-supervised SSDU training
(``supervision="ssdu"``) go through the same loop; only the loss differs
(:func:`training_loss`). Validation always scores against the reference.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..evaluation import add_kspace_noise
from ..metrics import psnr, ssim
from ..networks.composite import composite_rates
from ..networks.problem import FrameCache, make_problem
from ..networks.unrolled import build_model
from .checkpoint import save_checkpoint
from .data import load_scan
from .stream_schedule import clip_scale, streaming_loss, streaming_outputs

log = logging.getLogger("rtcine.train")


@dataclass
class TrainConfig:
    model: str = "imunne"
    channels: int = 16
    levels: int = 2
    unshuffle: int = 2
    eta: float = 1.0
    noise_input: bool = False    # imunne/altun/cunet: the regularizer also sees the data's noise level
    max_iter: int = 8            # IMUNNE fixed point during training
    tol: float = 1e-2
    anderson: int = 0            # IMUNNE: Anderson memory of the fixed-point solver (0: plain iteration)
    start_weight: float = 0.0    # IMUNNE: fixed point of (1 - w) R(x) + w x0 (0: of R itself)
    support: bool = False        # IMUNNE, DUNE, FLAT: images projected onto the coil maps' support
    tikhonov: tuple = (0.0, 0.0)  # IMUNNE, DUNE, FLAT: (mu_s, mu_t) of the smoothness prior in its gradient step
    memory: float = 0.0          # IMUNNE: weight of the difference to the stream's previous image (Problem.previous)
    tikhonov_noise: float = 0.0  # IMUNNE: tikhonov scaled by (noise / TIKHONOV_NOISE_REF)^p (networks.problem)
    recurrence: bool = False     # IMUNNE in a stream: learned gate toward the previous image (networks.recurrence)
    composite: float | list = 0.0  # IMUNNE in a stream: rate(s) of the composite image inputs (networks.composite); 0: none
    blocks: int = 4              # Alt-UN
    window: int = 5
    batch: int = 1               # windows per step (per process under torchrun)
    steps: int = 1000
    lr: float = 1e-3
    cg_start_iterations: int = 3
    validate_every: int = 100
    checkpoint_every: int = 50
    seed: int = 0
    device: str = "cpu"
    init: str = ""               # checkpoint whose matching tensors (regularizer, step size) initialise this model
    new_lr_scale: float = 1.0    # with init: the learning rate of the tensors it does not (fully) hold is lr x this
    val_scans: int = 3
    extra: dict = field(default_factory=dict)
    # --- DUNE / FLAT / SSDU (issue 5); the defaults leave imunne/altun/cunet training unchanged
    supervision: str = "supervised"   # "supervised" (reference) or "ssdu" (k-space split, no reference)
    ssdu_fraction: float = 0.6        # share of each frame's spokes in Theta (the network's DC)
    dc: str = "vjp"                   # DUNE data consistency: "vjp" (exact) or "heuristic"
    schedule: str = "uniform"         # FLAT time schedule: "uniform" or "cosine"
    flat_velocity_weight: float = 1.0
    # IMUNNE: weight of the fixed-point residual |R(x*) - x*| in the loss (0: plain JFB)
    fixed_point_weight: float = 0.0
    # IMUNNE: weight of the contraction penalty relu(radius - contraction_target)^2, radius the
    # spectral radius of dR/dx at the fixed point (power iteration; contraction_penalty): keeps
    # plain iteration converging there, so more iterations do not drift (0: off)
    contraction_weight: float = 0.0
    contraction_target: float = 0.9
    # k-space noise augmentation: each window gets complex Gaussian noise of a level drawn
    # uniformly in [0, noise_augment] x its k-space RMS (0: off; the CG start is then recomputed)
    noise_augment: float = 0.0
    # IMUNNE: weight of a loss on the streaming schedule (0: off). Each step also replays the
    # stream (window, look-ahead, updates per window, warm start) differentiably on a clip of
    # stream_clip consecutive frames of the same scan (training.stream_schedule)
    stream_weight: float = 0.0
    stream_window: int = 2
    stream_lookahead: int = 1
    stream_updates: int = 1
    stream_clip: int = 8
    stream_burn_in: int = 0          # first frames of a clip left out of the streaming loss
    stream_history: bool = False     # stream a clip's scan from its first frame, the frames before it without gradients
    stream_ssim: float = 0.0         # weight of (1 - SSIM) of the streamed magnitudes beside their complex L1
    # a scan's first stream_fallback frames are streamed on the chain's fallback coil maps
    # (lowres, zero outside the object, from the first 2 frames' spokes), as the chain does
    # before ESPIRiT's maps arrive (0: every frame on the scan's maps)
    stream_fallback: int = 0
    # weight of the usual window loss (JFB for IMUNNE); 0 with stream_weight > 0 trains for the
    # streaming schedule alone (a real-time model, no longer trained for its fixed point)
    window_weight: float = 1.0
    # the schedule of the model this one fine-tunes (its YAML's ``streaming:``), kept in this
    # model's YAML: a fine-tuned real-time model still runs the schedule it was made for
    streaming: dict = field(default_factory=dict)
    data: str = ""               # provenance, into the YAML: what the scans were
    # with supervision="ssdu": scans that carry a target (simulated anchors among recorded
    # scans) keep the supervised loss; only those without one are trained by SSDU
    anchor: bool = False

    def streaming_schedule(self) -> dict | None:
        """The schedule a real-time model is trained for (streaming loss alone) or inherits
        (``streaming``), else None. It goes into the model's YAML (``streaming:``), where the
        chain checks it."""
        if self.model == "imunne" and self.stream_weight > 0 and self.window_weight <= 0:
            return {"window": self.stream_window, "lookahead": self.stream_lookahead, "updates": self.stream_updates}
        return dict(self.streaming) if self.model == "imunne" and self.streaming else None

    def uses_ssdu(self, has_target: bool) -> bool:
        """Whether a scan is trained by SSDU: with ``supervision="ssdu"``, every scan, except
        those carrying a target when ``anchor`` is set (simulated anchors keep their supervised loss)."""
        return self.supervision == "ssdu" and not (self.anchor and has_target)

    def loss_description(self) -> str:
        """The loss in words, for the YAML."""
        if self.supervision == "ssdu":
            held_out = f"SSDU k-space loss on held-out spokes ({1 - self.ssdu_fraction:.0%} per frame)"
            terms = [f"{held_out}, no reference"] if self.window_weight > 0 else []
            if self.stream_weight > 0:
                terms.append(f"{held_out} of the frames streamed on the rest, no reference")
            if self.anchor:
                terms.append("simulated anchor scans: supervised " +
                             ("streaming schedule" if self.stream_weight > 0 else "complex L1"))
            return " + ".join(terms)
        if self.model == "flat":
            terms = [f"flow-aligned velocity (weight {self.flat_velocity_weight:g}) + final complex L1"]
        else:
            terms = ["complex L1 vs the reference" + (" (JFB)" if self.model == "imunne" else "")]
            if self.contraction_weight > 0 and self.model == "imunne":
                terms.append(f"contraction penalty (spectral radius above {self.contraction_target:g}) "
                             f"x {self.contraction_weight:g}")
        if self.window_weight <= 0:
            terms = []
        if self.stream_weight > 0:
            ssim = f" + (1 - SSIM) x {self.stream_ssim:g}" if self.stream_ssim else ""
            early = f"; first {self.stream_fallback} frames on fallback maps" if self.stream_fallback else ""
            terms.append(f"streaming schedule (window {self.stream_window}, look-ahead {self.stream_lookahead}, "
                         f"{self.stream_updates} updates; complex L1{ssim}{early}) x {self.stream_weight:g}")
        return " + ".join(terms)

    def arch(self) -> dict:
        a = {"channels": self.channels, "levels": self.levels, "unshuffle": self.unshuffle, "eta": self.eta}
        if self.noise_input and self.model in ("imunne", "altun", "cunet"):
            a["noise_input"] = True
        if self.model == "imunne":
            schedule = self.streaming_schedule()      # a real-time model runs its trained updates by default
            a.update(max_iter=schedule["updates"] if schedule else self.max_iter, tol=self.tol,
                     anderson=self.anderson)
            if self.start_weight:
                a["start_weight"] = self.start_weight
        if self.support and self.model in ("imunne", "dune", "flat"):
            a["support"] = True
        if any(self.tikhonov) and self.model in ("imunne", "dune", "flat"):
            a["tikhonov"] = [float(v) for v in self.tikhonov]
        if self.memory and self.model == "imunne":
            a["memory"] = float(self.memory)
        if self.tikhonov_noise and self.model == "imunne":
            a["tikhonov_noise"] = float(self.tikhonov_noise)
        if self.recurrence and self.model == "imunne":
            a["recurrence"] = True
        rates = composite_rates(self.composite)
        if rates and self.model == "imunne":
            a["composite"] = rates[0] if len(rates) == 1 else list(rates)
        if self.model == "altun":
            a.update(blocks=self.blocks)
        if self.model == "dune":
            a.update(iterations=self.blocks, dc=self.dc)
        if self.model == "flat":
            a.update(steps=self.blocks, schedule=self.schedule)
        return a


def _fit_channels(source: torch.Tensor, own: torch.Tensor, input_dim: int = 1):
    """``source`` as a tensor of ``own``'s shape, or None (it fits nowhere). Equal shapes as
    they are. A smaller tensor of the same kernel is embedded so that the network computes
    the same function at start: its entries at their old indices, zero weight from every new
    input channel (dimension ``input_dim``: 1 for a convolution, 0 for a transposed one), and
    ``own``'s fresh initialisation for the new output channels (not zero: a new channel with
    zero weights in and out would get no gradient). This covers a network given more input
    channels (the noise channel, one more composite) and one made wider (``channels``)."""
    if source.shape == own.shape:
        return source
    if source.dim() != own.dim() or any(a > b for a, b in zip(source.shape, own.shape)) \
            or source.shape[2:] != own.shape[2:]:
        return None
    out = own.detach().clone()
    if source.dim() >= 2:
        out.narrow(input_dim, source.shape[input_dim], own.shape[input_dim] - source.shape[input_dim]).zero_()
    out[_old_elements(source.shape)] = source
    return out


def _old_elements(shape) -> tuple:
    """Where :func:`_fit_channels` puts a tensor of ``shape`` in a larger one: its leading block."""
    return tuple(slice(0, n) for n in shape)


#: where a tensor of one kind of network is found in a checkpoint of another: a CU-Net-style
#: regularizer (``block.net.``: CU-Net, IMUNNE, Alt-UN) initialises FLAT's velocity network
#: (its time channel zero: the same function at start), and its first stage initialises DUNE's
#: encoder features (a pretrained encoder)
INIT_ALIASES = (("velocity.net.", "block.net."), ("encoder.features.stage.", "block.net.enc.0."))


def init_tensors(source: dict, own: dict, transposed=frozenset()) -> dict:
    """The tensors of checkpoint ``source`` that initialise a model with state ``own``: by
    name, else through :data:`INIT_ALIASES`, each fitted by :func:`_fit_channels`
    (tensors that fit nowhere are left out; ``transposed``: names of transposed-convolution
    weights, whose input channels are dimension 0)."""
    out = {}
    for name, tensor in own.items():
        candidates = [name] + [name.replace(a, b, 1) for a, b in INIT_ALIASES if name.startswith(a)]
        for c in candidates:
            if c in source:
                fitted = _fit_channels(source[c], tensor, 0 if name in transposed else 1)
                if fitted is not None:
                    out[name] = fitted
                    break
    return out


def initialise(model: torch.nn.Module, source: dict, name: str = "checkpoint") -> dict:
    """Load the tensors of ``source`` that fit ``model`` (:func:`init_tensors`). Return
    ``{name: None}`` for the tensors it does not hold (they train at ``lr x new_lr_scale``,
    :func:`make_optimizer`) and ``{name: mask}`` for those it holds in part, more input or
    output channels (``mask`` is 1 on the new elements, which train at ``lr x new_lr_scale``,
    :class:`NewElements`; the old ones at ``lr``)."""
    transposed = {f"{m}.weight" for m, mod in model.named_modules()
                  if isinstance(mod, (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d))}
    init = init_tensors(source, model.state_dict(), transposed)
    missing = model.load_state_dict(init, strict=False).missing_keys
    partial = sorted(n for n, t in init.items() if n in source and source[n].shape != t.shape)
    log.info("regularizer initialised from %s (%d tensors; not from it: %s; embedded in larger ones: %s)", name,
             len(init), missing, partial)
    masks = {}
    for n in partial:
        mask = torch.ones_like(init[n])
        mask[_old_elements(source[n].shape)] = 0
        masks[n] = mask
    return {**{n: None for n in missing}, **masks}


def make_optimizer(model: torch.nn.Module, lr: float, new=(), new_lr_scale: float = 1.0) -> torch.optim.Adam:
    """Adam over ``model``'s parameters at ``lr``; those named in ``new`` (tensors an init
    checkpoint did not hold, e.g. a gate added to a trained network) at ``lr x new_lr_scale``."""
    params = dict(model.named_parameters())
    groups = [{"params": [p for n, p in params.items() if n not in new]},
              {"params": [p for n, p in params.items() if n in new], "lr": lr * new_lr_scale}]
    return torch.optim.Adam([g for g in groups if g["params"]], lr=lr)


class NewElements:
    """The optimizer step with the new elements of tensors an init checkpoint held in part
    (``masks``, :func:`initialise`) moved ``scale`` times as far as the step moved them: with
    Adam, their learning rate times ``scale``. A widened network's new channels start with zero
    outgoing weights; at a fine-tune's learning rate they stay near zero for hundreds of steps."""

    def __init__(self, model: torch.nn.Module, masks: dict, scale: float):
        self.params = [(p, masks[n]) for n, p in model.named_parameters() if masks.get(n) is not None]
        self.scale = float(scale)

    def step(self, opt: torch.optim.Optimizer) -> None:
        if self.scale == 1.0 or not self.params:
            opt.step()
            return
        before = [p.detach().clone() for p, _ in self.params]
        opt.step()
        with torch.no_grad():
            for (p, mask), b in zip(self.params, before):
                p.add_((p - b) * mask * (self.scale - 1.0))


def _tensors(scan, device, frames=None):
    """``(kspace, coords, maps, target)`` of a scan's ``frames`` on ``device``; ``target`` is
    None for a recorded scan (no ground truth)."""
    sl = slice(None) if frames is None else frames
    target = torch.from_numpy(scan["target"][sl]).to(device) if "target" in scan else None
    return (torch.from_numpy(scan["kspace"][sl]).to(device), torch.from_numpy(scan["coords"][sl]).to(device),
            torch.from_numpy(scan["maps"]).to(device), target)


def fallback_cache(scan, frames: int, device, cg_iterations: int = 3, support: float | None = None) -> FrameCache:
    """The :class:`FrameCache` of a scan's first ``frames`` frames on the chain's fallback coil
    maps: :func:`recon_core.coils.lowres_maps` with ``support`` (default the chain's
    ``lowres_support``) from the first 2 frames' spokes (the chain refreshes them as its pool
    grows; one set stands for them here)."""
    from ..coils import estimate_maps, pool_spokes
    from ..config import ReconConfig

    support = ReconConfig.lowres_support if support is None else support

    pool = min(2, scan["kspace"].shape[0])
    data, coords = pool_spokes(zip(scan["kspace"][:pool], scan["coords"][:pool]))
    maps = estimate_maps(data, coords, scan["maps"].shape[-2:], "lowres", support=support)
    k, c, _, _ = _tensors(scan, device, slice(0, frames))
    return FrameCache(k, c, torch.from_numpy(maps).to(device), cg_iterations)


def evaluate_model(model, scans, cg_start_iterations=3, device="cpu", window=None):
    """Mean PSNR/SSIM (magnitude, LS-scaled, vs the reference) over ``scans``, each
    reconstructed as one window of all its frames (``window`` frames if given)."""
    model.eval()
    rows = []
    with torch.no_grad():
        for scan in scans:
            frames = slice(0, window) if window else None
            k, c, m, _ = _tensors(scan, device, frames)
            problem = make_problem(k, c, m, cg_iterations=cg_start_iterations)
            x, info = model(problem)
            x = (x * problem.scale).cpu().numpy()
            ref = scan["reference"][frames] if frames else scan["reference"]
            rows.append((np.mean([psnr(a, b) for a, b in zip(x, ref)]),
                         np.mean([ssim(a, b) for a, b in zip(x, ref)]), info["iterations"]))
    model.train()
    r = np.array(rows, dtype=float)
    return {"psnr": float(r[:, 0].mean()), "ssim": float(r[:, 1].mean()), "iterations": float(r[:, 2].mean())}


def evaluate_streaming(model, caches, references, cfg: TrainConfig) -> float:
    """Mean PSNR (as :func:`evaluate_model`) over scans of the streamed images: every
    cache's frames (scan from its first frame) reconstructed with the streaming schedule of
    ``cfg`` (``stream_window`` etc.), scored against ``references`` (one ``(T, Y, X)`` each)."""
    model.eval()
    scores = []
    with torch.no_grad():
        for cache, ref in zip(caches, references):
            scale = clip_scale(cache, 0)
            x = streaming_outputs(model, cache, range(len(ref)), cfg.stream_window, cfg.stream_lookahead,
                                  cfg.stream_updates, scale)
            x = (x * scale).cpu().numpy()
            scores.append(np.mean([psnr(a, b) for a, b in zip(x, ref)]))
    model.train()
    return float(np.mean(scores))


def training_loss(cfg: TrainConfig, model, k, c, m, target, step: int = 0, problem=None, sample: int = 0):
    """The loss of one training window, chosen by ``cfg``: ``(loss, info)``.

    - ``supervision="ssdu"``: :func:`~recon_core.training.ssdu.ssdu_step` (the Problem on a
      seeded 60/40 spoke split, k-space loss on the held-out spokes; ``target`` unused);
      the split's seed is ``(seed, step, sample)`` (``sample``: the window's place in the
      step's global batch), so a resumed run draws the same splits;
    - ``model="flat"``: :func:`~recon_core.networks.flat.flat_loss` (velocity alignment +
      final complex L1);
    - otherwise (imunne, altun, cunet, dune): complex L1 against the target, as always.
    """
    if cfg.supervision not in ("supervised", "ssdu"):
        raise ValueError(f"supervision={cfg.supervision!r}: expected 'supervised' or 'ssdu'")
    if cfg.uses_ssdu(target is not None):
        from .ssdu import ssdu_step
        return ssdu_step(model, k, c, m, cfg.ssdu_fraction, ssdu_generator(cfg, step, sample),
                         cfg.cg_start_iterations, return_info=True)
    if problem is None:
        with torch.no_grad():
            problem = make_problem(k, c, m, cg_iterations=cfg.cg_start_iterations)
    x, info = model(problem)
    if cfg.model == "flat":
        from ..networks.flat import flat_loss
        return flat_loss(info["states"], problem.x0, target / problem.scale, times=info["times"],
                         velocity_weight=cfg.flat_velocity_weight), info
    loss = (x - target / problem.scale).abs().mean()
    if cfg.model == "imunne" and cfg.fixed_point_weight and "x_star" in info:
        # x = R(x*) with gradients: penalising |R(x*) - x*| makes x* a fixed point in fact,
        # i.e. keeps the learned map contractive enough for iterations beyond training's
        loss = loss + cfg.fixed_point_weight * (x - info["x_star"]).abs().mean()
    if cfg.model == "imunne" and cfg.contraction_weight and "x_star" in info:
        penalty, info["radius"] = contraction_penalty(model.block, info["x_star"], x, problem, cfg.contraction_target,
                                                      seed=step * 7919 + sample)
        loss = loss + cfg.contraction_weight * penalty
    return loss, info


def ssdu_generator(cfg: TrainConfig, step: int, sample: int) -> torch.Generator:
    """The generator of a window's SSDU split, seeded by ``(seed, step, sample)`` alone, so a
    resumed run, or another rank, draws the same split."""
    return torch.Generator().manual_seed(int(cfg.seed) * 1_000_003 + int(step) + int(sample) * 100_000_007)


def contraction_penalty(block, x: torch.Tensor, fx: torch.Tensor, problem, target: float = 0.9,
                        iterations: int = 8, seed: int = 0) -> tuple[torch.Tensor, float]:
    """``relu(|J v| - target)^2`` for ``fx = block(x, problem)``, ``J = dR/dx`` at ``x`` and
    ``v`` (unit norm) its dominant direction, found by ``iterations`` steps of power iteration
    without gradients; ``|J v|`` is then taken differentiably, by a finite difference through
    the block. ``|J v|`` estimates the spectral radius of ``J`` at the fixed point, which decides
    whether plain iteration converges there and how fast (the error shrinks like radius^k):
    the penalty keeps it below ``target`` (cf. Bai et al. 2021, who penalise ``||J||_F``;
    here the largest eigenvalue is what the inference loop's convergence depends on).
    ``x``, ``fx``: ``(T, Y, X)`` complex, ``fx`` with gradients to the parameters. Returns
    ``(penalty, radius)``, the radius as a float."""
    g = torch.Generator().manual_seed(int(seed))
    x0, f0 = x.detach(), fx.detach()
    eps = 1e-2 * float(x0.abs().pow(2).sum().sqrt().clamp_min(1e-12))
    v = torch.complex(torch.randn(x0.shape, generator=g), torch.randn(x0.shape, generator=g)).to(x0)
    with torch.no_grad():
        for _ in range(iterations):
            v = v / v.abs().pow(2).sum().sqrt().clamp_min(1e-30)
            v = (block(x0 + eps * v, problem) - f0) / eps
    v = v / v.abs().pow(2).sum().sqrt().clamp_min(1e-30)
    jv = (block(x0 + eps * v, problem) - fx) / eps
    radius = jv.abs().pow(2).sum().sqrt()
    return torch.relu(radius - target).pow(2), float(radius.detach())


def tqdm_or_list(items, progress, desc):
    if not progress:
        return items
    from tqdm import tqdm
    return tqdm(items, desc=desc, unit="scan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class Sample:
    """One training window of a step's global batch: scan ``which``, frames ``first`` ..
    ``first + window``, its k-space noise level (augmentation), streaming clip start and
    seed (``index``: its place in the global batch)."""
    which: int
    first: int
    noise_level: float
    clip_start: int
    index: int


def draw_samples(cfg: TrainConfig, step: int, frames_per_scan: list[int], count: int) -> list[Sample]:
    """The ``count`` windows of step ``step``, from a generator seeded by ``(seed, step)``
    alone: the same on every rank, the same after a resume, and for one process with
    ``batch = count`` the union of what ``count / batch`` ranks draw."""
    g = np.random.default_rng([cfg.seed, step])
    out = []
    for j in range(count):
        which = int(g.integers(len(frames_per_scan)))
        t_total = frames_per_scan[which]
        first = int(g.integers(0, t_total - cfg.window + 1))
        level = float(g.uniform(0.0, cfg.noise_augment)) if cfg.noise_augment > 0 else 0.0
        clip = min(cfg.stream_clip, t_total)
        start = int(g.integers(0, t_total - clip + 1))
        out.append(Sample(which, first, level, start, j))
    return out


class StepLoss(torch.nn.Module):
    """The loss of one step's windows, ``mean_j (window_weight * L_window + stream_weight *
    L_stream)``, as one module: under DDP (:func:`.distributed.wrap`) it is one forward per
    step whatever the network calls inside (JFB fixed point, streamed windows), so the
    gradient all-reduce runs once, after the whole backward."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, scans: list, caches, device):
        super().__init__()
        self.model, self.cfg, self.scans, self.caches, self.device = model, cfg, scans, caches, device

    def forward(self, samples: list[Sample], step: int):
        cfg, total = self.cfg, 0.0
        window_losses, stream_losses, info = [], [], {"iterations": 0}
        for s in samples:
            scan = self.scans[s.which]
            window = slice(s.first, s.first + cfg.window)
            k, c, m, target = _tensors(scan, self.device, window)
            cache = self.caches[s.which] if self.caches is not None else None
            problem = cache.problem(window) if cache is not None else None
            if cfg.noise_augment > 0:
                k = torch.from_numpy(add_kspace_noise(k.cpu().numpy(), s.noise_level,
                                                      seed=step + s.index * 10_000_019)).to(self.device)
                problem = None                      # built from the noisy k-space by training_loss
            if cfg.window_weight > 0:
                loss, info = training_loss(cfg, self.model, k, c, m, target, step, problem, sample=s.index)
            else:                                   # streaming schedule only: no window loss
                loss = torch.zeros((), device=self.device)
            term = cfg.window_weight * loss
            window_losses.append(loss.detach())
            if cfg.stream_weight > 0:
                clip = min(cfg.stream_clip, scan["kspace"].shape[0])
                frames = slice(s.clip_start, s.clip_start + clip)
                burn_in = min(cfg.stream_burn_in, clip - 1)
                if cfg.uses_ssdu(target is not None):
                    from .ssdu import ssdu_streaming_loss
                    kc, cc, mc, _ = _tensors(scan, self.device, frames)
                    s_loss, _ = ssdu_streaming_loss(self.model, kc, cc, mc, cfg.stream_window, cfg.stream_lookahead,
                                                    cfg.stream_updates, burn_in, cfg.ssdu_fraction,
                                                    ssdu_generator(cfg, step, s.index), cfg.cg_start_iterations)
                else:
                    s_loss, _ = streaming_loss(self.model, cache, range(frames.start, frames.stop),
                                               torch.from_numpy(scan["target"][frames]).to(self.device),
                                               cfg.stream_window, cfg.stream_lookahead, cfg.stream_updates, burn_in,
                                               cfg.stream_ssim, early=cache.early, history=cfg.stream_history)
                term = term + cfg.stream_weight * s_loss
                stream_losses.append(s_loss.detach())
            total = total + term / len(samples)
        mean = lambda xs: torch.stack(xs).mean() if xs else None     # noqa: E731
        return total, mean(window_losses), mean(stream_losses), info


def _load_resume_state(out_dir: str, ckpt: str, state_path: str):
    """``(weights, optimizer state or None, history)`` of the run in ``out_dir``, or None."""
    if not (os.path.exists(ckpt + ".safetensors") and os.path.exists(os.path.join(out_dir, "log.json"))):
        return None
    from safetensors.torch import load_file
    weights = {k: v for k, v in load_file(ckpt + ".safetensors").items() if not k.startswith("__extra__")}
    with open(os.path.join(out_dir, "log.json")) as f:
        history = json.load(f)
    opt_state = torch.load(state_path, weights_only=True) if os.path.exists(state_path) else None
    return weights, opt_state, history


def train(cfg: TrainConfig, train_paths, val_paths, out_dir: str, resume: bool = True, progress=True,
          on_step=None) -> dict:
    """Train and write ``out_dir/model.safetensors`` (+ ``.yaml``), ``log.json``, ``curve.png``.

    Under torchrun (:mod:`.distributed`) every rank runs this with the same arguments; each
    step's ``world_size x batch`` windows are shared out, gradients all-reduced, and rank 0
    alone validates and writes. ``on_step(step, model)`` is called on every rank after each
    optimizer step (tests compare the ranks' weights with it)."""
    from . import distributed as dist

    main = dist.is_main()
    progress = progress and main
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    scans = [load_scan(p) for p in train_paths]
    frames_per_scan = [s["kspace"].shape[0] for s in scans]
    untargeted = [p for p, s in zip(train_paths, scans) if "target" not in s]
    if untargeted and cfg.supervision == "supervised":
        raise ValueError(f"{len(untargeted)} training scan(s) carry no supervised target (recorded scans have no "
                         f"ground truth), e.g. {untargeted[0]}: train them with supervision='ssdu'")
    short = [p for p, t in zip(train_paths, frames_per_scan) if t < cfg.window]
    if short:
        raise ValueError(f"{len(short)} training scan(s) have fewer frames than the window ({cfg.window}), "
                         f"e.g. {short[0]}")
    caches = None
    if (cfg.supervision == "supervised" or cfg.anchor) and not cfg.noise_augment:
        # per-frame kernels, A^H y and CG starts once per scan: a training window then costs no NUFFT
        # (with anchors: for the supervised scans only)
        caches = []
        with torch.no_grad():
            for scan in (tqdm_or_list(scans, progress, "cache")):
                if cfg.uses_ssdu("target" in scan):
                    caches.append(None)
                    continue
                k, c, m, _ = _tensors(scan, device)
                caches.append(FrameCache(k, c, m, cfg.cg_start_iterations))
                if cfg.stream_fallback > 0 and cfg.stream_weight > 0:
                    caches[-1].early = fallback_cache(scan, cfg.stream_fallback, device, cfg.cg_start_iterations)
    val = [load_scan(p) for p in val_paths[:cfg.val_scans]] if main else []
    val_caches = None
    if cfg.window_weight <= 0 and cfg.stream_weight <= 0:
        raise ValueError("window_weight and stream_weight are both 0: no loss to train on")
    if cfg.noise_input and cfg.noise_augment:
        raise ValueError("noise_input with noise_augment: the added noise would change the data's noise "
                         "level behind the network's back; widen the data's SNR range instead")
    if cfg.batch < 1:
        raise ValueError(f"batch={cfg.batch}: expected at least 1 window per step")
    if cfg.stream_weight > 0:
        if caches is None and cfg.supervision != "ssdu":
            raise ValueError("stream_weight > 0 needs the per-frame cache: supervised training without "
                             "noise augmentation (supervision='supervised', noise_augment=0)")
        if cfg.model != "imunne":
            raise ValueError(f"stream_weight > 0: the streaming schedule (warm start, stream_updates block "
                             f"updates per window) is IMUNNE's, not {cfg.model!r}'s")
        val_caches = []                 # validation streams the first 8 frames of each scan
        with torch.no_grad():
            for scan in val:
                k, c, m, _ = _tensors(scan, device, slice(0, 8))
                val_caches.append(FrameCache(k, c, m, cfg.cg_start_iterations))
    rss_data = peak_rss_mb()
    model = build_model(cfg.model, **cfg.arch()).to(device).train()
    new = {}                            # tensors the init checkpoint does not hold, or holds in part
    if cfg.init:
        from safetensors.torch import load_file
        new = initialise(model, load_file(cfg.init), cfg.init)
    opt = make_optimizer(model, cfg.lr, {n for n, mask in new.items() if mask is None}, cfg.new_lr_scale)
    stepper = NewElements(model, new, cfg.new_lr_scale)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr * 0.05)
    history = {"step": [], "loss": [], "val": [], "config": asdict(cfg)}
    start_step = 0
    ckpt = os.path.join(out_dir, "model")
    state_path = os.path.join(out_dir, "optimizer.pt")
    state = _load_resume_state(out_dir, ckpt, state_path) if resume and main else None
    state = dist.broadcast_object(state)            # rank 0's checkpoint on every rank
    if state is not None:
        weights, opt_state, history = state
        model.load_state_dict(weights)
        start_step = history["step"][-1] if history["step"] else 0
        if opt_state is not None:
            opt.load_state_dict(opt_state["opt"])
            sched.load_state_dict(opt_state["sched"])
        log.info("resumed %s at step %d", cfg.model, start_step)
    world = dist.world_size()
    if world > 1:
        history["config"]["world_size"] = world
        log.info("rank %d of %d, %d window(s) per rank per step (global batch %d)", dist.rank(), world,
                 cfg.batch, world * cfg.batch)
    step_loss = dist.wrap(StepLoss(model, cfg, scans, caches, device), str(device))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=start_step, unit="step", desc=f"train {cfg.model}")
    step_times = []
    losses = []
    stream_losses = []
    for step in range(start_step + 1, cfg.steps + 1):
        t0 = time.perf_counter()
        samples = dist.rank_share(draw_samples(cfg, step, frames_per_scan, world * cfg.batch), cfg.batch)
        total, loss, s_loss, info = step_loss(samples, step)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        stepper.step(opt)
        sched.step()
        logged = torch.stack([loss, s_loss if s_loss is not None else torch.zeros_like(loss)]).cpu()
        if world > 1:                                   # the curve shows every rank's windows
            torch.distributed.all_reduce(logged)
            logged /= world
        losses.append(float(logged[0]))
        if s_loss is not None:
            stream_losses.append(float(logged[1]))
        step_times.append(time.perf_counter() - t0)
        if on_step is not None:
            on_step(step, model)
        if bar is not None:
            bar.update(1)
            postfix = {"loss": f"{np.mean(losses[-20:]):.4f}", "it": info["iterations"]}
            if "radius" in info:
                postfix["radius"] = f"{info['radius']:.3f}"
            if stream_losses:
                postfix["stream"] = f"{np.mean(stream_losses[-20:]):.4f}"
            bar.set_postfix(postfix)
        checkpoint = step % cfg.checkpoint_every == 0 or step == cfg.steps
        if checkpoint:
            dist.check_in_sync(model, step)
        if main and (step % cfg.validate_every == 0 or step == cfg.steps):
            v = evaluate_model(model, val, cfg.cg_start_iterations, device, window=8)
            streamed = ""
            if val_caches is not None:
                v["stream_psnr"] = evaluate_streaming(model, val_caches, [s["reference"][:8] for s in val], cfg)
                streamed = f", streamed {v['stream_psnr']:.2f} dB"
            history["val"].append({"step": step, **v})
            log.info("step %d: val PSNR %.2f dB SSIM %.3f%s", step, v["psnr"], v["ssim"], streamed)
            if bar is not None:
                bar.write(f"step {step}: loss {np.mean(losses[-50:]):.4f}, val PSNR {v['psnr']:.2f} dB, "
                          f"SSIM {v['ssim']:.3f}, iterations {v['iterations']:.1f}{streamed}")
        if checkpoint:
            history["step"].append(step)
            history["loss"].append(float(np.mean(losses[-cfg.checkpoint_every:])))
            if stream_losses:            # the streaming term, unweighted ("loss" stays the window term)
                history.setdefault("stream_loss", []).append(
                    float(np.mean(stream_losses[-cfg.checkpoint_every:])))
            epoch_s = float(np.mean(step_times[-cfg.checkpoint_every:]) * len(scans) / (world * cfg.batch))
            history["timing"] = {"seconds_per_step": float(np.mean(step_times)), "seconds_per_epoch": epoch_s,
                                 "peak_rss_mb": peak_rss_mb(), "rss_after_data_mb": rss_data}
            if main:
                schedule = cfg.streaming_schedule()
                provenance = {"data": cfg.data or None, "loss": cfg.loss_description(), "init": cfg.init or None,
                              "processes": world}
                save_checkpoint(ckpt, model, cfg.model, cfg.arch(),
                                {"steps": step, "val": history["val"][-1:] or None, **history["timing"],
                                 **provenance},
                                meta={"streaming": schedule} if schedule else None)
                torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, state_path)
                with open(os.path.join(out_dir, "log.json"), "w") as f:
                    json.dump(history, f, indent=1)
                training_curve(history, os.path.join(out_dir, "curve.png"))
    if bar is not None:
        bar.close()
    return history


def training_curve(history: dict, png: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(history["step"], history["loss"], label="window")
    if history.get("stream_loss"):
        ax[0].plot(history["step"][-len(history["stream_loss"]):], history["stream_loss"], label="streamed")
        ax[0].legend()
    ax[0].set_xlabel("step")
    label = "complex L1"
    if history["config"].get("supervision") == "ssdu":
        label = "k-space L1+L2, SSDU"
    elif history["config"].get("model") == "flat":
        label = "flow-aligned"
    ax[0].set_ylabel(f"training loss ({label})")
    ax[0].set_yscale("log")
    if history["val"]:
        ax[1].plot([v["step"] for v in history["val"]], [v["psnr"] for v in history["val"]], "o-",
                   label="fixed point")
        streamed = [v for v in history["val"] if "stream_psnr" in v]
        if streamed:
            ax[1].plot([v["step"] for v in streamed], [v["stream_psnr"] for v in streamed], "s-",
                       label="streamed (first 8 frames)")
            ax[1].legend()
    ax[1].set_xlabel("step")
    ax[1].set_ylabel("validation PSNR (dB)")
    fig.suptitle(history["config"]["model"])
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
