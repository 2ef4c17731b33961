"""Training on the streaming schedule: the differentiable replay on a FrameCache emits the
images the streaming reconstructor emits, its loss has gradients, and ``train()`` runs it."""
import types

import numpy as np
import pytest
import torch

from recon_core.config import ReconConfig
from recon_core.networks.problem import FrameCache
from recon_core.networks.streaming import StreamingNetworkRecon
from recon_core.networks.unrolled import build_model
from recon_core.training.checkpoint import load_checkpoint, save_checkpoint
from recon_core.training.stream_schedule import clip_scale, streaming_loss, streaming_outputs
from conftest import disc_scan

ARCH = {"channels": 4, "levels": 2, "unshuffle": 2, "eta": 1.0}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scan():
    """32x32, 4 coils, 7 frames of 9 golden-angle spokes (noise free), a disc growing per frame."""
    return disc_scan(32, 7, 4, 9)


def _perturbed_imunne(seed=1, size=0.05, **arch):
    """A small IMUNNE whose weights are moved off their initialisation (the zero-initialised
    last layer would make the regulariser zero and block the gradients before it)."""
    torch.manual_seed(seed)                  # the initialisation too: the same network in every run
    model = build_model("imunne", **ARCH, **arch)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(size * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


@pytest.mark.parametrize("window,lookahead,updates,frames,arch", [
    (2, 1, 1, range(1, 7), {}), (3, 1, 2, range(0, 7), {}), (3, 0, 1, range(0, 4), {}),
    (3, 2, 1, range(2, 3), {}),              # a clip shorter than the look-ahead: all emitted at flush
    # the pull and the gate toward the previous image act on a window's first frame, the emitted
    # one when lookahead = window - 1 (with less look-ahead it was emitted before: no direct effect)
    (2, 1, 2, range(0, 7), {"memory": 0.5}), (3, 2, 1, range(0, 7), {"memory": 0.5}),
    (2, 1, 2, range(0, 7), {"recurrence": True}), (3, 2, 1, range(0, 7), {"recurrence": True}),
    # the composite input: the stream's per-coil running gridding is the replay's combined one
    (2, 1, 2, range(0, 7), {"composite": 0.25}), (3, 1, 1, range(1, 7), {"composite": 0.5}),
    (2, 1, 2, range(0, 7), {"composite": [0.5, 0.125]}),
    # the map the stream iterates projects onto the maps' support: so does the replay
    (2, 1, 2, range(0, 7), {"support": True})])
def test_replay_emits_what_the_stream_emits(scan, window, lookahead, updates, frames, arch):
    kspace, coords, maps, _ = scan
    if arch.get("support"):                  # maps cropped to a disc, as ESPIRiT's are to the body
        yy, xx = torch.meshgrid(torch.arange(32) - 16, torch.arange(32) - 16, indexing="ij")
        maps = maps * ((yy ** 2 + xx ** 2) <= 13 ** 2)
    model = _perturbed_imunne(**arch).eval()
    cfg = ReconConfig(recon="imunne", window=window, lookahead=lookahead, max_iterations=updates,
                      tolerance=1e-9, warm_start=True)
    stream = StreamingNetworkRecon(model, cfg, "cpu", cg_start_iterations=3)
    emitted = []
    for t in frames:
        frame = types.SimpleNamespace(index=t, kspace=kspace[t].numpy(), coords=coords[t].numpy())
        emitted += stream.push(frame, maps)
    emitted += stream.flush()
    assert [f.index for f, _, _ in emitted] == list(frames)
    assert all(meta["iterations"] == updates for _, _, meta in emitted)

    cache = FrameCache(kspace, coords, maps, cg_iterations=3)
    scale = clip_scale(cache, frames[0])
    assert abs(scale - stream.scale) <= 1e-5 * scale
    with torch.no_grad():
        ours = streaming_outputs(model, cache, frames, window, lookahead, updates) * scale
    theirs = torch.from_numpy(np.stack([image for _, image, _ in emitted]))
    assert ours.shape == theirs.shape == (len(frames), 32, 32)
    err = float((ours - theirs).abs().max() / theirs.abs().max())
    assert err < 1e-4, err
    if arch.get("support"):
        outside = maps.abs().sum(0) == 0
        assert float(theirs[:, outside].abs().max()) == 0 and float(theirs[:, ~outside].abs().mean()) > 0
    # the schedule is not the fixed point: more updates per window give other images
    with torch.no_grad():
        more = streaming_outputs(model, cache, frames, window, lookahead, updates + 3) * scale
    assert float((more - theirs).abs().max() / theirs.abs().max()) > 1e-2
    if "memory" in arch or "recurrence" in arch:   # they act from the first window with a frame before it
        model.block.memory, model.block.gate = 0.0, None
        with torch.no_grad():
            plain = streaming_outputs(model, cache, frames, window, lookahead, updates) * scale
        first = window - lookahead           # the first frame emitted from a window with a predecessor
        assert torch.allclose(plain[:first], theirs[:first], atol=1e-4 * float(theirs.abs().max()))
        assert float((plain[first:] - theirs[first:]).abs().max() / theirs.abs().max()) > 1e-3


def test_streaming_loss_backpropagates_through_the_whole_clip(scan):
    kspace, coords, maps, obj = scan
    model = _perturbed_imunne().train()
    cache = FrameCache(kspace, coords, maps)
    loss, info = streaming_loss(model, cache, slice(0, 5), obj[:5], window=2, lookahead=1, updates=1)
    assert info["x"].shape == (5, 32, 32) and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    # warm start: only the first frame's CG start enters, and the last image depends on it
    # through the chain of all earlier windows (backprop through the whole clip, not per window)
    start = cache.x0.clone().requires_grad_(True)
    cache.x0 = start
    x = streaming_outputs(model, cache, range(0, 5), 2, 1, 1)
    (grad,) = torch.autograd.grad(x[-1].abs().sum(), start)
    assert float(grad[0].abs().sum()) > 0 and float(grad[1:].abs().sum()) == 0


def test_the_ssim_term_is_the_metrics_ssim_and_trains(scan):
    """stream_ssim: the loss grows by w x (1 - SSIM) of the streamed magnitudes, the SSIM the
    metrics report (same window and constants, here with no rescaling: the images are in the
    target's units), and its gradient reaches the network."""
    from recon_core.metrics import ssim, ssim_map

    kspace, coords, maps, obj = scan
    model = _perturbed_imunne().train()
    cache = FrameCache(kspace, coords, maps)
    l1, info = streaming_loss(model, cache, slice(0, 5), obj[:5], window=2, lookahead=1, updates=1, burn_in=1)
    both, _ = streaming_loss(model, cache, slice(0, 5), obj[:5], window=2, lookahead=1, updates=1, burn_in=1,
                             ssim_weight=0.5)
    x, ref = info["x"][1:].abs(), (obj[1:5] / info["scale"]).abs()
    s = ssim_map(x, ref, ref.flatten(1).amax(1)).mean()
    assert float(both - l1) == pytest.approx(0.5 * (1 - float(s)), rel=1e-4)
    assert float(ssim_map(ref, ref, ref.flatten(1).amax(1)).mean()) == pytest.approx(1.0)
    # the metric (least-squares scaled, float64) on an already scaled image: the same value
    a, b = x[0].double().numpy(), ref[0].double().numpy()
    a = a * (a * b).sum() / (a * a).sum()
    assert ssim(a, b) == pytest.approx(float(ssim_map(torch.from_numpy(a)[None], torch.from_numpy(b)[None],
                                                      float(b.max())).mean()), abs=1e-9)
    (both - l1).backward()
    assert any(float(p.grad.abs().sum()) > 0 for p in model.parameters() if p.grad is not None)


def test_early_frames_are_streamed_on_their_own_maps(scan):
    """``early`` (the chain's fallback maps for a scan's first frames): on the scan's own maps
    it changes nothing; on other maps it changes the frames solved on them and, through the
    warm start, those after, and the images the fallback maps gave are what a stream on
    those maps alone emits for those frames."""
    kspace, coords, maps, _ = scan
    model = _perturbed_imunne().eval()
    cache = FrameCache(kspace, coords, maps)
    with torch.no_grad():
        plain = streaming_outputs(model, cache, range(0, 7), 2, 1, 1)
        same = streaming_outputs(model, cache, range(0, 7), 2, 1, 1, early=FrameCache(kspace[:3], coords[:3], maps))
        assert torch.allclose(same, plain)
        other = maps * torch.linspace(0.5, 1.5, 32)[None, None, :]       # other maps: another shading
        early = FrameCache(kspace[:3], coords[:3], other)
        mixed = streaming_outputs(model, cache, range(0, 7), 2, 1, 1, early=early)
        alone = streaming_outputs(model, FrameCache(kspace, coords, other), range(0, 7), 2, 1, 1)
    # frames 0-1 are emitted from windows whose newest frame is < 3: exactly the other maps' images
    assert torch.allclose(mixed[:2], alone[:2], atol=1e-6)
    assert not torch.allclose(mixed[:2], plain[:2], atol=1e-3)
    assert not torch.allclose(mixed[4:], plain[4:], atol=1e-4) and not torch.allclose(mixed[4:], alone[4:], atol=1e-4)


def test_train_with_the_streaming_term(scan, tmp_path):
    from recon_core.training.train import TrainConfig, train

    kspace, coords, maps, obj = scan
    path = str(tmp_path / "scan.npz")
    np.savez(path, kspace=kspace.numpy(), coords=coords.numpy(), maps=maps.numpy(), target=obj.numpy(),
             reference=obj.abs().numpy())
    init = str(tmp_path / "init.safetensors")
    save_checkpoint(init, _perturbed_imunne(), "imunne", ARCH)
    cfg = TrainConfig(model="imunne", **ARCH, max_iter=2, window=2, steps=6, lr=3e-3, validate_every=3,
                      checkpoint_every=1, cg_start_iterations=3, init=init, stream_weight=1.0, stream_clip=7)
    history = train(cfg, [path], [path], str(tmp_path / "run"), progress=False)
    assert history["step"] == [1, 2, 3, 4, 5, 6]
    s = history["stream_loss"]
    assert len(s) == 6 and np.isfinite(s).all() and s[-1] < 0.95 * s[0], s   # the same clip: it learns
    assert [v["step"] for v in history["val"]] == [3, 6]
    assert all(np.isfinite(v["stream_psnr"]) and np.isfinite(v["psnr"]) for v in history["val"])
    loaded, meta, _ = load_checkpoint(str(tmp_path / "run" / "model.safetensors"))
    assert meta["kind"] == "imunne" and meta["training"]["steps"] == 6
    assert "streaming" not in meta                  # still trained for its fixed point: no schedule

    # for the streaming schedule alone (a real-time model): the YAML names the schedule, which
    # the chain checks, and the model's default iteration count is its updates per window
    rt = TrainConfig(model="imunne", **ARCH, window=2, steps=1, checkpoint_every=1, validate_every=1, init=init,
                     stream_weight=1.0, window_weight=0.0, stream_clip=5, stream_updates=2, stream_fallback=3)
    train(rt, [path], [path], str(tmp_path / "rt"), progress=False)
    _, meta, _ = load_checkpoint(str(tmp_path / "rt" / "model.safetensors"))
    assert meta["streaming"] == {"window": 2, "lookahead": 1, "updates": 2} and meta["arch"]["max_iter"] == 2
    assert "first 3 frames on fallback maps" in meta["training"]["loss"]

    with pytest.raises(ValueError, match="noise"):
        train(TrainConfig(model="imunne", **ARCH, steps=1, stream_weight=1.0, noise_augment=0.1),
              [path], [path], str(tmp_path / "noisy"), progress=False)


def test_split_files_lists_only_the_asked_scan_length(tmp_path):
    """A split's prepared scans of one length: 16- and 32-frame files of the same seeds sit
    side by side in --data; benchmarks asking for one length must not get the other."""
    from recon_core.training.data import SCAN_FRAMES, split_file, split_files

    for seed in (5000, 5001):
        for frames in (SCAN_FRAMES, 32):
            (tmp_path / split_file("val", seed, frames)).touch()
    (tmp_path / split_file("train", 1000)).touch()
    (tmp_path / "val_5000.npz").touch()                      # an older split version's file
    names = lambda frames: [p.rsplit("/", 1)[1] for p in split_files(str(tmp_path), "val", frames)]
    assert names(SCAN_FRAMES) == [split_file("val", 5000), split_file("val", 5001)]
    assert names(32) == [split_file("val", 5000, 32), split_file("val", 5001, 32)]
    assert split_files(str(tmp_path / "missing"), "val") == []


def test_training_scans_carry_the_chains_cropped_maps_and_test_scans_espirits_own(tmp_path):
    """Train and val scans are prepared with the maps the chain reconstructs on (ESPIRiT cropped
    to the object, ``ReconConfig.espirit_support``): identical to ESPIRiT's maps wherever kept,
    zero in the air, the body kept, and the target zero wherever the maps are. The held-out test
    split keeps ESPIRiT's own crop."""
    from recon_core.training.data import build_split, load_scan, prepare, split_configs

    cfg = split_configs("train", 1, frames=6)[0]
    cropped = load_scan(build_split(str(tmp_path), "train", 1, frames=6)[0])
    plain = prepare(cfg)
    kept = (np.abs(cropped["maps"]) ** 2).sum(0) > 0
    inside = (np.abs(plain["maps"]) ** 2).sum(0) > 0
    assert np.array_equal(cropped["maps"][:, kept], plain["maps"][:, kept])
    assert (inside & ~kept).sum() > 0.05 * inside.sum()                    # air cut
    ref = np.abs(cropped["reference"])
    body = (ref > 0.05 * ref.max(axis=(1, 2), keepdims=True)).any(0)
    assert kept[body].all()
    assert np.abs(cropped["target"][:, ~kept]).max() == 0
    np.testing.assert_allclose(cropped["target"][:, kept], plain["target"][:, kept], rtol=1e-5, atol=1e-6)
    test = load_scan(build_split(str(tmp_path), "test", 1, frames=6)[0])
    assert np.array_equal(test["maps"], prepare(split_configs("test", 1, frames=6)[0])["maps"])


def test_history_streams_the_frames_before_the_clip_without_gradients(scan):
    """history: the clip's images are those of a stream started at the scan's first frame
    (not at the clip), and only the clip's windows carry gradients."""
    kspace, coords, maps, obj = scan
    model = _perturbed_imunne().train()
    cache = FrameCache(kspace, coords, maps)
    with torch.no_grad():
        whole = streaming_outputs(model, cache, range(0, 7), 2, 1, 1)
        cold = streaming_outputs(model, cache, range(4, 7), 2, 1, 1, scale=clip_scale(cache, 0))
    late = streaming_outputs(model, cache, range(0, 7), 2, 1, 1, history=4)
    assert late.shape == (3, 32, 32) and late.requires_grad
    assert torch.allclose(late.detach(), whole[4:], atol=1e-5 * float(whole.abs().max()))
    assert float((cold - whole[4:]).abs().max() / whole.abs().max()) > 1e-3
    loss, info = streaming_loss(model, cache, slice(4, 7), obj[4:7], 2, 1, 1, history=True)
    assert info["x"].shape == (3, 32, 32) and info["scale"] == pytest.approx(clip_scale(cache, 0))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
