"""Ray for one run: a plain run always starts its own Ray, whatever clusters the machine has known; an address that
nothing answers is one line and exit 2; and nothing of a run remains after it ends, however it ends.

Every run here is the real `rlqa train` (Ray actors, a tiny transformers model, the reward workers) in its own
session, so that what is left of it can be found by session id afterwards.
"""

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from rlqa.cli import main
from rlqa.cluster import TOKEN_VARIABLE, session_processes, shared_dir
from test_launch import TINY, free_port, head_on_loopback

pytestmark = pytest.mark.integration

# A run that is still going when it is stopped, with a reward in flight that hangs and has started a process that
# spins: the hardest case for leaving nothing behind.
SLOW = {**TINY, "trainer": {"steps": 500, "eval_before": False, "eval_after": False},
        "rewards": {"terms": [{"fn": "accuracy"}, {"fn": "spin.py:spawn_and_hang", "deadline_s": 10}]}}

SPIN = '''
import subprocess, sys, time

def spawn_and_hang(completions, **kwargs):
    subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(600)
    return [0.0] * len(completions)
'''


def write_recipe(path: Path, recipe: dict) -> Path:
    (path.parent / "spin.py").write_text(SPIN)
    path.write_text(yaml.safe_dump(recipe))
    return path


def plain_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def test_an_unreachable_address_is_one_line_and_exit_2(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "tiny.yaml", TINY)
    address = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run"), "--address", address]) == 2
    assert time.monotonic() - start < 60
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"rlqa: error: --address {address}: no Ray cluster answers there")


def test_a_plain_run_ignores_a_dead_cluster_left_on_the_machine(tmp_path, leftovers, monkeypatch):
    """`ray start --head` records its address where a bare ray.init() looks first; SIGKILL leaves the record."""
    record = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    saved = record.read_text() if record.exists() else None
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={free_port()}",
         "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env=plain_env() | {"RAY_AUTH_MODE": "disabled"},  # a token-auth head would leave ~/.ray/auth_token behind
    )
    try:
        deadline = time.monotonic() + 90
        while not (record.exists() and record.read_text() != saved):
            assert head.poll() is None and time.monotonic() < deadline, "the Ray head did not start"
            time.sleep(0.2)
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        assert leftovers(head.pid) == {} and record.exists()  # the cluster is dead, its record stays
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        recipe = write_recipe(tmp_path / "tiny.yaml", TINY)
        assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run")]) == 0
        assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 1
    finally:
        with_kill = [p for p in (head,) if p.poll() is None]
        for proc in with_kill:
            os.killpg(proc.pid, signal.SIGKILL)
        if saved is None:
            record.unlink(missing_ok=True)
        else:
            record.write_text(saved)


def start_run(tmp_path: Path) -> subprocess.Popen:
    recipe = write_recipe(tmp_path / "slow.yaml", SLOW)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlqa.cli", "train", str(recipe), "--run-dir", str(run_dir)],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "err").open("w"), start_new_session=True, env=plain_env(),
    )
    deadline = time.monotonic() + 180
    # in flight: the first step's reward has started its spinning process
    while not any("while True: pass" in cmd for cmd in session_processes(proc.pid).values()):
        assert proc.poll() is None, (tmp_path / "err").read_text()[-3000:]
        assert time.monotonic() < deadline, "the run did not reach its reward in time"
        time.sleep(0.2)
    return proc


@pytest.mark.parametrize("ending", ["sigkill", "crash"])  # Ctrl-C and SIGTERM: tests/rewards/test_isolation.py
def test_nothing_of_a_run_remains_however_the_driver_ends(tmp_path, leftovers, ending):
    """The driver alone is signalled (not its process group): Ray, the actors, the reward workers and what they
    started must still go, and so must the run's shared-memory weights file. "crash" kills the learner actor, which
    stops the run with an error (exit 1)."""
    proc = start_run(tmp_path)
    try:
        weights = shared_dir(run_token(proc.pid)) / "weights.bin"
        assert weights.is_file()  # the first sync, before step 1, wrote it
        if ending == "sigkill":
            proc.send_signal(signal.SIGKILL)
        else:
            learner = next(pid for pid, cmd in session_processes(proc.pid).items() if cmd.startswith("ray::Learner"))
            os.kill(learner, signal.SIGKILL)
        proc.wait(timeout=120)
        assert proc.returncode != 0
        assert leftovers(proc.pid) == {}
        deadline = time.monotonic() + 30  # the reaper deletes it once the processes are gone
        while weights.parent.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not weights.parent.exists()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_token(session_id: int) -> str:
    """The run token in the environment of one of the run's processes (Ray's raylet keeps its environment intact)."""
    prefix = f"{TOKEN_VARIABLE}=".encode()
    for pid in session_processes(session_id):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for entry in environ:
            if entry.startswith(prefix):
                return entry[len(prefix) :].decode()
    raise AssertionError("no process of the run carries its token")


@pytest.fixture
def two_cpu_head():
    yield from head_on_loopback(num_cpus=2)


NEEDS_THREE = {**TINY, "rollout": {**TINY["rollout"], "workers": 2}}  # a learner and two rollout workers, 1 CPU each


def test_a_cluster_too_small_for_the_recipe_is_one_line_and_exit_2(two_cpu_head, tmp_path):
    recipe = write_recipe(tmp_path / "three.yaml", NEEDS_THREE)
    env = plain_env() | {"RAY_AUTH_MODE": "disabled"}
    out = subprocess.run(
        [sys.executable, "-m", "rlqa.cli", "train", str(recipe), "--run-dir", str(tmp_path / "run"),
         "--address", two_cpu_head], capture_output=True, text=True, env=env, timeout=120,
    )
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("rlqa: error:")]
    assert errors == [
        "rlqa: error: the cluster cannot hold this recipe: it needs 3 CPU, 0 GPU in all (1 learner: 1 CPU, 0 GPU; "
        "2 rollout workers: 1 CPU, 0 GPU each); the cluster offers 2 CPU, 0 GPU over 1 node (largest 2 CPU, 0 GPU)"
    ]
    assert "Traceback" not in out.stderr


def test_waiting_for_the_cluster_to_grow_says_so_and_stops_at_once_on_sigterm(two_cpu_head, tmp_path, leftovers):
    recipe = write_recipe(tmp_path / "three.yaml", NEEDS_THREE)
    env = plain_env() | {"RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlqa.cli", "train", str(recipe), "ray.wait_for_resources_s=600",
         "--run-dir", str(tmp_path / "run"), "--address", two_cpu_head],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )
    try:
        said = proc.stdout.readline()  # the first report comes as the wait begins (then every 30 s)
        assert re.match(r"waiting for the cluster to grow \(\d+ s\): the cluster cannot hold this recipe", said), (
            said + proc.stderr.read()
        )
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - sent < 10  # no step was in flight: it stops at once
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0 and "Traceback" not in err
    assert leftovers(proc.pid) == {}
