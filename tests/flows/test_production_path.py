"""The production path, for real and on loopback only, as the README's Production steps run
it: a `ray start --head` cluster, a `prefect server`, a process work pool and worker,
`prefect deploy --all` from prefect.yaml, `prefect deployment run curate/cluster --watch`; the
flow attaches to the cluster and its stages run there. One flow run does it all (each run
here costs minutes of a 2-core CI machine)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.dataset as pads
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def ray_head():
    """A separately started `ray start --head` cluster: (address, dashboard port)."""
    port, dash_port = free_port(), free_port()
    temp = Path("/tmp") / f"vm-ray-{port}"  # Ray's socket paths must stay short
    # --block keeps the head's processes in this process group, so the test stops exactly
    # this cluster (`ray stop` would stop every Ray on the machine, the suite's own included).
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--port", str(port), "--num-cpus", "2",
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash_port), "--temp-dir", str(temp),
         "--disable-usage-stats"],
        env={**os.environ, **RAY_ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_port(port, 120)
        yield f"127.0.0.1:{port}", dash_port
    finally:
        stop(head)


# `ray start` turns token auth on (Ray 2.60); drivers must run in token mode to attach.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}


@pytest.fixture(scope="module")
def prefect_stack(tmp_path_factory):
    """Server + work pool + worker + deployments, each a real process; torn down after."""
    home = tmp_path_factory.mktemp("prefect_home")
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_UI_ENABLED": "false",
        **RAY_ENV,  # the worker's flow runs attach to the test's cluster
    }
    log = open(home / "server.log", "w")
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    procs = [server]
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health", 180)

        def prefect(*args, timeout=180):
            r = subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
            assert r.returncode == 0, f"prefect {' '.join(args)}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
            return r.stdout

        prefect("work-pool", "create", "videomill-local", "--type", "process")
        wlog = open(home / "worker.log", "w")
        procs.append(
            subprocess.Popen(
                [str(BIN / "prefect"), "worker", "start", "--pool", "videomill-local", "--limit", "1"],
                env=env, cwd=REPO, stdout=wlog, stderr=subprocess.STDOUT, start_new_session=True,
            )
        )
        prefect("--no-prompt", "deploy", "--all")
        yield prefect, home
    finally:
        for p in reversed(procs):
            stop(p)


def test_deployment_run_on_an_attached_ray_cluster(prefect_stack, ray_head, tmp_path):
    from curation.corpora.synthetic import moving, write_video

    prefect, home = prefect_stack
    address, dash_port = ray_head
    inputs = tmp_path / "in"
    write_video(inputs / "a.mp4", moving(75, (480, 270), (2.0, 0.0), seed=1), 25)
    write_video(inputs / "b.mp4", moving(75, (480, 270), (0.0, 2.0), seed=2), 25)
    (inputs / "broken.mp4").write_bytes(b"nope")
    out = tmp_path / "out"
    stdout = prefect(
        "deployment", "run", "curate/cluster",
        "--param", f"inputs={json.dumps([str(inputs)])}",
        "--param", f"out={out}",
        "--param", "profile=tiny",
        "--param", f"ray_address={address}",
        "--watch", "--watch-timeout", "480",
        timeout=540,
    )
    assert "Completed" in stdout, stdout + (home / "worker.log").read_text()[-3000:]
    sources = pads.dataset(out / "manifest" / "sources").to_table().to_pylist()
    assert sorted((Path(r["source"]).name, r["status"]) for r in sources) == [("a.mp4", "ok"), ("b.mp4", "ok"), ("broken.mp4", "error")]
    clips = pads.dataset(out / "manifest" / "clips").to_table().to_pylist()
    assert {c["status"] for c in clips} == {"accepted"} and len(clips) == 2
    # The run's summary artifact, with the funnel, is visible through the API.
    arts = json.loads(prefect("artifact", "inspect", "videomill-run-summary", "--output", "json"))
    md = arts[0]["data"]
    assert "| sources_failed | 1 |" in md and "| accepted | 2 |" in md, md
    # The cluster, not a private Ray, ran the stages: its task table has our operators.
    # Ask this cluster's own state API (the suite's session Ray runs beside it).
    probe = (
        "from ray.util.state import list_tasks;"
        "print(sorted({t.name for t in list_tasks(address=%r, limit=10000)}))" % f"http://127.0.0.1:{dash_port}"
    )
    names = subprocess.run([sys.executable, "-c", probe], env={**os.environ, **RAY_ENV}, capture_output=True, text=True, timeout=120)
    # (the tiny profile captions: extraction and the caption actors are one stream, flows/captions.py)
    assert "MapBatches(CaptionClips)" in names.stdout and "MapBatches(WriteParts)" in names.stdout, names.stdout + names.stderr[-2000:]
