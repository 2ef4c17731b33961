"""Networks on tiny CPU problems: JFB gradients, fixed-point convergence, checkpoints, memory."""
import dataclasses

import pytest
import torch

import torch.nn.functional as F

from recon_core.networks.cunet import (CUNet, _conv3d_as_2d, _depth_to_space, _half, _shuffle, _space_to_depth,
                                       _unshuffle)
from recon_core.networks.problem import make_problem
from recon_core.networks.unrolled import build_model
from recon_core.training.checkpoint import load_checkpoint, save_checkpoint
from conftest import disc_scan

ARCH = {"channels": 4, "levels": 2, "unshuffle": 2, "eta": 0.5}


@pytest.fixture(scope="module")
def tiny_problem():
    """32x32, 4 coils, 4 frames of 9 golden-angle spokes, a disc growing per frame."""
    kspace, coords, maps, obj = disc_scan(32, 4, 4, 9)
    return make_problem(kspace, coords, maps), obj


def test_space_to_depth_is_lossless():
    x = torch.randn(2, 3, 4, 8, 8)
    assert torch.equal(_depth_to_space(_space_to_depth(x, 2), 2), x)


def test_cunet_fast_paths_equal_the_torch_operations():
    """The CU-Net's hand-written pooling, (un)shuffle and temporal taps give what the torch
    operations they replace give, so the shipped weights mean what they were trained as."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 4, 16, 12, generator=g)
    assert torch.equal(_unshuffle(v, 2), F.pixel_unshuffle(v, 2))
    assert torch.equal(_shuffle(_unshuffle(v, 2), 2), v)
    assert torch.allclose(_half(v), F.avg_pool2d(v, 2), atol=1e-6)
    conv = torch.nn.Conv3d(4, 5, (3, 3, 3), padding=1)
    h = torch.randn(2, 3, 4, 8, 8, generator=g)                 # (B, T, C, Y, X)
    expected = conv(h.transpose(1, 2)).transpose(1, 2)            # Conv3d in (B, C, T, Y, X) layout
    with torch.no_grad():
        assert torch.allclose(_conv3d_as_2d(conv, h), expected, atol=1e-5)


def test_cunet_shapes_and_zero_start():
    net = CUNet(channels=4, levels=2, unshuffle=2)
    x = torch.randn(1, 3, 16, 16, dtype=torch.complex64)
    assert net(x).shape == x.shape
    assert net(x).abs().max() == 0          # final layer starts at zero: R is a plain gradient step


def _perturb(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_jfb_gradients_reach_every_regularizer_weight(tiny_problem):
    problem, obj = tiny_problem
    model = build_model("imunne", **ARCH, max_iter=5, tol=1e-6).train()
    _perturb(model)
    x, info = model(problem)
    assert info["iterations"] == 5
    loss = (x - obj / problem.scale).abs().mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_jfb_memory_does_not_grow_with_iterations(tiny_problem):
    """The autograd graph of IMUNNE holds one block, whatever the iteration count;
    Alt-UN's grows with its blocks."""
    problem, _ = tiny_problem

    def saved_tensors(model):
        x, _ = model(problem)
        count, seen, stack = 0, set(), [x.grad_fn]
        while stack:
            fn = stack.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            count += sum(1 for a in dir(fn) if a.startswith("_saved_"))
            stack.extend(f for f, _ in fn.next_functions)
        return count

    few = saved_tensors(build_model("imunne", **ARCH, max_iter=2, tol=0).train())
    many = saved_tensors(build_model("imunne", **ARCH, max_iter=20, tol=0).train())
    unrolled = saved_tensors(build_model("altun", **ARCH, blocks=4).train())
    assert few == many
    assert unrolled > 3 * few


