"""A real Gadgetron 4.x server for the tests: ``gadgetron_server`` (module scope).

It starts ``gadgetron -p PORT -s STORAGE_PORT`` on free ports with this Python's bin/
first on PATH (Gadgetron runs ``python -m gadgetron`` for ``<execute type="python">``
with the first ``python`` on PATH, which must have this project and gadgetron-python),
``OMP_WAIT_POLICY=PASSIVE``, and its working and storage folders in a temporary folder;
waits until the port listens; and stops it by PID at the end (SIGTERM, then SIGKILL, to
its process group: the storage server and any external Python module go with it).

Its log is kept in a file: ``server.log_since(mark)`` gives what one test produced, and
the ``gadgetron_log`` fixture prints that part, so a failing test shows it (pytest shows
captured output of failing tests only).

Where is Gadgetron: ``$GADGETRON_HOME/bin``, else ``/opt/gadgetron/bin``, else PATH. Without
it the tests skip, saying how to install it (``bash ../shared/gadgetron/install.sh``),
unless the environment variable ``CI`` is set: then they fail.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL_HINT = "bash ../shared/gadgetron/install.sh"


def find_gadgetron_bin() -> str | None:
    """The folder holding ``gadgetron`` and ``gadgetron_ismrmrd_client``, or None."""
    candidates = []
    if os.environ.get("GADGETRON_HOME"):
        candidates.append(os.path.join(os.environ["GADGETRON_HOME"], "bin"))
    candidates.append("/opt/gadgetron/bin")
    found = shutil.which("gadgetron")
    if found:
        candidates.append(os.path.dirname(found))
    for folder in candidates:
        if all(os.access(os.path.join(folder, exe), os.X_OK) for exe in ("gadgetron", "gadgetron_ismrmrd_client")):
            return folder
    return None


def require_gadgetron() -> str:
    folder = find_gadgetron_bin()
    if folder is None:
        msg = ("no Gadgetron server (gadgetron and gadgetron_ismrmrd_client in $GADGETRON_HOME/bin, "
               f"/opt/gadgetron/bin or on PATH): install it with `{INSTALL_HINT}` (from the repository root)")
        if os.environ.get("CI"):
            pytest.fail(msg + " -- CI is set, so this is an error, not a skip", pytrace=False)
        pytest.skip(msg)
    return folder


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def is_listening(port: int) -> bool:
    """Whether some socket listens on ``port`` (read from /proc: no connection is made,
    so the server's log stays clean): :func:`gadgets.health.listening`."""
    from gadgets.health import listening
    return listening(port)


def server_env(bin_dir: str) -> dict:
    """Environment for Gadgetron and the processes it starts: this Python first on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), bin_dir, env.get("PATH", "")])
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)
    env.setdefault("GADGETRON_EXTERNAL_LOG_LEVEL", "INFO")
    return env


def stop_process_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group led by ``proc`` (started with ``start_new_session``), then
    SIGKILL what is left after ``grace`` seconds."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:                      # children (storage server, external modules) may outlive the leader
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


class GadgetronServer:
    def __init__(self, bin_dir: str, workdir: str):
        self.bin_dir = bin_dir
        self.workdir = workdir
        self.port = free_port()
        self.storage_port = free_port()
        while self.storage_port == self.port:
            self.storage_port = free_port()
        self.env = server_env(bin_dir)
        self.log_path = os.path.join(workdir, "gadgetron.log")
        self.proc: subprocess.Popen | None = None

    @property
    def client(self) -> str:
        return os.path.join(self.bin_dir, "gadgetron_ismrmrd_client")

    def start(self, timeout: float = 60.0) -> "GadgetronServer":
        dirs = {name: os.path.join(self.workdir, name) for name in ("work", "db", "blobs")}
        for d in dirs.values():
            os.makedirs(d, exist_ok=True)
        cmd = [os.path.join(self.bin_dir, "gadgetron"), "-p", str(self.port), "-s", str(self.storage_port),
               "-W", dirs["work"], "-D", dirs["db"], "-S", dirs["blobs"]]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env, cwd=self.workdir, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not is_listening(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"gadgetron exited with {self.proc.returncode} before listening:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gadgetron did not listen on port {self.port} within {timeout:.0f} s:\n"
                                   f"{self.log()}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- log -------------------------------------------------------------------------------
    def mark(self) -> int:
        return os.path.getsize(self.log_path)

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_since(self, mark: int) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(mark)
            return f.read().decode("utf-8", "replace")

    def wait_for_log(self, text: str, mark: int = 0, timeout: float = 30.0) -> str:
        """Wait until ``text`` appears in the log after ``mark``; return that part of the log."""
        deadline = time.monotonic() + timeout
        while True:
            part = self.log_since(mark)
            if text in part or time.monotonic() > deadline:
                return part
            time.sleep(0.1)

    # -- sending ----------------------------------------------------------------------------
    def send(self, in_path: str, chain: str, out_path: str, *, local: bool = True, group: str | None = None,
             timeout: float = 300.0) -> subprocess.CompletedProcess:
        """``gadgetron_ismrmrd_client -a 127.0.0.1 -p PORT -f IN (-C CHAIN | -c NAME) -o OUT``."""
        cmd = [self.client, "-a", "127.0.0.1", "-p", str(self.port), "-f", in_path,
               "-C" if local else "-c", chain, "-o", out_path]
        if group:
            cmd += ["-G", group]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=self.env)


@pytest.fixture(scope="module")
def gadgetron_server(tmp_path_factory):
    """A running Gadgetron server (see the module docstring); skipped (or failed under CI)
    when Gadgetron is not installed."""
    bin_dir = require_gadgetron()
    server = GadgetronServer(bin_dir, str(tmp_path_factory.mktemp("gadgetron")))
    server.start()
    try:
        yield server
    finally:
        server.stop()
        print(f"\n--- Gadgetron log ({server.log_path}), last 80 lines ---")
        print("\n".join(server.log().splitlines()[-80:]))


@pytest.fixture
def gadgetron_log(gadgetron_server):
    """The part of the Gadgetron log one test produced; printed after the test, so that a
    failing test shows it."""
    mark = gadgetron_server.mark()
    yield lambda: gadgetron_server.log_since(mark)
    text = gadgetron_server.log_since(mark)
    print(f"\n--- Gadgetron log during this test ({len(text.splitlines())} lines) ---\n{text}")
