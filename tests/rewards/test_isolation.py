"""Hung answers cost only themselves, and no reward process outlives its owner however the owner ends.

The owner in these tests is a real program in its own session, scoring a batch through `RewardPipeline` with hung
answers in flight (exponent towers that make sympy spin in C code, and a reward that starts a process of its own
that spins). Afterwards nothing of that session may be left, found by session id, not by name.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from rlqa.cluster import session_processes

from rewards.pipeline import RewardPipeline, RewardTermSpec

TOWER = "\\boxed{2^{3^{4^{5^{6^{7}}}}}}"


def test_eight_hung_answers_cost_only_themselves():
    completions, golds = [], []
    for i in range(32):
        completions.append(TOWER if i % 4 == 0 else f"so \\boxed{{{i}}}")
        golds.append("5" if i % 4 == 0 else str(i))
    # each hung answer gets its own 2 s deadline (5 s by default): 8 of them on 2 workers take about 8 s
    with RewardPipeline([RewardTermSpec("accuracy", "accuracy", kwargs={"verify_deadline_s": 2.0})], workers=2) as pipeline:
        start = time.monotonic()
        out = pipeline(completions, ["p"] * 32, {"answer": golds})
        elapsed = time.monotonic() - start
    hung = [i % 4 == 0 for i in range(32)]
    assert [value for value, h in zip(out.terms["accuracy"], hung) if not h] == [1.0] * 24
    assert [value for value, h in zip(out.terms["accuracy"], hung) if h] == [0.0] * 8
    assert out.metrics["reward/accuracy/timeouts"] == 8 and out.metrics["reward/accuracy/timeout_frac"] == 0.25
    assert out.metrics["reward/accuracy/unparsed_frac"] == 0.0  # a hung check is not "no answer"
    assert out.correct == [None if h else True for h in hung]
    assert elapsed <= 30, elapsed


def test_unparsed_fraction_counts_completions_without_an_answer():
    with RewardPipeline([RewardTermSpec("accuracy", "accuracy")]) as pipeline:
        out = pipeline(["\\boxed{1}", "I think 1", "no idea", "The answer is 2"], ["p"] * 4, {"answer": ["1"] * 4})
    assert out.terms["accuracy"] == [1.0, 0.0, 0.0, 0.0]
    assert out.metrics["reward/accuracy/unparsed_frac"] == 0.5


def test_one_warning_when_answers_are_missing_on_each_of_the_first_steps(caplog):
    with RewardPipeline([RewardTermSpec("accuracy", "accuracy")]) as pipeline, caplog.at_level("WARNING"):
        for _ in range(7):
            pipeline(["no idea", "none"], ["p", "p"], {"answer": ["1", "2"]})
    warnings = [r.getMessage() for r in caplog.records if "found no answer" in r.getMessage()]
    assert len(warnings) == 1
    assert "prompts may not ask for the answer format" in warnings[0] and "answer_format" in warnings[0]


def test_no_warning_once_a_step_has_answers(caplog):
    with RewardPipeline([RewardTermSpec("accuracy", "accuracy")]) as pipeline, caplog.at_level("WARNING"):
        pipeline(["\\boxed{1}", "\\boxed{2}"], ["p", "p"], {"answer": ["1", "2"]})
        for _ in range(6):
            pipeline(["no idea", "none"], ["p", "p"], {"answer": ["1", "2"]})
    assert not [r for r in caplog.records if "found no answer" in r.getMessage()]


SPINNER = '''
import subprocess, sys, time

def spawn_and_hang(completions, **kwargs):
    """Starts a process that spins forever, then hangs past the term's deadline."""
    subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(600)
    return [1.0] * len(completions)
'''

OWNER = '''
import json, signal, sys, time
from pathlib import Path
from rewards.pipeline import RewardPipeline, RewardTermSpec

ending, out = sys.argv[1], Path(sys.argv[2])
terms = [RewardTermSpec("accuracy", "accuracy"), RewardTermSpec("spin", "spinner.py:spawn_and_hang", deadline_s=3.0)]
pipeline = RewardPipeline(terms, workers=2, base_dir=out.parent)


def crash(*_):  # an exception the owner does not handle, raised while the batch is in flight
    raise RuntimeError("the owner crashed")


signal.signal(signal.SIGUSR1, crash)
out.write_text(json.dumps({"pool": pipeline._pool.pids()}))
# accuracy first: two towers hang sympy; then the spinner term starts its own process and hangs
result = pipeline(["TOWER"] * 2 + ["so \\\\boxed{1}"] * 6, ["p"] * 8, {"answer": ["5"] * 2 + ["1"] * 6})
out.write_text(json.dumps({"pool": pipeline._pool.pids(), "timeouts": result.metrics["reward/spin/timeouts"]}))
if ending == "deadline":
    time.sleep(600)  # stay alive: whatever is still here now must be the pool itself
pipeline.close()
'''

SIGNALS = {"sigint": signal.SIGINT, "sigterm": signal.SIGTERM, "sigkill": signal.SIGKILL, "crash": signal.SIGUSR1}


@pytest.fixture
def owner_script(tmp_path):
    (tmp_path / "spinner.py").write_text(SPINNER)
    script = tmp_path / "owner.py"
    script.write_text(OWNER.replace("TOWER", TOWER.replace("\\", "\\\\")))
    return script


def start_owner(script, ending):
    out = script.parent / f"{ending}.json"
    proc = subprocess.Popen([sys.executable, str(script), ending, str(out)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_until(lambda: out.exists() and out.read_text(), proc)
    return proc, out


def wait_until(condition, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def spinning_children(processes):
    return [cmd for cmd in processes.values() if "while True: pass" in cmd]


def test_nothing_of_the_owner_remains_when_it_closes(owner_script, leftovers):
    proc, _ = start_owner(owner_script, "close")
    assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()[-2000:]
    assert leftovers(proc.pid) == {}


@pytest.mark.parametrize("phase", ["verifying", "in_a_reward"])
@pytest.mark.parametrize("ending", list(SIGNALS))
def test_nothing_of_the_owner_remains_however_it_ends(owner_script, leftovers, ending, phase):
    proc, _ = start_owner(owner_script, ending)
    if phase == "verifying":
        time.sleep(1.0)  # the two towers are hanging sympy in two workers
    else:
        wait_until(lambda: spinning_children(session_processes(proc.pid)), proc)
    proc.send_signal(SIGNALS[ending])
    proc.wait(timeout=120)
    if ending == "crash":
        assert b"RuntimeError: the owner crashed" in proc.stderr.read()
    assert leftovers(proc.pid) == {}


def test_a_deadline_kills_the_workers_whole_process_group(owner_script, leftovers):
    proc, out = start_owner(owner_script, "deadline")
    try:
        wait_until(lambda: "timeouts" in out.read_text(), proc)
        state = json.loads(out.read_text())
        assert state["timeouts"] == 8
        time.sleep(1)
        alive = session_processes(proc.pid)
        # left: the owner, its zygote and two idle workers; the spinner's child went with its worker's group
        assert set(alive) == {proc.pid, *state["pool"]}, alive
        assert not spinning_children(alive)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
    assert leftovers(proc.pid) == {}