@pytest.mark.parametrize("which", ["initialised", "shipped"])
def test_fixed_point_converges(tiny_problem, which):
    """The relative change of x_{k+1} = R(x_k) shrinks: for the initialised model (U = 0, a
    normalised gradient step) and for the trained model shipped with the package (trained
    with the fixed-point residual term so that it is contractive)."""
    problem, _ = tiny_problem
    if which == "shipped":
        from recon_core.networks.streaming import DEFAULT_MODEL, load_model
        import os
        if not os.path.exists(DEFAULT_MODEL):
            pytest.skip("no shipped model")
        model, _ = load_model("", "cpu")
    else:
        model = build_model("imunne", **ARCH).eval()
    model.max_iter, model.tol = 60, 0
    with torch.no_grad():
        _, info = model(problem)
    changes = info["changes"]
    # a non-contractive map (like our first JFB model) grows instead: 2% -> 3.2% over 30 iterations
    assert changes[-1] < 0.2 * changes[0]
    assert changes[-1] < changes[len(changes) // 2]


def test_checkpoint_reproduces_outputs_bit_for_bit(tiny_problem, tmp_path):
    problem, _ = tiny_problem
    model = build_model("imunne", **ARCH, max_iter=4, tol=0).eval()
    _perturb(model, seed=3)
    arch = dict(ARCH, max_iter=4, tol=0)
    save_checkpoint(str(tmp_path / "m"), model, "imunne", arch, {"note": "test"})
    loaded, meta, _ = load_checkpoint(str(tmp_path / "m.safetensors"))
    assert meta["kind"] == "imunne" and meta["training"]["note"] == "test"
    with torch.no_grad():
        a, _ = model(problem)
        b, _ = loaded(problem)
    assert torch.equal(a, b)


def test_corrupt_or_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nothing.safetensors"))
    (tmp_path / "bad.safetensors").write_bytes(b"not a model")
    (tmp_path / "bad.yaml").write_text("kind: imunne\narch: {channels: 4}\n")
    with pytest.raises(ValueError, match="cannot be loaded"):
        load_checkpoint(str(tmp_path / "bad.safetensors"))


def test_noise_input_network_sees_the_noise_level_and_starts_as_its_initialisation(tiny_problem):
    """A network with the noise channel, initialised from one without it (as ``rtcine train
    --noise-input --init`` does), computes the same images; once its noise weights are
    non-zero, a noisier scan (smaller intensity scale) changes what it does."""
    from recon_core.training.train import _fit_channels
    problem, _ = tiny_problem
    torch.manual_seed(0)
    plain = build_model("altun", blocks=2, **ARCH)
    torch.nn.init.normal_(plain.block.net.final.weight, std=0.05)
    noisy = build_model("altun", blocks=2, noise_input=True, **ARCH)
    own = noisy.state_dict()
    noisy.load_state_dict({k: _fit_channels(v, own[k]) for k, v in plain.state_dict().items()})
    with torch.no_grad():
        a, _ = plain(problem)
        b, _ = noisy(problem)
        assert torch.allclose(a, b, atol=1e-6)
        noisy.block.net.enc[0].spatial.weight[:, -1] = 0.3
        low, _ = noisy(problem)
        level, problem.noise = problem.noise, problem.noise * 10.0
        high, _ = noisy(problem)
        problem.noise = level
    assert (low - high).abs().max() > 1e-3
    with pytest.raises(ValueError, match="noise level"):
        noisy.block.net(problem.x0[None])


def test_imunne_anchored_at_its_start_iterates_the_blended_map_and_keeps_it_in_its_file(tmp_path):
    """start_weight w: the iterated map is (1 - w) R(x) + w x0, and a saved model keeps w."""
    from recon_core.networks.problem import make_problem
    from recon_core.networks.unrolled import build_model
    from recon_core.training.checkpoint import load_checkpoint, save_checkpoint
    from conftest import disc_scan

    kspace, coords, maps, _ = disc_scan(16, 3, 2, 7)
    problem = make_problem(kspace, coords, maps)
    torch.manual_seed(0)
    arch = {"channels": 4, "levels": 1, "unshuffle": 2, "eta": 0.5, "max_iter": 3, "start_weight": 0.25}
    model = build_model("imunne", **arch).eval()
    x = torch.randn_like(problem.x0)
    with torch.no_grad():
        assert torch.allclose(model.update(x, problem), 0.75 * model.block(x, problem) + 0.25 * problem.x0)
        expected = problem.x0
        for _ in range(3):
            expected = model.update(expected, problem)
        out, _ = model(problem, tol=0.0)
    assert torch.allclose(out, expected, atol=1e-6)
    save_checkpoint(str(tmp_path / "m"), model, "imunne", arch, {"note": "test"})
    loaded, meta, _ = load_checkpoint(str(tmp_path / "m.safetensors"))
    assert loaded.start_weight == 0.25
    with pytest.raises(ValueError, match="start_weight"):
        build_model("imunne", **{**arch, "start_weight": 1.0})


def test_imunne_projected_onto_the_maps_support_is_zero_where_no_coil_sees_and_unchanged_inside(tmp_path):
    """support=True: every iterate is R(x) masked to where some coil map is nonzero; a saved
    model keeps the setting."""
    from recon_core.networks.problem import make_problem
    from recon_core.networks.unrolled import build_model
    from recon_core.training.checkpoint import load_checkpoint, save_checkpoint
    from conftest import disc_scan

    kspace, coords, maps, _ = disc_scan(16, 3, 2, 7)
    maps = maps.clone()
    maps[:, :3, :] = 0                          # no coil sees the top three rows
    problem = make_problem(kspace, coords, maps)
    assert problem.support.shape == (16, 16) and not problem.support[:3].any() and problem.support[3:].all()
    torch.manual_seed(0)
    arch = {"channels": 4, "levels": 1, "unshuffle": 2, "eta": 0.5, "max_iter": 3}
    free = build_model("imunne", **arch).eval()
    projected = build_model("imunne", **arch, support=True).eval()
    projected.load_state_dict(free.state_dict())
    x = torch.randn_like(problem.x0)
    with torch.no_grad():
        r = free.update(x, problem)
        p = projected.update(x, problem)
        out, _ = projected(problem, tol=0.0)
    assert r[:, :3].abs().amax() > 1e-3          # the free denoiser leaves content where nothing was measured
    assert p[:, :3].abs().amax() == 0 and torch.equal(p[:, 3:], r[:, 3:])
    assert out[:, :3].abs().amax() == 0
    save_checkpoint(str(tmp_path / "m"), projected, "imunne", {**arch, "support": True}, {"note": "test"})
    loaded, _, _ = load_checkpoint(str(tmp_path / "m.safetensors"))
    assert loaded.support is True


def test_imunne_smoothness_prior_is_the_gradient_of_its_energy_and_damps_the_free_directions(tmp_path):
    """tikhonov=(mu_s, mu_t): the step adds the gradient of mu_s/2 |D_s x|^2 + mu_t/2 |D_t x|^2
    (checked by autograd), damps a pixel-scale checkerboard by eta 8 mu_s per step, and a saved
    model keeps the setting."""
    from recon_core.compressed_sensing import spatial_grad, temporal_diff
    from recon_core.networks.problem import make_problem
    from recon_core.networks.unrolled import build_model
    from recon_core.training.checkpoint import load_checkpoint, save_checkpoint
    from conftest import disc_scan

    kspace, coords, maps, _ = disc_scan(16, 3, 3, 7)
    problem = make_problem(kspace, coords, maps)
    arch = {"channels": 4, "levels": 1, "unshuffle": 2, "eta": 0.5, "max_iter": 3, "tikhonov": [0.02, 0.1]}
    torch.manual_seed(0)
    model = build_model("imunne", **arch)
    x = torch.randn_like(problem.x0).requires_grad_(True)
    energy = 0.02 / 2 * spatial_grad(x).abs().pow(2).sum() + 0.1 / 2 * temporal_diff(x).abs().pow(2).sum()
    (auto,) = torch.autograd.grad(energy, x)
    with torch.no_grad():
        prior = problem.gradient(x, model.block.tikhonov) - problem.gradient(x)
    assert torch.allclose(prior, auto, atol=1e-5)
    with torch.no_grad():                        # zero denoiser, no data: only the prior acts
        for p in model.block.net.parameters():
            p.zero_()
        empty = make_problem(kspace * 0, coords, maps)
        yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
        checker = ((-1.0) ** (yy + xx))[None].expand(3, 16, 16).to(torch.complex64).contiguous()
        plain = build_model("imunne", **{**arch, "tikhonov": [0.0, 0.0]})
        plain.load_state_dict(model.state_dict())
        interior = (slice(None), slice(2, -2), slice(2, -2))
        damped = (model.update(checker, empty) - empty.x0)[interior].abs().mean()
        kept = (plain.update(checker, empty) - empty.x0)[interior].abs().mean()
    assert kept > 0.5 and kept - damped == pytest.approx(0.5 * 8 * 0.02, abs=0.01)   # eta 8 mu_s: D_s^H D_s = 8 there
    save_checkpoint(str(tmp_path / "m"), model, "imunne", arch, {"note": "test"})
    loaded, _, _ = load_checkpoint(str(tmp_path / "m.safetensors"))
    assert loaded.block.tikhonov == (0.02, 0.1)
    with pytest.raises(ValueError, match="tikhonov"):
        build_model("imunne", **{**arch, "tikhonov": [-1.0, 0.0]})


def test_memory_pulls_the_first_frame_toward_the_streams_previous_image(tmp_path):
    """arch memory=mu_m: with a ``previous`` image the step adds the gradient of mu_m/2 |x_0 -
    previous|^2 (autograd) to the first frame only; without one (offline windows) nothing;
    a saved model keeps the weight, a negative one is refused."""
    import dataclasses

    from recon_core.networks.problem import make_problem
    from recon_core.networks.unrolled import build_model
    from recon_core.training.checkpoint import load_checkpoint, save_checkpoint
    from conftest import disc_scan

    kspace, coords, maps, _ = disc_scan(16, 3, 3, 7)
    problem = make_problem(kspace, coords, maps)
    arch = {"channels": 4, "levels": 1, "unshuffle": 2, "eta": 0.5, "max_iter": 3, "memory": 0.4}
    model = build_model("imunne", **arch)
    previous = torch.randn_like(problem.x0[0])
    streamed = dataclasses.replace(problem, previous=previous)
    x = torch.randn_like(problem.x0).requires_grad_(True)
    (auto,) = torch.autograd.grad(0.4 / 2 * (x[0] - previous).abs().pow(2).sum(), x)
    with torch.no_grad():
        pull = streamed.gradient(x, memory=model.block.memory) - streamed.gradient(x)
        assert torch.equal(problem.gradient(x, memory=0.4), problem.gradient(x))
    assert torch.allclose(pull, auto, atol=1e-5) and pull[1:].abs().max() == 0
    save_checkpoint(str(tmp_path / "m"), model, "imunne", arch, {"note": "test"})
    loaded, _, _ = load_checkpoint(str(tmp_path / "m.safetensors"))
    assert loaded.block.memory == 0.4
    with pytest.raises(ValueError, match="memory"):
        build_model("imunne", **{**arch, "memory": -0.1})


def test_recurrence_gate_blends_only_the_first_frame_toward_the_previous_image(tmp_path):
    """arch recurrence: with a ``previous`` image the update ends by moving the window's first
    frame part of the way toward it, pixel by pixel (g in (0, 1): on the segment between them),
    the other frames untouched; without one (offline windows) the update is that of the same
    network without the gate. A fresh gate pulls by sigmoid(GATE_BIAS); a shipped model
    initialises the network but not the gate, whose tensors then train at lr x new_lr_scale."""
    import dataclasses
    import math

    from recon_core.networks.problem import make_problem
    from recon_core.networks.recurrence import GATE_BIAS
    from recon_core.networks.unrolled import build_model
    from recon_core.training.checkpoint import load_checkpoint, save_checkpoint
    from recon_core.training.train import init_tensors, make_optimizer
    from conftest import disc_scan

    kspace, coords, maps, _ = disc_scan(16, 3, 3, 7)
    problem = make_problem(kspace, coords, maps)
    arch = {"channels": 4, "levels": 1, "unshuffle": 2, "eta": 0.5, "max_iter": 3}
    plain = build_model("imunne", **arch)
    gated = build_model("imunne", **arch, recurrence=True)
    gated.load_state_dict(init_tensors(plain.state_dict(), gated.state_dict()), strict=False)
    previous = problem.x0[0] + 0.3 * torch.randn_like(problem.x0[0])
    streamed = dataclasses.replace(problem, previous=previous)
    x = problem.x0
    with torch.no_grad():
        base, fresh = plain.update(x, streamed), gated.update(x, streamed)
        assert torch.equal(gated.update(x, problem), plain.update(x, problem))
        assert torch.equal(fresh[1:], base[1:])
        assert torch.allclose(fresh[0], base[0] + (previous - base[0]) / (1 + math.exp(-GATE_BIAS)), atol=1e-6)
        for p in gated.block.gate.parameters():              # a gate that varies from pixel to pixel
            p.add_(0.05 * torch.randn_like(p))
        out = gated.update(x, streamed)[0]
        g = ((out - base[0]) / (previous - base[0])).real
        on_segment = ((out - base[0]).abs() + (previous - out).abs() - (previous - base[0]).abs()).abs()
    assert float(on_segment.max()) < 1e-4 and 0 < float(g.min()) < float(g.max()) < 1 and float(g.std()) > 1e-3
    save_checkpoint(str(tmp_path / "m"), gated, "imunne", {**arch, "recurrence": True}, {"note": "test"})
    loaded, _, _ = load_checkpoint(str(tmp_path / "m.safetensors"))
    with torch.no_grad():
        assert torch.equal(loaded.update(x, streamed), gated.update(x, streamed))
    new = set(gated.state_dict()) - set(init_tensors(plain.state_dict(), gated.state_dict()))
    assert new and all(n.startswith("block.gate.") for n in new)
    opt = make_optimizer(gated, 1e-4, new, 10.0)
    rates = {id(p): group["lr"] for group in opt.param_groups for p in group["params"]}
    assert all(rates[id(p)] == pytest.approx(1e-3 if n in new else 1e-4) for n, p in gated.named_parameters())


def test_the_prior_scales_with_the_datas_noise_level(tmp_path):
    """arch tikhonov_noise=p: the update at noise level s is the plain update with the prior's
    weights times (s / TIKHONOV_NOISE_REF)^p, the factor clamped to [1/4, 8]; unchanged at the
    reference noise; kept by a saved model."""
    import dataclasses

    from recon_core.networks.problem import TIKHONOV_NOISE_REF, make_problem, noise_scaled_prior
    from recon_core.networks.unrolled import build_model
    from recon_core.training.checkpoint import load_checkpoint, save_checkpoint
    from conftest import disc_scan

    kspace, coords, maps, _ = disc_scan(16, 3, 3, 7)
    problem = make_problem(kspace, coords, maps)
    arch = {"channels": 4, "levels": 1, "unshuffle": 2, "eta": 0.5, "max_iter": 3, "tikhonov": [0.02, 0.1]}
    scaled = build_model("imunne", **arch, tikhonov_noise=1.0)
    fixed = build_model("imunne", **{**arch, "tikhonov": [0.06, 0.3]})
    fixed.load_state_dict(scaled.state_dict())
    x = torch.randn_like(problem.x0)
    noisy = dataclasses.replace(problem, noise=3 * TIKHONOV_NOISE_REF)
    with torch.no_grad():
        assert torch.allclose(scaled.block(x, noisy), fixed.block(x, noisy), atol=1e-6)
        at_ref = dataclasses.replace(problem, noise=TIKHONOV_NOISE_REF)
        plain = build_model("imunne", **arch)
        plain.load_state_dict(scaled.state_dict())
        assert torch.allclose(scaled.block(x, at_ref), plain.block(x, at_ref), atol=1e-6)
    assert noise_scaled_prior((0.02, 0.1), 100 * TIKHONOV_NOISE_REF, 1.0) == pytest.approx((0.16, 0.8))
    assert noise_scaled_prior((0.02, 0.1), TIKHONOV_NOISE_REF / 100, 1.0) == pytest.approx((0.005, 0.025))
    save_checkpoint(str(tmp_path / "m"), scaled, "imunne", {**arch, "tikhonov_noise": 1.0}, {"note": "test"})
    loaded, _, _ = load_checkpoint(str(tmp_path / "m.safetensors"))
    assert loaded.block.tikhonov_noise == 1.0


@pytest.mark.parametrize("kind", ["dune", "flat"])
def test_dune_and_flat_step_along_the_same_prior(kind):
    """``arch: tikhonov`` reaches the data term DUNE and FLAT step along; an invalid one is refused."""
    from recon_core.networks.unrolled import build_model

    arch = {"channels": 4, "levels": 1, "unshuffle": 2, "tikhonov": [0.005, 0.1]}
    model = build_model(kind, **arch)
    assert (model.velocity.tikhonov if kind == "flat" else model.tikhonov) == (0.005, 0.1)
    with pytest.raises(ValueError, match="tikhonov"):
        build_model(kind, **{**arch, "tikhonov": [0.1]})


def test_a_wider_network_starts_as_the_narrow_one_and_its_new_channels_learn():
    """``rtcine train --finetune M --channels W``: every tensor of the narrow network embedded
    in the wider one (transposed convolutions included) gives the same update, and one
    gradient step reaches the new channels (they are not dead)."""
    from recon_core.training.train import NewElements, initialise, make_optimizer

    kspace, coords, maps, _ = disc_scan(16, 3, 3, 7)
    problem = make_problem(kspace, coords, maps)
    arch = {"levels": 2, "unshuffle": 2, "eta": 0.5, "max_iter": 2, "noise_input": True, "composite": 0.25}
    torch.manual_seed(0)
    narrow = build_model("imunne", channels=4, **arch)
    for p in narrow.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    wide = build_model("imunne", channels=6, **arch)
    grown = initialise(wide, narrow.state_dict())
    assert "block.net.up.0.weight" in grown and "block.net.enc.0.spatial.weight" in grown
    shown = dataclasses.replace(problem, composite=torch.randn_like(problem.x0[0]))
    x = problem.x0
    with torch.no_grad():
        assert torch.allclose(wide.update(x, shown), narrow.update(x, shown), atol=1e-6)
    (wide.update(x, shown).abs() ** 2).sum().backward()
    assert float(wide.block.net.final.weight.grad[:, 4:].abs().max()) > 0      # from the new channels
    assert float(wide.block.net.enc[1].spatial.weight.grad[:, 4:].abs().max()) > 0

    # the new elements step 10 x as far as Adam moves the old ones (lr x new_lr_scale)
    final = wide.block.net.final.weight
    before = final.detach().clone()
    opt = make_optimizer(wide, 1e-3, {n for n, m in grown.items() if m is None})
    NewElements(wide, grown, 10.0).step(opt)
    moved = (final.detach() - before).abs()
    assert torch.allclose(moved[:, 4:].max(), torch.tensor(1e-2), rtol=0.01)   # Adam's first step: lr x sign
    assert torch.allclose(moved[:, :4].max(), torch.tensor(1e-3), rtol=0.01)


def test_composite_input_starts_as_the_network_without_it_and_then_matters(tmp_path):
    """arch composite: a network initialised from one without the input computes the same
    function (the input's own convolution starts at zero), whatever composite it is shown; once
    they are not zero, the composite changes the update; offline (no composite) it is shown
    the window's mean. The rate is kept by the checkpoint and must be in (0, 1]."""
    import dataclasses

    from recon_core.training.train import init_tensors, initialise

    kspace, coords, maps, _ = disc_scan(16, 3, 3, 7)
    problem = make_problem(kspace, coords, maps)
    arch = {"channels": 4, "levels": 1, "unshuffle": 2, "eta": 0.5, "max_iter": 3, "noise_input": True}
    plain = build_model("imunne", **arch)
    for p in plain.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    with_input = build_model("imunne", **arch, composite=0.25)
    missing = with_input.load_state_dict(init_tensors(plain.state_dict(), with_input.state_dict()), strict=False)
    assert missing.missing_keys == ["block.net.composite_in.weight"]      # trains at lr x new_lr_scale
    streamed = dataclasses.replace(problem, composite=torch.randn_like(problem.x0[0]))
    x = problem.x0
    with torch.no_grad():
        assert torch.equal(with_input.update(x, streamed), plain.update(x, streamed))
        with_input.block.net.composite_in.weight.normal_(0, 0.05)
        shown = with_input.update(x, streamed)
        block = with_input.block
        offline, mean = block.regularizer(x, problem.noise), block.regularizer(x, problem.noise, x.mean(0))
        assert float((shown - plain.update(x, streamed)).abs().max()) > 1e-3
    assert torch.equal(offline, mean)
    save_checkpoint(str(tmp_path / "m"), with_input, "imunne", {**arch, "composite": 0.25}, {"note": "test"})
    loaded, _, _ = load_checkpoint(str(tmp_path / "m.safetensors"))
    assert loaded.block.composite == (0.25,)
    with pytest.raises(ValueError, match="composite"):
        build_model("imunne", **{**arch, "composite": 1.5})

    # one more rate (a slow memory): its channels start at zero, so the network computes the
    # same function as the one-rate network it is initialised from, and they train as new
    two = build_model("imunne", **arch, composite=[0.25, 0.0625])
    grown = initialise(two, with_input.state_dict())
    assert list(grown) == ["block.net.composite_in.weight"]         # its new channels train at lr x new_lr_scale
    assert float(grown["block.net.composite_in.weight"].sum()) == two.block.net.composite_in.weight[:, 8:].numel()
    slow = torch.randn_like(problem.x0[0])
    both = dataclasses.replace(problem, composite=torch.stack([streamed.composite, slow]))
    with torch.no_grad():
        assert torch.equal(two.update(x, both), shown)
        two.block.net.composite_in.weight.normal_(0, 0.05)
        assert float((two.update(x, both) - shown).abs().max()) > 1e-3
        with pytest.raises(ValueError, match="takes 2"):
            two.update(x, streamed)
    save_checkpoint(str(tmp_path / "m2"), two, "imunne", {**arch, "composite": [0.25, 0.0625]}, {"note": "test"})
    assert load_checkpoint(str(tmp_path / "m2.safetensors"))[0].block.composite == (0.25, 0.0625)


def test_the_composite_averages_the_stream_where_nothing_moves():
    """networks.composite: on a static object seen through noisy golden-angle frames, the
    running gridding after 20 frames is much closer to the object than one frame's adjoint
    (streaks and noise average out), the more so the slower its rate, and a stream's per-coil
    blends combined with the maps are the training schedule's blends of the combined frames."""
    from recon_core.frame_prep import combine, prepare_frame
    from recon_core.metrics import psnr
    from recon_core.networks.composite import Composite, composite_sequence
    from recon_core.networks.problem import FrameCache
    from recon_core.reconstructors import make_operator

    kspace, coords, maps, obj = disc_scan(32, 20, 4, 9)
    static = obj[:1].expand(20, -1, -1)
    op = make_operator(coords, maps, toeplitz=False)
    clean = (op.forward(static) / op.sqrt_w[:, None, :]).reshape(kspace.shape)
    g = torch.Generator().manual_seed(3)
    noisy = clean + 0.05 * float(clean.abs().max()) * torch.randn(clean.shape, generator=g, dtype=torch.complex64)
    cache = FrameCache(noisy, coords, maps)
    seq = composite_sequence(cache.rhs, [0.5, 0.125])          # (T, K, Y, X): a fast and a slow memory
    ref = static[0].numpy()
    assert psnr(seq[-1, 1].numpy(), ref) > psnr(cache.rhs[0].numpy(), ref) + 6
    assert psnr(seq[-1, 1].numpy(), ref) > psnr(seq[-1, 0].numpy(), ref) + 2   # nothing moves: slow is better
    per_coil = Composite([0.5, 0.125])          # per-coil F^H w y of each frame, as the stream prepares them
    coil_images = torch.stack([prepare_frame(noisy[t], coords[t].reshape(9, 64, 2), (32, 32)).coil_images
                               for t in range(20)])
    for c in coil_images:
        per_coil.add(c)
    assert torch.allclose(per_coil.image(maps), seq[-1], atol=1e-4 * float(seq[-1].abs().max()))
    assert torch.allclose(combine(coil_images[0], maps), cache.rhs[0], atol=1e-4 * float(cache.rhs[0].abs().max()))
