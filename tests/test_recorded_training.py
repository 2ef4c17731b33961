"""Training on a site's recorded ISMRMRD files: through the chain's input stages, refused
with a reason when unusable, and fine-tuning a shipped model keeps its schedule and says
where it came from."""
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from gadgets.recorded_scans import UnusableRecording, prepare_recorded


def _simulate(path, *args):
    subprocess.run([sys.executable, "-m", "rtcine", "simulate", str(path), "--frames", "8", "--coils", "4",
                    "--matrix", "48", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    d = tmp_path_factory.mktemp("recorded")
    _simulate(d / "one.h5")
    _simulate(d / "stack.h5", "--slices", "2", "--dummy-scans", "3")
    _simulate(d / "sparse.h5", "--spokes-per-frame", "3")
    return d


def test_recorded_slices_become_scans_with_the_chains_frames(recordings):
    scans = prepare_recorded(str(recordings / "stack.h5"), min_frames=4, with_reference=True)
    assert [str(s["source"]) for s in scans] == ["stack.h5#0", "stack.h5#1"]
    for s in scans:
        t, c, spokes, r = s["kspace"].shape
        assert (t, spokes) == (8, 13) and s["coords"].shape == (t, spokes, r, 2)
        assert s["maps"].shape[1:] == (48, 48) and s["reference"].shape == (8, 48, 48)
        assert "target" not in s and np.isfinite(s["kspace"]).all()
    no_ref = prepare_recorded(str(recordings / "one.h5"), min_frames=4)
    assert "reference" not in no_ref[0]


def test_unusable_recordings_are_refused_naming_file_and_reason(recordings, tmp_path):
    with pytest.raises(UnusableRecording, match=r"sparse\.h5: no usable slice: slice 0: 3 spokes per frame"):
        prepare_recorded(str(recordings / "sparse.h5"), min_frames=4)
    with pytest.raises(UnusableRecording, match=r"one\.h5: no usable slice: slice 0: 8 complete frames "
                                                 r"\(the training window needs 20\)"):
        prepare_recorded(str(recordings / "one.h5"), min_frames=20)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(UnusableRecording, match="junk.h5"):
        prepare_recorded(str(junk), min_frames=4)


def test_finetune_the_realtime_model_on_recorded_files_ssdu(recordings, tmp_path):
    out = tmp_path / "ft"
    cmd = [sys.executable, "-m", "rtcine", "train", "--finetune", "imunne_rt", "--data", str(recordings),
           "--val-data", str(recordings / "one.h5"), "--supervision", "ssdu", "--window", "4", "--steps", "2",
           "--window-weight", "0", "--stream-weight", "1", "--stream-clip", "6", "--stream-burn-in", "1",
           "--checkpoint-every", "1", "--validate-every", "2", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sparse.h5: no usable slice: slice 0: 3 spokes per frame" in r.stderr
    with open(out / "model.yaml") as f:
        meta = yaml.safe_load(f)
    shipped = yaml.safe_load(open(os.path.join("recon_core", "models", "imunne_rt_small.yaml")))
    assert meta["streaming"] == shipped["streaming"] and meta["arch"] == shipped["arch"]
    t = meta["training"]
    assert t["data"] == "recorded: 2 file(s), 3 slice(s): one, stack"
    assert t["loss"].startswith("SSDU") and "streamed" in t["loss"] and t["steps"] == 2
    assert t["init"].endswith("imunne_rt_small.safetensors")
    assert np.isfinite(t["val"][0]["stream_psnr"])                 # validated on the schedule it runs
    # a setting given here wins over the fine-tuned model's; the rest of its architecture is kept
    changed = [a if a != str(out) else str(tmp_path / "mem") for a in cmd] + ["--memory", "0.2", "--stream-updates", "1"]
    r = subprocess.run(changed, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    meta = yaml.safe_load(open(tmp_path / "mem" / "model.yaml"))
    assert meta["arch"] == {**shipped["arch"], "memory": 0.2, "max_iter": 1}
    assert meta["streaming"] == {**shipped["streaming"], "updates": 1}
    # anchored by simulated scans (supervised) while the recorded ones train by SSDU
    from recon_core.training.data import build_split
    sim = tmp_path / "sim"
    build_split(str(sim), "train", 2, frames=6, matrix=48)
    anchored = [a if a != str(out) else str(tmp_path / "anch") for a in cmd] + [
        "--anchor-scans", "2", "--anchor-data", str(sim), "--scan-frames", "6", "--batch", "4"]
    r = subprocess.run(anchored, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    t = yaml.safe_load(open(tmp_path / "anch" / "model.yaml"))["training"]
    assert t["data"].endswith(f"anchored by 2 simulated scans of the train split ({sim}), supervised")
    assert "simulated anchor scans: supervised streaming schedule" in t["loss"]
    # anchors belong to an SSDU fine-tune on recorded files; elsewhere they are refused
    r = subprocess.run([sys.executable, "-m", "rtcine", "train", "--data", str(sim), "--anchor-scans", "2",
                        "--out", str(tmp_path / "no")], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--anchor-scans anchors an SSDU fine-tune on recorded .h5 files" in r.stderr
    # supervised training on recorded files is refused up front
    r = subprocess.run(cmd[:-2] + ["--out", str(tmp_path / "sup")] + ["--supervision", "supervised"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "recorded scans carry no ground truth" in r.stderr
