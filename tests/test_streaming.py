"""Streaming network reconstruction: windows, warm start, deadlines, overload."""
import numpy as np
import pytest
import torch

from gadgets.images import image_frame
from gadgets.replay import replay
from recon_core.config import ReconConfig
from recon_core.networks.unrolled import build_model
from recon_core.training.checkpoint import save_checkpoint

ARCH = {"channels": 4, "levels": 2, "unshuffle": 2, "eta": 1.0, "max_iter": 6, "tol": 1e-3}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A small IMUNNE with perturbed (untrained) weights: fast, and not a no-op."""
    model = build_model("imunne", **ARCH)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.block.net.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    path = str(tmp_path_factory.mktemp("model") / "tiny")
    save_checkpoint(path, model, "imunne", ARCH)
    return path + ".safetensors"


def _cfg(model, **kw):
    base = dict(recon="imunne", model=model, wait_for_maps=True, calibration_frames=8, window=4, lookahead=1,
                max_iterations=6, tolerance=1e-3)
    base.update(kw)
    return ReconConfig(**base)


def test_one_image_per_frame_in_order_with_iterations(small_file, tiny_model):
    s = replay(small_file, _cfg(tiny_model))
    images = s["images_list"]
    assert s["frames"] == 16 and len(images) == 16
    assert [i.getHead().image_index for i in images] == list(range(1, 17))
    for img in images:
        assert img.meta["rtcine_recon"] == "imunne"
        assert 1 <= int(img.meta["rtcine_iterations"]) <= 6
        assert float(img.meta["rtcine_latency_ms"]) >= 0


def test_streaming_at_scanner_pace_equals_offline(small_file, tiny_model):
    """Same model, no deadline, no overload policy at work: a paced, threaded replay gives
    the offline images."""
    cfg = _cfg(tiny_model, queue_size=100000)
    offline = replay(small_file, cfg)["images_list"]
    paced = replay(small_file, cfg, realtime=True, speed=8.0)["images_list"]
    assert len(offline) == len(paced) == 16
    for a, b in zip(offline, paced):
        np.testing.assert_allclose(image_frame(a), image_frame(b), rtol=0, atol=1e-5 * np.abs(image_frame(a)).max())


def test_tiny_deadline_still_gives_every_frame(small_file, tiny_model):
    # no frame held for the first coil maps (those are exempt from deadlines); paced (an
    # unpaced replay has no deadline: no scanner to keep up with)
    s = replay(small_file, _cfg(tiny_model, deadline_ms=0.001, wait_for_maps=False, coil_maps="lowres"),
               realtime=True, speed=8.0)
    images = s["images_list"]
    assert len(images) == 16
    assert [i.getHead().image_index for i in images] == list(range(1, 17))
    assert all(int(i.meta["rtcine_iterations"]) == 1 for i in images)


def test_warm_start_beats_cold_start_at_the_same_iteration_budget(small_file):
    """The shipped model, two updates per window: starting each window from the previous
    solution (the new frame from its predecessor's estimate) gives a better image than
    starting every window from CG-SENSE (measured +0.9 dB on this scan)."""
    from recon_core.evaluation import score
    from recon_core.mrd import read_images
    from recon_core.simulate import REFERENCE_GROUP

    reference = np.stack([image_frame(i) for i in read_images(small_file, REFERENCE_GROUP)])
    psnr = {}
    for warm in (True, False):
        s = replay(small_file, _cfg("", max_iterations=2, tolerance=1e-6, warm_start=warm))
        assert s["iterations_mean"] == 2
        images = np.stack([image_frame(i) for i in s["images_list"]])
        psnr[warm] = score(images, reference, roi=True)["mean"]["psnr"]
    assert psnr[True] > psnr[False] + 0.4, psnr


def test_flat_warm_start_takes_half_the_steps_and_gains(small_file):
    """The shipped FLAT, 2-frame windows with 1 frame of look-ahead: entering the flow
    half-way between each frame's CG-SENSE start and the previous estimate takes 2 of its 4
    steps per window and gives a better image than 4 steps from CG-SENSE in every window
    (+0.43 dB on this scan; +1.03 dB over the 5 shifted-suite
    val files)."""
    from recon_core.evaluation import score
    from recon_core.mrd import read_images
    from recon_core.simulate import REFERENCE_GROUP

    reference = np.stack([image_frame(i) for i in read_images(small_file, REFERENCE_GROUP)])
    psnr, steps = {}, {}
    for warm in (True, False):
        s = replay(small_file, _cfg("", recon="flat", window=2, lookahead=1, warm_start=warm))
        images = np.stack([image_frame(i) for i in s["images_list"]])
        assert len(images) == 16 and not s.get("fallback"), s.get("fallback")
        psnr[warm] = score(images, reference, roi=True)["mean"]["psnr"]
        steps[warm] = s["iterations_mean"]
    assert steps[False] == 4 and steps[True] < 2.2, steps
    assert psnr[True] > psnr[False] + 0.2, psnr


def test_overload_skip_accounts_for_every_frame(small_file):
    """Replayed 1000x faster than the scanner: frames pile up, the oldest are skipped,
    each logged and counted; emitted + skipped = frames; the input queue stays bounded."""
    cfg = ReconConfig(recon="cgsense", coil_maps="lowres", overload="skip", queue_size=2)
    s = replay(small_file, cfg, realtime=True, speed=1000.0)
    emitted = {int(i.meta["rtcine_frame"]) for i in s["images_list"]}
    assert s["frames"] == 16 and s["skipped_frames"] > 0
    assert len(emitted) + s["skipped_frames"] == 16
    assert sorted(set(range(16)) - emitted) == sorted(s["skipped"])
    assert s["input_queue_high_water"] <= s["input_queue_bound"]


def test_overload_reduce_cuts_cg_iterations(small_file):
    cfg = ReconConfig(recon="cgsense", coil_maps="lowres", overload="reduce", queue_size=2, cg_iterations=8)
    s = replay(small_file, cfg, realtime=True, speed=1000.0)
    assert len(s["images_list"]) == 16 and s["reduced_frames"] > 0
    assert any(i.meta["rtcine_iterations"] == "2" for i in s["images_list"])


def test_overload_reduce_catches_up_with_gridding_images(small_file, monkeypatch):
    """Far behind (1000x the scanner's pace, queue_size 1, no time floor: stale from 1 frame behind), the
    chain gives the stale frames their gridding image (no solve) instead of staying behind:
    still one image per frame, in order, the stale ones saying so in their meta."""
    monkeypatch.setattr("gadgets.recon.CATCH_UP_S", 0.0)
    monkeypatch.setattr("gadgets.recon.CATCH_UP_QUEUES", 1)    # stale from 1 frame behind: on any CPU
    cfg = ReconConfig.from_preset("cgsense", coil_maps="lowres", overload="reduce", queue_size=1)
    s = replay(small_file, cfg, realtime=True, speed=1000.0)
    images = s["images_list"]
    assert [i.getHead().image_index for i in images] == list(range(1, 17))
    stale = [i for i in images if i.meta["rtcine_recon"] == "gridding"]
    assert stale and all(i.meta["rtcine_overload"] == "catch-up" for i in stale)
    assert s["reduced_frames"] >= len(stale)


def test_stream_clock_sees_the_backlog_of_a_late_start():
    """Spokes stamped 3 ms apart that waited in a socket while the process started (read in a
    burst 2 s after ``start``, each already waiting) arrived at ``start`` + their stamps'
    offsets; the same spokes from a slow sender (each read at the live edge) arrived when
    read; never later than read; a stamp that goes back re-anchors."""
    from types import SimpleNamespace

    from gadgets.feeder import ARRIVAL, stream_clock

    def spokes(n=100):
        return [SimpleNamespace(acquisition_time_stamp=1000 + 6 * k) for k in range(n)]   # 0.5 ms ticks

    now = [12.0]
    late = list(stream_clock(spokes(), 5e-4, start=10.0, waiting=lambda: True, clock=lambda: now[0]))
    assert [getattr(a, ARRIVAL) for a in late] == pytest.approx([10.0 + 3e-3 * k for k in range(100)])

    def slow():                        # 10 ms apart, nothing ever waiting: the sender is slow, not us
        for k, item in enumerate(spokes()):
            now[0] = 20.0 + 0.01 * k
            yield item
    arrivals = [getattr(a, ARRIVAL) for a in stream_clock(slow(), 5e-4, waiting=lambda: False, clock=lambda: now[0])]
    assert arrivals == pytest.approx([20.0 + 0.01 * k for k in range(100)])

    def burst_then_back():             # a backlog, then a stamp from before (a new clock)
        for k, item in enumerate(spokes(3) + [SimpleNamespace(acquisition_time_stamp=10)]):
            now[0] = 30.0 + 1e-4 * k
            yield item
    out = [getattr(a, ARRIVAL) for a in stream_clock(burst_then_back(), 5e-4, start=29.0, waiting=lambda: True,
                                                     clock=lambda: now[0])]
    assert out[:3] == pytest.approx([29.0, 29.003, 29.006]) and out[3] == pytest.approx(30.0003)


@pytest.mark.parametrize("kind", ["altun", "dune", "flat"])
def test_unrolled_networks_stream_one_image_per_frame(small_file, tmp_path, kind):
    """``--recon altun|dune|flat`` streams like imunne (each window from its CG-SENSE start)."""
    arch = {"channels": 4, "levels": 2, "unshuffle": 2, "eta": 1.0}
    arch.update({"altun": {"blocks": 2}, "dune": {"iterations": 2}, "flat": {"steps": 2}}[kind])
    path = str(tmp_path / kind)
    save_checkpoint(path, build_model(kind, **arch), kind, arch)
    s = replay(small_file, _cfg(path + ".safetensors", recon=kind))
    images = s["images_list"]
    assert [i.getHead().image_index for i in images] == list(range(1, 17))
    assert all(i.meta["rtcine_recon"] == kind and "rtcine_fallback" not in i.meta.keys() for i in images)


def test_model_of_another_kind_falls_back_to_cgsense_and_says_why(small_file, tiny_model):
    s = replay(small_file, _cfg(tiny_model, recon="dune"))
    images = s["images_list"]
    assert len(images) == 16 and images[0].meta["rtcine_recon"] == "cgsense"
    assert "'imunne' network, not 'dune'" in s["fallback"]


@pytest.mark.parametrize("recon", ["gridding", "cgsense", "imunne"])
def test_prepared_on_a_thread_equals_all_on_one_thread(small_file, tiny_model, recon):
    """The chain's preparation thread (NUFFTs ahead of the solve) changes no image."""
    images = {}
    for pipeline in (True, False):
        cfg = _cfg(tiny_model, recon=recon, pipeline=pipeline)
        images[pipeline] = [image_frame(i) for i in replay(small_file, cfg)["images_list"]]
    assert len(images[True]) == len(images[False]) == 16
    for a, b in zip(images[True], images[False]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * np.abs(b).max())


def test_overload_reduce_updates_only_the_newest_frame(small_file, tiny_model):
    """A network under overload=reduce: every frame still gives one image (frames far behind
    their gridding image, see the catch-up test); the reduced ones say in their meta that one
    frame got one update."""
    cfg = _cfg(tiny_model, overload="reduce", queue_size=2, wait_for_maps=False)
    s = replay(small_file, cfg, realtime=True, speed=1000.0)
    images = s["images_list"]
    assert sorted(i.getHead().image_index for i in images) == list(range(1, 17))
    assert s["reduced_frames"] > 0
    network = [i for i in images if i.meta["rtcine_recon"] == "imunne"]
    reduced = [i for i in network if i.meta["rtcine_window"] == "1"]
    assert reduced and all(i.meta["rtcine_iterations"] == "1" for i in reduced)


def test_deadline_stops_before_an_update_that_would_end_past_it():
    """The loop asks before each update but the first; the time since the previous ask is
    the last update's duration, and an update that would end past the deadline is not begun."""
    from recon_core.networks.streaming import _Deadline

    now = [0.0]
    deadline = _Deadline(1.0, lambda: now[0])
    now[0] = 0.4                        # first update took 0.4 s: a second ends at 0.8
    assert not deadline()
    now[0] = 0.75                       # second took 0.35 s: a third would end at 1.1
    assert deadline()


def test_chain_warns_once_when_openblas_threads_are_unset(monkeypatch, caplog):
    """A chain started without OPENBLAS_NUM_THREADS (numpy's BLAS threads then compete with the
    chain's) says so once, naming the variable; with it set, nothing is logged."""
    import gadgets.recon as recon_mod

    monkeypatch.setattr(recon_mod, "_blas_warned", False)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    with caplog.at_level("WARNING", logger="rtcine.recon"):
        recon_mod.set_threads(1)
    assert not [r for r in caplog.records if "OPENBLAS_NUM_THREADS" in r.getMessage()]
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    monkeypatch.setattr(recon_mod.os, "cpu_count", lambda: 2)
    with caplog.at_level("WARNING", logger="rtcine.recon"):
        recon_mod.set_threads(1)
        recon_mod.set_threads(1)
    warned = [r for r in caplog.records if "OPENBLAS_NUM_THREADS is not set" in r.getMessage()]
    assert len(warned) == 1
