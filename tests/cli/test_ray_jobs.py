"""``candleray train`` submitted as a Ray Job to a running cluster, as the README's recipe
does it: a head started by the test (its own ports, temp folder and process group, so the
tests' other clusters are left alone), the repository as the job's working dir, then the
job's status and logs read back through the Jobs API."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from support import CLI_TINY_MODEL, free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_train_submitted_as_a_ray_job_succeeds_and_its_logs_end_with_the_training(tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths have a limit
    dash = free_port()
    bin_dir = str(Path(sys.executable).parent)  # ray and candleray of this venv
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    # a new head turns token auth on, and this process's Jobs client (auth off, as the shared
    # test cluster's drivers) would need its token: the recipe with auth on is in the README
    env["RAY_AUTH_MODE"] = "disabled"
    head = subprocess.Popen(
        [
            f"{bin_dir}/ray",
            "start",
            "--head",
            "--block",
            "--num-cpus=2",
            f"--temp-dir={temp}",
            f"--port={free_port()}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            # the fixed defaults (10001, 52365) would clash with another test run's head
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
        ],
        stdout=(tmp_path / "head.log").open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # its own process group: stopped below, never by `ray stop`
    )
    try:
        client = _jobs_client(JobSubmissionClient, f"http://127.0.0.1:{dash}", head, tmp_path)
        home = tmp_path / "home"
        overrides = [
            "ray.address=auto",  # inside a job: the cluster that runs it (RAY_ADDRESS)
            f"run.home={home}",
            "run.name=jobrun",
            "tracking.enabled=false",
            "data.symbols=[synthetic:SYN0]",
            "data.synthetic.length=600",
            *CLI_TINY_MODEL,
        ]
        job = _submit(
            client,
            entrypoint="candleray train " + " ".join(f"'{o}'" for o in overrides),
            runtime_env={"working_dir": str(REPO)},  # what `--working-dir .` sends
        )
        deadline = time.monotonic() + 600  # a hang guard: it returns once the job ends
        while (status := client.get_job_status(job)) not in {
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.STOPPED,
        }:
            assert time.monotonic() < deadline, f"job still {status} after 600s"
            time.sleep(1)
        logs = client.get_job_logs(job)
        assert status == JobStatus.SUCCEEDED, logs[-3000:]
        trained = [line for line in logs.splitlines() if line.startswith("trained ")]
        assert trained and "model at step" in trained[-1], logs[-3000:]
        ckpt = next(line for line in logs.splitlines() if line.startswith("checkpoint: "))
        assert Path(ckpt.removeprefix("checkpoint: ")).is_file()  # written where run.home said
        assert str(home) in ckpt
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def _jobs_client(cls, address: str, head: subprocess.Popen, tmp_path: Path):
    """The Jobs API client once the head's dashboard answers (a hang guard of 180 s)."""
    deadline = time.monotonic() + 180
    while True:
        try:
            return cls(address)
        except (ConnectionError, RuntimeError) as exc:
            if head.poll() is not None or time.monotonic() > deadline:
                log = (tmp_path / "head.log").read_text()[-3000:]
                pytest.fail(f"the head's Jobs API did not come up at {address}: {exc}\n{log}")
            time.sleep(1)


def _submit(client, **job) -> str:
    """``submit_job`` once the head's agent takes jobs: the dashboard answers before it does
    ("No available agent to submit job"); a hang guard of 180 s."""
    deadline = time.monotonic() + 180
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(1)
