"""DUNE, FLAT and SSDU on tiny CPU problems: the VJP data-consistency gradient is the true
gradient, every part of the networks learns, the FLAT schedule and loss follow their
formulas, the SSDU split and loss behave, and the training loop runs them."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from recon_core.networks.dune import DUNE, Decoder, encoder_from_stem
from recon_core.networks.flat import FLAT, flat_loss, flat_schedule, psnr_per_step
from recon_core.networks.problem import Problem, make_problem
from recon_core.networks.unrolled import build_model
from recon_core.training.checkpoint import load_checkpoint, save_checkpoint
from recon_core.training.ssdu import select_spokes, ssdu_loss, ssdu_split, ssdu_step, ssdu_streaming_loss
from conftest import disc_scan

DUNE_ARCH = {"channels": 4, "levels": 1, "unshuffle": 2, "eta": 0.5, "latent": 4, "iterations": 2}
FLAT_ARCH = {"channels": 4, "levels": 2, "unshuffle": 2, "eta": 0.5, "steps": 3}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_scan():
    """16x16, 3 coils, 3 frames of 7 golden-angle spokes (noise free), a disc growing per frame."""
    return disc_scan(16, 3, 3, 7)


@pytest.fixture(scope="module")
def tiny_problem(tiny_scan):
    kspace, coords, maps, obj = tiny_scan
    return make_problem(kspace, coords, maps), obj


def _perturb(model, seed=1, size=0.05):
    """Move every weight off its initialisation (the zero-initialised last layers would
    otherwise block the gradients of everything before them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(size * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _assert_all_parameters_learn(model):
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------- DUNE

class DenseOperator:
    """A small explicit complex matrix as forward model (exactly self-adjoint normal operator),
    in float64, so the gradient check is exact up to rounding."""

    def __init__(self, matrix, shape):
        self.a, self.shape = matrix, shape
        self.kernel = None

    def forward(self, x):
        return self.a @ x.reshape(-1)

    def normal(self, x):
        return (self.a.conj().T @ (self.a @ x.reshape(-1))).reshape(self.shape)


def test_dune_vjp_is_the_true_gradient_of_the_data_term():
    """g = J_D(z)^H A^H (A D(z) - y) / L equals the gradient of f(z) = ||A D(z) - y||^2 / (2L):
    against autograd of f written out, and against central differences along random
    directions (float64, a dense complex A, real z, complex x = D(z))."""
    g = torch.Generator().manual_seed(0)
    shape = (2, 8, 8)
    n = int(np.prod(shape))
    a = torch.complex(torch.randn(96, n, generator=g, dtype=torch.float64),
                      torch.randn(96, n, generator=g, dtype=torch.float64)) / np.sqrt(n)
    y = torch.complex(torch.randn(96, generator=g, dtype=torch.float64),
                      torch.randn(96, generator=g, dtype=torch.float64))
    op = DenseOperator(a, shape)
    lip = float(torch.linalg.matrix_norm(a, 2) ** 2)
    x0 = torch.complex(torch.randn(shape, generator=g, dtype=torch.float64),
                       torch.randn(shape, generator=g, dtype=torch.float64))
    problem = Problem(op, y, (a.conj().T @ y).reshape(shape), x0, 1.0, lipschitz=lip)
    model = _perturb(DUNE(**DUNE_ARCH).double(), seed=2, size=0.2).train()
    z = model.encode(x0).detach()

    def f(zz):
        r = op.forward(model.decode(zz)) - y
        return 0.5 * r.abs().pow(2).sum() / lip

    vjp, _ = model.dc_gradient(z, problem, create_graph=False)
    zz = z.clone().requires_grad_(True)
    (explicit,) = torch.autograd.grad(f(zz), zz)
    assert vjp.shape == z.shape and vjp.dtype == torch.float64
    assert torch.allclose(vjp, explicit, rtol=1e-9, atol=1e-12 * float(explicit.abs().max()))
    h = 1e-5
    with torch.no_grad():
        for _ in range(3):
            d = torch.randn(z.shape, generator=g, dtype=torch.float64)
            fd = (f(z + h * d) - f(z - h * d)) / (2 * h)
            assert abs(float(fd) - float((vjp * d).sum())) < 1e-6 * abs(float(fd)) + 1e-10


def test_dune_vjp_matches_the_radial_operator(tiny_problem):
    """On the real radial operator (Toeplitz normal inside the VJP) the VJP equals the
    gradient of ||A D(z) - y_w||^2 / (2L) computed through the NUFFT (to NUFFT accuracy)."""
    problem, _ = tiny_problem
    model = _perturb(build_model("dune", **DUNE_ARCH), seed=3, size=0.2).train()
    z = model.encode(problem.x0).detach().requires_grad_(True)
    f = 0.5 * (problem.op.forward(model.decode(z)) - problem.y_w).abs().pow(2).sum() / problem.lipschitz
    (explicit,) = torch.autograd.grad(f, z)
    vjp, _ = model.dc_gradient(z.detach(), problem, create_graph=False)
    assert float((vjp - explicit).norm() / explicit.norm()) < 2e-2


def test_dune_training_step_reaches_encoder_decoder_and_regularizers(tiny_problem):
    problem, obj = tiny_problem
    for dc in ("vjp", "heuristic"):
        model = _perturb(build_model("dune", **DUNE_ARCH, dc=dc)).train()
        assert model.kind == "dune" and len(model.reg) == DUNE_ARCH["iterations"]
        x, info = model(problem)
        assert x.shape == obj.shape and info["iterations"] == DUNE_ARCH["iterations"]
        (x - obj / problem.scale).abs().mean().backward()
        _assert_all_parameters_learn(model)
    # in training the VJP is itself differentiable (second-order pass)
    model = _perturb(build_model("dune", **DUNE_ARCH)).train()
    g, _ = model.dc_gradient(model.encode(problem.x0), problem)
    assert g.requires_grad


def test_untrained_dune_is_gradient_descent(tiny_problem):
    """Zero-initialised decoder head and regularizers: D(E(x)) = x, and each iteration is
    the image-space step x <- x - eta grad f(x)."""
    problem, _ = tiny_problem
    model = build_model("dune", **DUNE_ARCH).eval()
    x = problem.x0
    assert torch.allclose(model.decode(model.encode(x)), x)
    for k in range(DUNE_ARCH["iterations"]):
        x = x - model.eta[k].detach() * problem.gradient(x)
    with torch.no_grad():
        out, _ = model(problem)
    assert torch.allclose(out, x, atol=1e-5)


def test_dune_checkpoint_and_inference_without_grad(tiny_problem, tmp_path):
    problem, _ = tiny_problem
    model = _perturb(build_model("dune", **DUNE_ARCH)).eval()
    save_checkpoint(str(tmp_path / "d"), model, "dune", DUNE_ARCH)
    loaded, meta, _ = load_checkpoint(str(tmp_path / "d.safetensors"))
    assert meta["kind"] == "dune"
    with torch.no_grad():                     # the VJP switches gradients on locally
        a, _ = model(problem)
        b, _ = loaded(problem)
    assert not a.requires_grad and torch.equal(a, b)
    with pytest.raises(ValueError, match="dune"):
        build_model("nonsense")


class LayerNorm2d(nn.LayerNorm):
    """Channels-first LayerNorm as in ConvNeXt's stem."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _stem():
    return nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), LayerNorm2d(8))


def test_dune_with_a_convnext_style_stem_from_a_local_file(tiny_problem, tmp_path):
    """A ConvNeXt-like stem (Conv2d 4x4 stride 4 + LayerNorm), its weights saved as part of a
    torchvision-style state dict (prefix ``features.0.``), loads from the local file and
    plugs into DUNE as encoder; a non-local path is refused."""
    from safetensors.torch import save_file

    problem, obj = tiny_problem
    torch.manual_seed(5)
    pretrained = _stem()
    state = {f"features.0.{k}": v.contiguous() for k, v in pretrained.state_dict().items()}
    state["classifier.2.weight"] = torch.zeros(3, 3)
    save_file(state, str(tmp_path / "convnext.safetensors"))
    encoder, latent, stride = encoder_from_stem(_stem(), weights=str(tmp_path / "convnext.safetensors"))
    assert (latent, stride) == (2 * 4 ** 2 + 8, 4)
    for k, v in pretrained.state_dict().items():
        assert torch.equal(encoder.features.stem.state_dict()[k], v)
    model = _perturb(DUNE(channels=4, levels=1, iterations=2, encoder=encoder, decoder=Decoder(latent, stride, 4),
                          latent_channels=latent)).train()
    x, _ = model(problem)
    (x - obj / problem.scale).abs().mean().backward()
    _assert_all_parameters_learn(model)
    with pytest.raises(FileNotFoundError, match="local file"):
        encoder_from_stem(_stem(), weights="https://example.org/convnext_tiny.pth")


# ---------------------------------------------------------------- FLAT

@pytest.mark.parametrize("kind", ["uniform", "cosine"])
@pytest.mark.parametrize("steps", [1, 4, 7])
def test_flat_schedule_matches_its_formula(kind, steps):
    t, dt = flat_schedule(steps, kind)
    k = torch.arange(steps + 1, dtype=torch.float64)
    expected = 1 - k / steps if kind == "uniform" else 0.5 * (1 + torch.cos(np.pi * k / steps))
    assert t.shape == (steps + 1,) and dt.shape == (steps,)
    assert torch.allclose(t, expected, atol=1e-12)
    assert t[0] == 1 and t[-1] == 0
    assert (dt < 0).all()                                   # strictly decreasing
    assert torch.equal(dt, t[1:] - t[:-1])
    assert abs(float(dt.sum()) + 1) < 1e-12
    with pytest.raises(ValueError):
        flat_schedule(steps, "linear-ish")


class StraightVelocity(nn.Module):
    """An oracle v(x, t) = x0 - x_ref: its Euler steps follow the straight path exactly."""

    def __init__(self, v):
        super().__init__()
        self.v = v

    def forward(self, x, t, problem):
        return self.v


@pytest.mark.parametrize("kind", ["uniform", "cosine"])
def test_flat_loss_is_zero_on_the_straight_path(tiny_problem, kind):
    problem, obj = tiny_problem
    x_ref = obj / problem.scale
    model = FLAT(**{**FLAT_ARCH, "steps": 5}, schedule=kind)
    model.velocity = StraightVelocity(problem.x0 - x_ref)
    x, info = model(problem)
    t = torch.tensor(info["times"])
    for tk, state in zip(t, info["states"]):                # x_k = t_k x0 + (1 - t_k) x_ref
        assert torch.allclose(state, float(tk) * problem.x0 + (1 - float(tk)) * x_ref, atol=1e-5)
    loss, velocity, final = flat_loss(info["states"], problem.x0, x_ref, times=info["times"], return_terms=True)
    assert float(loss) < 1e-6 and float(velocity) < 1e-6 and float(final) < 1e-6     # float32 rounding
    # also exactly zero for the ideal path built directly (float64), and positive off it
    x0 = problem.x0.to(torch.complex128)
    ref = x_ref.to(torch.complex128)
    ts, _ = flat_schedule(5, kind)
    path = [float(tk) * x0 + (1 - float(tk)) * ref for tk in ts]
    assert float(flat_loss(path, x0, ref, schedule=kind)) < 1e-20
    bent = [p + (0.1 if 0 < i < 5 else 0) for i, p in enumerate(path)]
    assert float(flat_loss(bent, x0, ref, schedule=kind)) > 1e-3


def test_flat_states_are_euler_steps_and_everything_learns(tiny_problem):
    problem, obj = tiny_problem
    x_ref = obj / problem.scale
    model = _perturb(build_model("flat", **FLAT_ARCH)).train()
    assert model.kind == "flat"
    x, info = model(problem)
    states, times = info["states"], info["times"]
    assert len(states) == FLAT_ARCH["steps"] + 1 and states[0] is problem.x0 and states[-1] is x
    with torch.no_grad():                                   # x_{k+1} = x_k + dt_k v(x_k, t_k)
        v0 = model.velocity(states[0], times[0], problem)
        assert torch.allclose(states[1], states[0] + (times[1] - times[0]) * v0, atol=1e-6)
    flat_loss(states, problem.x0, x_ref, times=times).backward()
    _assert_all_parameters_learn(model)
    curve = psnr_per_step(states, obj)
    assert len(curve) == len(states) and np.isfinite(curve).all()


def test_untrained_flat_is_gradient_descent(tiny_problem):
    """U = 0 at initialisation and alpha = eta K: with the uniform schedule every Euler step
    is x <- x - eta grad f(x)."""
    problem, _ = tiny_problem
    model = build_model("flat", **FLAT_ARCH).eval()
    x = problem.x0
    for _ in range(FLAT_ARCH["steps"]):
        x = x - FLAT_ARCH["eta"] * problem.gradient(x)
    with torch.no_grad():
        out, _ = model(problem)
    assert torch.allclose(out, x, atol=1e-5)


class _StopAfter:
    """A deadline that says "time is up" from its ``n``-th question on."""

    def __init__(self, n):
        self.n, self.asked = n, 0

    def __call__(self):
        self.asked += 1
        return self.asked >= self.n


def test_flat_under_a_deadline_jumps_to_the_end_of_the_flow(tiny_problem):
    """Cut after one step of four: the second step crosses [t_1, 0] at once, so the image is
    the flow's end-point estimate x_1 - t_1 v(x_1, t_1), and the untrained network (gradient
    descent) is then the same as one step of 3 eta."""
    problem, _ = tiny_problem
    model = build_model("flat", **FLAT_ARCH).eval()
    with torch.no_grad():
        out, info = model(problem, deadline=_StopAfter(1))
        x1 = problem.x0 - FLAT_ARCH["eta"] * problem.gradient(problem.x0)
        expected = x1 - (FLAT_ARCH["steps"] - 1) * FLAT_ARCH["eta"] * problem.gradient(x1)
    assert info["iterations"] == 2 and info["times"][-1] == 0.0 and not info["converged"]
    assert torch.allclose(out, expected, atol=1e-5)
    with torch.no_grad():
        _, full = model(problem, deadline=_StopAfter(10))
    assert full["iterations"] == FLAT_ARCH["steps"] and full["converged"]


def test_dune_under_a_deadline_decodes_after_fewer_iterations(tiny_problem):
    problem, _ = tiny_problem
    model = _perturb(build_model("dune", **DUNE_ARCH)).eval()
    with torch.no_grad():
        cut, info = model(problem, deadline=_StopAfter(1))
        one, _ = model(problem, iterations=1)
    assert info["iterations"] == 1 and not info["converged"]
    assert torch.allclose(cut, one, atol=1e-6)


# ---------------------------------------------------------------- SSDU

@pytest.mark.parametrize("spokes,fraction,n_theta", [(9, 0.6, 5), (13, 0.6, 8), (9, 0.4, 4), (9, 0.01, 1),
                                                     (9, 0.99, 8)])
def test_ssdu_split_is_disjoint_complete_and_respects_the_fraction(spokes, fraction, n_theta):
    t, c, r = 6, 2, 8
    kspace = torch.randn(t, c, spokes, r, dtype=torch.complex64)
    coords = torch.randn(t, spokes, r, 2)
    theta, lam = ssdu_split(kspace, coords, fraction, torch.Generator().manual_seed(7))
    assert theta.shape == (t, n_theta) and lam.shape == (t, spokes - n_theta)
    for f in range(t):
        a, b = set(theta[f].tolist()), set(lam[f].tolist())
        assert not a & b and a | b == set(range(spokes))
        assert len(a) == n_theta and len(b) == spokes - n_theta       # no repeats
    assert len({tuple(row) for row in theta.tolist()}) > 1                # frames are split independently
    again, _ = ssdu_split(kspace, coords, fraction, torch.Generator().manual_seed(7))
    assert torch.equal(theta, again)                                      # seeded
    k_theta, c_theta = select_spokes(kspace, coords, theta)
    assert torch.equal(k_theta[2, :, -1], kspace[2, :, theta[2, -1]])
    assert torch.equal(c_theta[4, 0], coords[4, theta[4, 0]])


def test_ssdu_loss_scores_the_held_out_spokes(tiny_scan):
    """Noise-free data: the true object has (almost) zero loss on Lambda, zero image loss 2."""
    kspace, coords, maps, obj = tiny_scan
    theta, lam = ssdu_split(kspace, coords, 0.6, torch.Generator().manual_seed(1))
    k_t, c_t = select_spokes(kspace, coords, theta)
    k_l, c_l = select_spokes(kspace, coords, lam)
    problem = make_problem(k_t, c_t, maps)
    assert problem.y_w.shape[-1] == theta.shape[1] * kspace.shape[-1]   # the network sees Theta only
    assert float(ssdu_loss(obj / problem.scale, k_l, c_l, maps, problem.scale)) < 1e-3
    assert abs(float(ssdu_loss(torch.zeros_like(obj), k_l, c_l, maps, problem.scale)) - 2) < 1e-6
    assert float(ssdu_loss(problem.x0, k_l, c_l, maps, problem.scale)) > 0.1


@pytest.mark.parametrize("kind,arch", [("altun", {"channels": 4, "levels": 2, "unshuffle": 2, "eta": 0.5,
                                                  "blocks": 2}),
                                       ("dune", DUNE_ARCH)])
def test_ssdu_step_gives_finite_gradients(tiny_scan, kind, arch):
    kspace, coords, maps, _ = tiny_scan
    model = _perturb(build_model(kind, **arch)).train()
    loss, info = ssdu_step(model, kspace, coords, maps, 0.6, torch.Generator().manual_seed(3), return_info=True)
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    assert info["theta"].shape == (kspace.shape[0], 4)
    loss.backward()
    _assert_all_parameters_learn(model)


def test_ssdu_streaming_loss_never_shows_lambda_to_the_network_and_learns(tiny_scan):
    """The streamed images depend on Theta alone (changing the Lambda samples changes the loss,
    not the images); the loss reaches every weight and a few steps lower it."""
    kspace, coords, maps, _ = tiny_scan
    torch.manual_seed(0)                        # the initial weights, whatever ran before
    model = _perturb(build_model("imunne", channels=4, levels=2, unshuffle=2, eta=0.5, max_iter=2)).train()
    seed = lambda: torch.Generator().manual_seed(5)                             # noqa: E731
    loss, info = ssdu_streaming_loss(model, kspace, coords, maps, 2, 1, 2, 0, 0.6, seed())
    theta, lam = ssdu_split(kspace, coords, 0.6, seed())
    assert torch.equal(info["theta"], theta)
    spoiled = kspace.clone()
    for t in range(kspace.shape[0]):
        spoiled[t, :, lam[t]] *= 3.0
    loss2, info2 = ssdu_streaming_loss(model, spoiled, coords, maps, 2, 1, 2, 0, 0.6, seed())
    assert torch.allclose(info["x"], info2["x"]) and abs(float(loss2.detach()) - float(loss.detach())) > 0.02 * float(loss.detach())
    assert info["x"].shape == (kspace.shape[0],) + maps.shape[1:]
    loss.backward()
    _assert_all_parameters_learn(model)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = float(loss)
    for _ in range(15):
        opt.zero_grad()
        ssdu_streaming_loss(model, kspace, coords, maps, 2, 1, 2, 0, 0.6, seed())[0].backward()
        opt.step()
    assert float(ssdu_streaming_loss(model, kspace, coords, maps, 2, 1, 2, 0, 0.6, seed())[0]) < 0.9 * first


def test_contraction_penalty_finds_the_spectral_radius_and_trains_it_down():
    from recon_core.training.train import contraction_penalty

    gains = torch.tensor([0.3, 0.5, 0.97, 0.2], dtype=torch.complex64)          # eigenvalues of J
    w = torch.tensor(1.0, requires_grad=True)
    block = lambda x, _: w * gains[:, None, None] * x                           # noqa: E731  (linear)
    x = torch.randn(4, 6, 6, dtype=torch.complex64)
    penalty, radius = contraction_penalty(block, x, block(x, None), None, target=0.9, iterations=30)
    assert abs(radius - 0.97) < 1e-3                                             # the largest |eigenvalue|
    assert abs(float(penalty) - 0.07 ** 2) < 1e-4
    penalty.backward()
    assert float(w.grad) > 0                                                     # shrinking w lowers it
    below, _ = contraction_penalty(block, x, block(x, None), None, target=0.99, iterations=30)
    assert float(below) == 0.0


# ---------------------------------------------------------------- training loop

@pytest.mark.parametrize("model,supervision,extra", [
    ("dune", "supervised", {}), ("flat", "supervised", {}), ("dune", "ssdu", {}),
    ("imunne", "supervised", {"anderson": 2, "max_iter": 3, "noise_augment": 0.1})])
def test_train_loop_runs_dune_flat_ssdu_and_noisy_anderson_imunne(tiny_scan, tmp_path, model, supervision, extra):
    from recon_core.training.train import TrainConfig, train

    kspace, coords, maps, obj = tiny_scan
    path = str(tmp_path / "scan.npz")
    np.savez(path, kspace=kspace.numpy(), coords=coords.numpy(), maps=maps.numpy(), target=obj.numpy(),
             reference=obj.abs().numpy())
    cfg = TrainConfig(model=model, supervision=supervision, channels=4, levels=1 if model == "dune" else 2,
                      blocks=2, window=2, steps=2, validate_every=2, checkpoint_every=2, cg_start_iterations=2,
                      **extra)
    history = train(cfg, [path], [path], str(tmp_path / "run"), progress=False)
    assert history["step"] == [2] and np.isfinite(history["loss"]).all()
    assert history["config"]["supervision"] == supervision
    loaded, meta, _ = load_checkpoint(str(tmp_path / "run" / "model.safetensors"))
    assert meta["kind"] == model and type(loaded).__name__ == model.upper()
    if model == "imunne":                     # the training solver's settings travel with the model
        assert meta["arch"]["anderson"] == 2 and loaded.anderson == 2


@pytest.mark.parametrize("kind", ["dune", "flat"])
def test_dune_and_flat_with_support_are_zero_where_no_coil_sees_and_unchanged_inside(kind, tmp_path):
    """support=True (arch, `rtcine train --support`): the image is the free network's image
    masked to where some coil map is nonzero (FLAT: every state; DUNE: its decoded output);
    a saved model keeps the setting."""
    from recon_core.training.train import TrainConfig

    kspace, coords, maps, _ = disc_scan(16, 3, 2, 7)
    maps = maps.clone()
    maps[:, :3, :] = 0                          # no coil sees the top three rows
    problem = make_problem(kspace, coords, maps)
    torch.manual_seed(0)
    arch = {k: v for k, v in TrainConfig(model=kind, channels=4, levels=1, blocks=2, support=True).arch().items()}
    assert arch["support"] is True
    projected = build_model(kind, **arch).eval()
    free = build_model(kind, **{**arch, "support": False}).eval()
    _perturb(free)                              # trained-like: the untrained residual layers are zero
    projected.load_state_dict(free.state_dict())
    with torch.no_grad():
        out_free, info_free = free(problem)
        out, info = projected(problem)
    assert out_free[:, :3].abs().amax() > 1e-4
    assert out[:, :3].abs().amax() == 0
    if kind == "flat":
        assert all(s[:, :3].abs().amax() == 0 for s in info["states"][1:])
    else:
        assert torch.allclose(out[:, 3:], out_free[:, 3:], atol=1e-6)
    save_checkpoint(str(tmp_path / "m"), projected, kind, arch, {"note": "test"})
    loaded, _, _ = load_checkpoint(str(tmp_path / "m.safetensors"))
    assert loaded.support is True
