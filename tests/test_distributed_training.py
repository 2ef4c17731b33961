"""Data-parallel training under torchrun (gloo, 2 CPU processes): the ranks stay equal,
and equal to one process trained on the union of their windows, across a resume."""
import glob
import os
import shutil
import subprocess
import sys

import pytest
from gadgetron_fixture import free_port as _free_port
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
STEPS = 4


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from recon_core.training.data import build_split
    d = str(tmp_path_factory.mktemp("ddp_data"))
    build_split(d, "train", 3, frames=6, matrix=32)
    build_split(d, "val", 1, frames=6, matrix=32)
    return d


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("WORLD_SIZE", None)
    return env


def _torchrun(*args):
    # dynamic (c10d) rendezvous: each restart is a new round, so restarted ranks never read the
    # addresses of the round before (static rendezvous with --max-restarts can: connection refused)
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", *args]


def _weights(path):
    return load_file(path)


def _assert_close(a, b, atol, what):
    assert a.keys() == b.keys()
    for k in a:
        diff = float((a[k] - b[k]).abs().max())
        assert diff <= atol, f"{what}: {k} differs by {diff:.3g}"


def test_two_ranks_equal_one_process_on_the_union_across_a_resume(tiny_data, tmp_path):
    """2 ranks x 1 window per step against 1 process x 2 windows, each run stopped in step 2
    and resumed (from the step-1 checkpoint, which rank 0 reads and broadcasts) to step 4."""
    single_dump, ddp_dump = tmp_path / "w1", tmp_path / "w2"
    single_dump.mkdir()
    ddp_dump.mkdir()
    driver = os.path.join(HERE, "ddp_driver.py")
    for steps in (2, STEPS):
        one = subprocess.run([sys.executable, driver, "--data", tiny_data, "--out", str(tmp_path / "o1"),
                              "--dump", str(single_dump), "--batch", "2", "--steps", str(steps), "--total", str(STEPS)],
                             env=_env(), capture_output=True, text=True, timeout=300)
        assert one.returncode == 0, one.stderr[-3000:]
        two = subprocess.run(_torchrun(driver, "--data", tiny_data, "--out", str(tmp_path / "o2"),
                                       "--dump", str(ddp_dump), "--batch", "1", "--steps", str(steps),
                                       "--total", str(STEPS)),
                             env=_env(), capture_output=True, text=True, timeout=600)
        assert two.returncode == 0, two.stderr[-3000:]
    with open(tmp_path / "o2" / "log.json") as f:
        import json
        history = json.load(f)
    assert history["step"] == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        w0 = _weights(ddp_dump / f"rank0_step{step}.safetensors")
        w1 = _weights(ddp_dump / f"rank1_step{step}.safetensors")
        ref = _weights(single_dump / f"rank0_step{step}.safetensors")
        _assert_close(w0, w1, 1e-7, f"step {step}: rank 0 vs rank 1")
        _assert_close(w0, ref, 2e-5, f"step {step}: 2 ranks x 1 window vs 1 process x 2 windows")
    # the weights moved: a test that a frozen model would pass proves nothing
    start = _weights(ddp_dump / "rank0_step1.safetensors")
    end = _weights(ddp_dump / f"rank0_step{STEPS}.safetensors")
    assert max(float((start[k] - end[k]).abs().max()) for k in start) > 1e-4
    final = load_file(str(tmp_path / "o2" / "model.safetensors"))
    _assert_close({k: v for k, v in final.items() if not k.startswith("__extra__")},
                  _weights(single_dump / f"rank0_step{STEPS}.safetensors"), 2e-5, "rank 0's checkpoint")


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_rtcine_train_under_torchrun(tiny_data, tmp_path):
    """The documented command: ``torchrun --nproc-per-node 2 -m rtcine train``; rank 0 alone
    writes the model, its YAML records the world size."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    out = tmp_path / "run"
    cmd = ["torchrun", "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "-m", "rtcine", "train", "--model", "flat", "--data", str(data), "--train-scans", "3", "--val-scans", "1",
           "--scan-frames", "6",
           "--steps", "2", "--channels", "4", "--levels", "1", "--window", "3", "--blocks", "2",
           "--checkpoint-every", "1", "--validate-every", "2", "--out", str(out)]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("flat: 2 steps") == 1, r.stdout        # rank 0 alone reports
    with open(out / "log.json") as f:
        import json
        assert json.load(f)["config"]["world_size"] == 2
    assert (out / "model.safetensors").exists() and glob.glob(str(out / "*.yaml"))
