"""The deployment the Docker image runs, on this machine: ``docker/rtcine-deploy.sh`` starts a
warm ``rtcine serve`` and the real Gadgetron (``/opt/gadgetron``) on loopback ports; a scan
goes in through Gadgetron with the deployment chain ``chains/rtcine_connect.xml`` (its
``<connect>`` port set to the server's) and comes back reconstructed with the realtime preset;
when the server dies, the script stops Gadgetron too and exits non-zero, for the restart
policy. Skips without Gadgetron (fails under ``CI``), as tests/test_gadgetron_server.py."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from gadgetron_fixture import REPO, free_port, require_gadgetron, server_env, stop_process_group
from gadgets.health import problems
from gadgets.images import image_frame
from recon_core.evaluation import body_mask
from recon_core.metrics import psnr

SCRIPT = os.path.join(REPO, "docker", "rtcine-deploy.sh")
FRAMES, COILS, MATRIX, SPOKES, SEED = 8, 8, 64, 13, 3
#: realtime preset on this 8-frame scan, first frames on the fallback maps: 25.0 dB measured
#: (CG-SENSE 24.5); a wrong trajectory gives 14 dB, a constant image 15 dB
MIN_PSNR = 22.0


def _wait(predicate, timeout, proc, log_path, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"rtcine-deploy.sh exited ({proc.returncode}) before {what}:\n{open(log_path).read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout} s:\n{open(log_path).read()}")
        time.sleep(0.2)


def test_deploy_script_serves_scans_through_gadgetron_and_exits_for_a_restart(tmp_path):
    from recon_core.simulate import SimulationConfig, simulate, write_dataset

    bin_dir = require_gadgetron()
    sim = simulate(SimulationConfig(frames=FRAMES, coils=COILS, matrix=MATRIX, spokes_per_frame=SPOKES, snr=30,
                                    seed=SEED))
    scan = str(tmp_path / "scan.h5")
    write_dataset(scan, sim)
    rt_port, gt_port, storage_port = free_port(), free_port(), free_port()
    assert len({rt_port, gt_port, storage_port}) == 3
    ready_file = str(tmp_path / "rtcine-ready")
    env = server_env(bin_dir)
    env.update(RTCINE_PORT=str(rt_port), GADGETRON_PORT=str(gt_port), RTCINE_READY_FILE=ready_file,
               RTCINE_CONDA_ENV="none")
    dirs = [str(tmp_path / d) for d in ("work", "db", "blobs")]
    for d in dirs:
        os.makedirs(d)
    log_path = str(tmp_path / "deploy.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["bash", SCRIPT, "-s", str(storage_port), "-W", dirs[0], "-D", dirs[1], "-S", dirs[2]],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=str(tmp_path), start_new_session=True)
    try:
        _wait(lambda: not problems([rt_port, gt_port], ready_file), 180, proc, log_path, "both healthy")
        text = open(log_path).read()
        assert text.index("rtcine serve ready") < text.index("starting gadgetron")      # warm before Gadgetron

        tree = ET.parse(os.path.join(REPO, "chains", "rtcine_connect.xml"))
        tree.getroot().find(".//external/connect").set("port", str(rt_port))
        chain = str(tmp_path / "connect.xml")
        tree.write(chain)
        out = str(tmp_path / "out.h5")
        sent = subprocess.run([os.path.join(bin_dir, "gadgetron_ismrmrd_client"), "-a", "127.0.0.1", "-p",
                               str(gt_port), "-f", scan, "-C", chain, "-o", out, "-G", "dataset"],
                              capture_output=True, text=True, timeout=300, env=env)
        assert sent.returncode == 0, sent.stderr + open(log_path).read()
        import ismrmrd
        dset = ismrmrd.Dataset(out, "dataset", create_if_needed=False)
        try:
            images = [dset.read_image("image_0", i) for i in range(dset.number_of_images("image_0"))]
        finally:
            dset.close()
        assert [i.getHead().image_index for i in images] == list(range(1, FRAMES + 1)), open(log_path).read()
        assert all(i.meta["rtcine_recon"] == "imunne" for i in images)            # the realtime preset
        mask = body_mask(sim.reference)
        quality = float(np.mean([psnr(image_frame(i), r, mask) for i, r in zip(images, sim.reference)]))
        print(f"deployment chain: mean PSNR {quality:.2f} dB")
        assert quality > MIN_PSNR

        # the server dies: the script stops Gadgetron and exits non-zero (a restart policy restarts both)
        serve_pid = int(open(ready_file).read().split()[2])
        os.kill(serve_pid, 9)
        code = proc.wait(60)
        assert code != 0
        assert "rtcine serve exited" in open(log_path).read()
        assert problems([gt_port]), "gadgetron still listening after the server died"
    finally:
        stop_process_group(proc)
        print(open(log_path).read()[-4000:], file=sys.stderr)


def test_image_compose_script_and_chain_agree():
    """The ports and the ready file of the deployment are the same in the Dockerfile (ENV,
    HEALTHCHECK), the compose file's health check, the entry script's defaults and the
    deployment chain's <connect port>; the linters pass where they are installed."""
    import json
    import re
    import shutil

    import yaml

    dockerfile = open(os.path.join(REPO, "docker", "Dockerfile")).read()
    compose = yaml.safe_load(open(os.path.join(REPO, "docker", "compose.yaml")))
    script = open(SCRIPT).read()
    connect = ET.parse(os.path.join(REPO, "chains", "rtcine_connect.xml")).getroot().find(".//external/connect")
    env = dict(re.findall(r"(\w+)=(\S+)", re.search(r"^ENV (RTCINE_PORT=.*)$", dockerfile, re.M).group(1)))
    assert env["RTCINE_PORT"] == connect.get("port") == re.search(r'RTCINE_PORT:-(\d+)', script).group(1)
    assert env["GADGETRON_PORT"] == re.search(r'GADGETRON_PORT:-(\d+)', script).group(1) == "9002"
    health = compose["services"]["rtcine"]["healthcheck"]["test"]
    assert health[:4] == ["CMD", "/opt/conda/envs/gadgetron/bin/python", "-m", "gadgets.health"]
    assert health[health.index("--ready-file") + 1] == env["RTCINE_READY_FILE"]
    assert {env["RTCINE_PORT"], env["GADGETRON_PORT"]} == {health[i + 1] for i, a in enumerate(health) if a == "--port"}
    flat = re.sub(r"\\\n\s*", " ", dockerfile)
    assert json.loads(re.search(r"HEALTHCHECK .*? CMD (\[[^\]]*\])", flat).group(1)) == health[1:]
    assert 'ENTRYPOINT ["/usr/local/bin/rtcine-deploy"]' in dockerfile
    for tool, args in (("hadolint", [os.path.join(REPO, "docker", "Dockerfile")]),
                       ("shellcheck", [SCRIPT]),
                       ("docker-compose", ["-f", os.path.join(REPO, "docker", "compose.yaml"), "config", "-q"])):
        if shutil.which(tool):
            run = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)
            assert run.returncode == 0, f"{tool}: {run.stdout}{run.stderr}"
