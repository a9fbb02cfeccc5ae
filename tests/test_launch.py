"""launch/: every script is valid bash, every manifest parses and names what it runs, and a recipe runs against a
separately started Ray head with `--address`, the command the SLURM script, the `ray up` example and the
KubeRay RayJob all end in (`ray job submit` in launch/submit.sh wraps the same `python -m rlqa.cli train`)."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SCRIPTS = sorted(p for p in LAUNCH.iterdir() if p.suffix in (".sh", ".sbatch"))
MANIFESTS = sorted(LAUNCH.glob("*.yaml"))


def test_the_launch_directory_has_each_kind():
    assert [p.name for p in SCRIPTS] == ["slurm.sbatch", "submit.sh"]
    assert [p.name for p in MANIFESTS] == ["cluster.yaml", "rayjob.yaml"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_pass_bash_n_and_document_their_command(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "rlqa.cli train" in text
    assert f"launch/{script.name}" in text  # the usage line a user copies


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_manifests_parse(manifest):
    assert isinstance(yaml.safe_load(manifest.read_text()), dict)
    assert f"launch/{manifest.name}" in manifest.read_text()  # documented with the command that uses it


@pytest.mark.parametrize("name", ["slurm.sbatch", "submit.sh", "rayjob.yaml"])
def test_every_launcher_restarts_into_the_same_run_directory_with_resume(name):
    text = (LAUNCH / name).read_text()
    command = next(line for line in text.splitlines() if "rlqa.cli train" in line and not line.lstrip().startswith("#"))
    assert "--run-dir" in command and "--resume" in command.split()


def test_slurm_requeues_and_warns_the_driver_before_the_kill():
    text = (LAUNCH / "slurm.sbatch").read_text()
    assert "#SBATCH --requeue" in text and "#SBATCH --signal=B:TERM@120" in text
    assert 'trap \'kill -TERM "$driver"' in text
    assert 'run_dir="${RLQA_RUN_DIR:-runs/slurm-$SLURM_JOB_ID}"' in text


def test_rayjob_runs_a_recipe_of_this_repository():
    job = yaml.safe_load((LAUNCH / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    command = job["spec"]["entrypoint"].split()
    assert command[:4] == ["python", "-m", "rlqa.cli", "train"] and (ROOT / command[4]).is_file()
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert all(g["template"]["spec"]["containers"] for g in cluster["workerGroupSpecs"])


def test_ray_up_config_installs_rlqa_and_starts_ray():
    cluster = yaml.safe_load((LAUNCH / "cluster.yaml").read_text())
    assert cluster["provider"]["type"] == "local" and cluster["file_mounts"]
    assert any("pip install" in c and "rlqa" in c for c in cluster["setup_commands"])
    assert any("ray start --head" in c for c in cluster["head_start_ray_commands"])


def test_submit_without_a_recipe_is_a_usage_error():
    out = subprocess.run(["bash", str(LAUNCH / "submit.sh")], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith("usage:")
    out = subprocess.run(["bash", str(LAUNCH / "submit.sh"), "no/such.yaml"], capture_output=True, text=True)
    assert out.returncode == 2 and "no/such.yaml not found" in out.stderr


TINY = {
    "model": {"tiny": {"hidden_size": 32, "layers": 2, "heads": 2, "intermediate_size": 64, "max_positions": 64}},
    "data": {
        "train": {"task": "arithmetic", "size": 16, "levels": [1]},
        "test": {"task": "arithmetic", "split": "test", "size": 2, "levels": [1]},
    },
    "rollout": {"workers": 1, "prompts_per_step": 2, "rollouts_per_prompt": 2, "max_new_tokens": 8},
    "sampler": {"allocation": "uniform"},
    "trainer": {"steps": 1, "eval_before": False, "eval_after": False},
    "logging": {"progress": False},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    yield from head_on_loopback(num_cpus=3)


def head_on_loopback(num_cpus: int):
    """A Ray head on loopback in its own process session; SIGTERM to `ray start --block` stops what it started."""
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rlqa-ray-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    # Ray 2.60 turns token auth on for a head when ~/.ray/auth_token exists (any earlier local ray.init writes one)
    # but never for a client given an explicit address: pin one mode for both sides, as launch/ scripts do.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    head = subprocess.Popen(
        [
            sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
            "--node-ip-address=127.0.0.1", f"--port={port}", f"--num-cpus={num_cpus}", "--num-gpus=0",
            "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    deadline = time.monotonic() + 60
    while not any(Path(temp_dir).glob("session_latest/sockets/raylet*")):
        assert head.poll() is None and time.monotonic() < deadline, "the Ray head did not start"
        time.sleep(0.5)
    yield f"127.0.0.1:{port}"
    head.send_signal(signal.SIGTERM)
    try:
        head.wait(timeout=30)
    finally:
        try:
            os.killpg(head.pid, signal.SIGKILL)  # anything of that session still left: ours alone
        except ProcessLookupError:
            pass


@pytest.mark.integration
def test_a_recipe_runs_against_a_separately_started_ray_head(ray_head, tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_AUTH_MODE": "disabled"}
    out = subprocess.run(
        [sys.executable, "-m", "rlqa.cli", "train", str(recipe), "--run-dir", str(tmp_path / "run"), "--address", ray_head],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    port = ray_head.rsplit(":", 1)[1]  # Ray reports the head by the node's own IP, not the loopback name we gave
    assert re.search(rf"Connecting to existing Ray cluster at address: [0-9.]+:{port}\b", out.stderr), out.stderr
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0] and metrics[0]["rollout/count"] == 4
