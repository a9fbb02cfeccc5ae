"""Stopping a run at any moment and resuming it gives the result of a run that never stopped; a dead or hung
rollout worker costs a retry, not the run; a dead learner stops the run with its last checkpoint intact; a kill while
final/ or summary.json is written loses nothing the run had committed.

Every run here is the real `rlqa train` in a subprocess (Ray actors, a tiny transformers model, the reward worker
pool), so that it can be killed the way a preempted node or an operator kills it. The reference is one undisturbed
run of 10 steps; 8 prompts at 4 per step make every even step the last of an epoch. A training process costs 15-40 s
on 2 cores (Ray and actor start-up; the steps take 0.2 s each), so a second run goes through every kind of stop in
turn (a kill before the first checkpoint, Ctrl-C, SIGKILL, a truncated checkpoint, a dead learner, a dead and a hung
rollout worker, a kill during final/, another during summary.json) and must still end with exactly the reference's
metrics, samples and weights.
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml
from safetensors.torch import load_file

from rlqa import checkpoint
from leftover_check import left_behind, started

pytestmark = pytest.mark.integration

STEPS = 10

RECIPE = {
    "model": {"tiny": {"hidden_size": 32, "layers": 2, "heads": 2, "intermediate_size": 64, "max_positions": 128}},
    "data": {
        "train": {"task": "arithmetic", "size": 8, "levels": [1, 2]},
        "test": {"task": "arithmetic", "split": "test", "size": 2, "levels": [1]},
    },
    "rollout": {"workers": 1, "prompts_per_step": 4, "rollouts_per_prompt": 4, "max_new_tokens": 16},
    "learner": {"lr": 1.0e-2},
    # a random tiny model is never right, so the reward is one with spread: the share of digits in the completion
    "rewards": {"terms": [{"fn": "digits.py:digit_share"}]},
    "sampler": {"allocation": "difficulty", "n_min": 2, "n_max": 6},
    "trainer": {"steps": STEPS, "eval_before": False, "eval_after": False},
    "checkpoint": {"every": 1, "keep_last": 4},
    "logging": {"progress": False, "samples_per_step": 16},
}

DIGIT_SHARE = '''
def digit_share(completions, prompts, **columns):
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]
'''

NOT_REPRODUCIBLE = ("time/", "throughput/")  # wall-clock figures


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    (root / "digits.py").write_text(DIGIT_SHARE)
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    return path


class Train:
    """`rlqa train` in its own session, so that a signal can reach it alone or its whole process tree."""

    def __init__(self, recipe, run_dir, *args, env=None):
        self.run_dir = run_dir
        self.started = started()
        run_dir.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = run_dir.parent / f"{run_dir.name}.out", run_dir.parent / f"{run_dir.name}.err"
        # the files collect every run in this directory; this run's output starts where they end now
        self.out_start, self.err_start = (p.stat().st_size if p.exists() else 0 for p in (self.out_path, self.err_path))
        with self.out_path.open("a") as out, self.err_path.open("a") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rlqa.cli", "train", str(recipe), *args, "--run-dir", str(run_dir)],
                stdout=out, stderr=err, start_new_session=True, env=None if env is None else {**os.environ, **env},
            )

    def wait_for(self, condition, timeout=240.0):
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, f"rlqa train exited early:\n{self.err_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.02)

    def finish(self, timeout=240.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill_tree()

    def kill_tree(self):
        """SIGKILL to the driver's process group; whatever else the run started (actors in their own groups, reward
        workers, Ray's agents) must then go by itself."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        assert left_behind(self.proc.pid, self.started) == {}, "processes or temporary files of the run outlived it"

    @property
    def out(self):
        return self.out_path.read_bytes()[self.out_start :].decode()

    @property
    def err(self):
        return self.err_path.read_bytes()[self.err_start :].decode()


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def logged_steps(run_dir):
    path = run_dir / "metrics.jsonl"
    return len(rows(path)) if path.exists() else 0


def reproducible(row, also_ignore=()):
    return {k: v for k, v in row.items() if not k.startswith(NOT_REPRODUCIBLE) and k not in also_ignore}


def final_weights(run_dir):
    return load_file(run_dir / "final" / "model.safetensors")


def assert_same_run(run_dir, reference, also_ignore=()):
    got, want = rows(run_dir / "metrics.jsonl"), rows(reference / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(STEPS))  # no step twice, none missing
    for g, w in zip(got, want, strict=True):
        assert reproducible(g, also_ignore) == reproducible(w, also_ignore), f"step {g['step']}"
    assert rows(run_dir / "samples.jsonl") == rows(reference / "samples.jsonl")
    weights, expected = final_weights(run_dir), final_weights(reference)
    assert weights.keys() == expected.keys()
    for name in expected:
        assert weights[name].equal(expected[name]), name


@pytest.fixture(scope="module")
def reference(recipe, tmp_path_factory):
    run = Train(recipe, tmp_path_factory.mktemp("reference") / "run")
    assert run.finish() == 0, run.err
    assert_reads_as_a_log(run.out + run.err)
    metrics = rows(run.run_dir / "metrics.jsonl")
    # the run learns (the weights move, the reward has spread) and crosses an epoch boundary every two steps
    assert [m["sampler/epoch"] for m in metrics] == [float(step // 2) for step in range(STEPS)]
    assert all(m["policy/grad_norm"] > 0 for m in metrics)
    assert [m["rollout/count"] for m in metrics] == [16.0] * STEPS
    return run.run_dir


def assert_reads_as_a_log(output: str) -> None:
    """Output to a file, not a terminal: no colour codes in Ray's "(Learner pid=...)" prefixes, and no Ray notice
    about token authentication (rlqa sets the mode itself)."""
    assert "(Learner pid=" in output and "\x1b[" not in output
    assert "Token authentication" not in output


def processes(run_dir):
    return json.loads((run_dir / "processes.json").read_text())


def kill_before_any_checkpoint(recipe, run_dir):
    """What a requeued cluster job does: `--resume` on a run directory with no checkpoint yet starts from the
    beginning and says so; SIGKILL to the whole tree while it starts leaves no checkpoint."""
    run = Train(recipe, run_dir, "--resume")
    run.wait_for(lambda: "starting from the beginning" in run.out)
    assert f"no checkpoint in {run_dir} yet: starting from the beginning" in run.out
    run.wait_for(lambda: (run_dir / "processes.json").exists())  # the actors are up, no step has finished
    run.kill_tree()
    assert checkpoint.list_checkpoints(run_dir) == []


def stop_with_ctrl_c(recipe, run_dir):
    """The same `--resume` command again starts from the beginning; then Ctrl-C as a terminal sends it, to the whole
    foreground process group (Ray's processes included)."""
    run = Train(recipe, run_dir, "--resume")
    run.wait_for(lambda: logged_steps(run_dir) >= 2)
    assert "starting from the beginning" in run.out
    os.killpg(run.proc.pid, signal.SIGINT)
    assert run.finish() == 0, run.err
    stopped = logged_steps(run_dir)  # the step in flight was finished and logged, not lost
    assert 2 <= stopped < STEPS
    assert f"stopped after step {stopped}; checkpoint {checkpoint.step_dir(run_dir, stopped)}" in run.out
    assert f"resume with: rlqa train {run_dir / 'recipe.yaml'} --run-dir {run_dir} --resume" in run.out
    checkpoint.verify(checkpoint.step_dir(run_dir, stopped))
    assert not (run_dir / "final").exists()


def resume_from_an_epoch_end_then_sigkill(recipe, run_dir):
    """--resume-from the checkpoint at the end of epoch 0 (what came after it is discarded), then SIGKILL the whole
    process tree once the next checkpoint is on disk, as when the node goes away."""
    epoch_end = checkpoint.step_dir(run_dir, 2)
    run = Train(recipe, run_dir, "--resume-from", str(epoch_end))
    run.wait_for(lambda: "resumed from" in run.out)
    assert f"resumed from {epoch_end} (step 2)" in run.out
    run.wait_for(checkpoint.step_dir(run_dir, 3).exists)  # the rename is the commit: it exists only when complete
    run.kill_tree()
    assert run.proc.returncode == -signal.SIGKILL


def resume_past_a_truncated_checkpoint_then_kill_the_learner(run_dir):
    """The newest checkpoint loses half a file: auto-resume names it and takes the one before. Then the learner dies:
    the run stops (exit 1, no traceback) and says which checkpoint is left and how to resume."""
    newest = checkpoint.list_checkpoints(run_dir)[-1]
    bad = newest / "optimizer.pt"
    with bad.open("r+b") as f:
        f.truncate(bad.stat().st_size // 2)
    previous = checkpoint.step_dir(run_dir, checkpoint.step_of(newest) - 1)
    run = Train(run_dir / "recipe.yaml", run_dir, "--resume")  # the resume command the runs print
    run.wait_for(lambda: "resumed from" in run.out)
    assert f"skipping bad checkpoint: {bad}: truncated or altered" in run.err
    assert f"resuming from {previous}, the newest good checkpoint in {run_dir}" in run.out
    run.wait_for(checkpoint.step_dir(run_dir, checkpoint.step_of(previous) + 1).exists)
    os.kill(processes(run_dir)["learners"][0], signal.SIGKILL)
    assert run.finish() == 1, run.err
    last = checkpoint.latest_good(run_dir)
    assert checkpoint.step_of(last) > checkpoint.step_of(previous)
    assert "rlqa: the run stopped: the learner died during step" in run.err
    assert f"the last checkpoint is {last}\nresume with: rlqa train {run_dir / 'recipe.yaml'}" in run.err
    assert "Traceback" not in run.err.split("rlqa: the run stopped")[-1]
    assert not (run_dir / "final").exists()


def resume_through_a_dead_and_a_hung_rollout_worker_then_kill_at_final(run_dir):
    """The rollout worker is killed, then its replacement hangs (SIGSTOP; rollout.deadline_s catches it): each is
    replaced within its step and the run trains to the end, where SIGKILL comes half-way through writing final/:
    the last checkpoint is left, and `rlqa eval RUN` evaluates its policy."""
    run = Train(run_dir / "recipe.yaml", run_dir, "rollout.deadline_s=4", "--resume", env={checkpoint.PAUSE_VARIABLE: "final"})
    run.wait_for(lambda: "resumed from" in run.out)
    start = int(re.search(r"resumed from .* \(step (\d+)\)", run.out).group(1))
    assert start + 3 < STEPS  # steps enough to go for both faults
    run.wait_for(lambda: logged_steps(run_dir) >= start + 1)  # processes.json is rewritten before the first step
    (worker,) = processes(run_dir)["rollout_workers"]
    os.kill(worker, signal.SIGKILL)
    run.wait_for(lambda: processes(run_dir)["rollout_workers"] != [worker])  # rewritten after the step that replaced it
    (replacement,) = processes(run_dir)["rollout_workers"]
    os.kill(replacement, signal.SIGSTOP)
    run.wait_for(lambda: "rlqa: paused before renaming final into place" in run.err)
    run.kill_tree()
    assert run.proc.returncode == -signal.SIGKILL
    assert run.err.count("rollout worker 0 replaced in") == 2
    assert "rollout worker 0 failed (no result within rollout.deadline_s=4s" in run.err or (
        "rollout worker 0 failed (GetTimeoutError while loading weights)" in run.err  # hung between two steps
    )
    assert processes(run_dir)["rollout_workers"] != [replacement]
    assert rows(run_dir / "metrics.jsonl")[-1]["rollout/worker_restarts"] == 2.0
    last = checkpoint.latest_good(run_dir)
    assert last == checkpoint.step_dir(run_dir, STEPS)  # the end-of-run checkpoint came before final/
    assert not (run_dir / "final").exists() and (run_dir / ".tmp_final" / "model.safetensors").is_file()
    assert not (run_dir / "summary.json").exists()
    assert eval_model(run_dir, run_dir.parent / "scratch") == str(run_dir.parent / "scratch")  # the checkpoint's policy
    return last


def resume_to_the_end_then_kill_while_writing_summary(run_dir, last):
    """--resume completes from the last checkpoint (final/ sealed and verified, summary.json written, eval uses
    final/); a later --resume of the finished run killed half-way through rewriting summary.json leaves the previous
    summary.json whole and final/ verified."""
    run = Train(run_dir / "recipe.yaml", run_dir, "--resume")
    assert run.finish() == 0, run.err
    assert f"resuming from {last}" in run.out
    checkpoint.verify(run_dir / "final")
    first = json.loads((run_dir / "summary.json").read_text())
    assert first["steps"] == STEPS and not (run_dir / ".tmp_final").exists()
    assert eval_model(run_dir, run_dir.parent / "scratch2") == str(run_dir / "final")

    run = Train(run_dir / "recipe.yaml", run_dir, "--resume", env={checkpoint.PAUSE_VARIABLE: "summary.json"})
    run.wait_for(lambda: "rlqa: paused before renaming summary.json into place" in run.err)
    run.kill_tree()
    assert run.proc.returncode == -signal.SIGKILL
    assert json.loads((run_dir / "summary.json").read_text()) == first  # the old one, whole
    assert json.loads((run_dir / ".summary.json.tmp").read_text())["steps"] == STEPS  # the new one, never published
    checkpoint.verify(run_dir / "final")
    assert checkpoint.latest_good(run_dir) == last


def eval_model(target, scratch):
    """The model directory `rlqa eval TARGET` would evaluate (evaluation.resolve_target), found in a process of its
    own: what it imports leaves temporary directories in /tmp until its process exits."""
    code = "import sys; from pathlib import Path; from rlqa.evaluation import resolve_target; print(resolve_target(Path(sys.argv[1]), Path(sys.argv[2]))[0])"
    done = subprocess.run([sys.executable, "-c", code, str(target), str(scratch)], capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


def test_a_run_stopped_every_way_ends_exactly_where_the_undisturbed_run_ends(recipe, reference, tmp_path):
    run_dir = tmp_path / "run"
    kill_before_any_checkpoint(recipe, run_dir)
    stop_with_ctrl_c(recipe, run_dir)
    resume_from_an_epoch_end_then_sigkill(recipe, run_dir)
    resume_past_a_truncated_checkpoint_then_kill_the_learner(run_dir)
    last = resume_through_a_dead_and_a_hung_rollout_worker_then_kill_at_final(run_dir)
    resume_to_the_end_then_kill_while_writing_summary(run_dir, last)

    metrics = rows(run_dir / "metrics.jsonl")
    # no lost or duplicated samples: the same count every step, the same total
    assert [m["rollout/count"] for m in metrics] == [m["rollout/count"] for m in rows(reference / "metrics.jsonl")]
    assert sum(m["rollout/count"] for m in metrics) == 16 * STEPS
    # and in fact the very same run: per-step metrics (wall-clock figures and the restart count aside), samples and
    # final weights
    assert_same_run(run_dir, reference, also_ignore={"rollout/worker_restarts"})


# -- async mode ------------------------------------------------------------------------------------------------------

ASYNC_RECIPE = {
    **RECIPE,
    "rollout": {**RECIPE["rollout"], "async_steps": 1},
    # the rank estimator, E3's allocation and DAPO's refill rounds, with the entropy controller moving the temperature
    "sampler": {"allocation": "difficulty", "estimator": "rank", "n_min": 2, "n_max": 6, "dynamic_sampling": True,
                "max_extra_rounds": 1},
    "temperature": {"mode": "entropy", "t_min": 0.5, "t_max": 2.0},
    # a three-valued reward, so that some whole groups agree and dynamic sampling has groups to filter and rounds to run
    "rewards": {"terms": [{"fn": "digits.py:digit_share_rounded"}]},
}

DIGIT_SHARE_ROUNDED = '''
def digit_share_rounded(completions, **columns):
    return [round(2 * sum(ch.isdigit() for ch in c) / max(len(c), 1)) / 2 for c in completions]
'''


@pytest.fixture(scope="module")
def async_recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_async")
    (root / "digits.py").write_text(DIGIT_SHARE_ROUNDED)
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(ASYNC_RECIPE))
    return path


@pytest.fixture(scope="module")
def async_reference(async_recipe, tmp_path_factory):
    run = Train(async_recipe, tmp_path_factory.mktemp("async_reference") / "run")
    assert run.finish() == 0, run.err
    metrics = rows(run.run_dir / "metrics.jsonl")
    # what the resumed runs must reproduce is really there: off-policy steps, a moving temperature that the
    # rollouts follow one update behind, filtered groups and refill rounds
    # (step 0 has nothing to overlap with; a refill round comes from the newer policy, staleness 0)
    assert metrics[0]["rollout/staleness"] == 0.0 and sum(m["rollout/staleness"] > 0 for m in metrics) >= STEPS // 2
    assert len({m["rollout/temperature"] for m in metrics}) > 3
    assert [m["rollout/temperature"] for m in metrics[2:]] == [m["temperature/next"] for m in metrics[: STEPS - 2]]
    assert sum(m["sampler/filtered_groups"] for m in metrics) > 0 and sum(m["sampler/extra_rounds"] for m in metrics) > 0
    return run.run_dir


@pytest.mark.slow
def test_an_async_run_killed_at_step_3_and_at_a_random_moment_resumes_bit_identical(async_recipe, async_reference, tmp_path):
    """The checkpoint holds the rollouts generated ahead for the next step (and the sampler state that drew them),
    so a resumed async run trains on the very rollouts the undisturbed one did: same metrics, samples and weights."""
    run_dir = tmp_path / "run"
    run = Train(async_recipe, run_dir)
    run.wait_for(checkpoint.step_dir(run_dir, 3).exists)
    run.kill_tree()
    saved = json.loads((checkpoint.step_dir(run_dir, 3) / checkpoint.DRIVER_STATE).read_text())
    assert saved["pending_rollouts"]["step"] == 3 and len(saved["pending_rollouts"]["rollouts"]) == 16

    run = Train(run_dir / "recipe.yaml", run_dir, "--resume")
    run.wait_for(lambda: "resumed from" in run.out)
    delay = random.Random().uniform(0.0, 3.0)  # a moment anywhere in the remaining steps (0.2-0.4 s each)
    time.sleep(delay)
    run.kill_tree()
    if run.proc.returncode != -signal.SIGKILL:  # it finished before the kill: nothing more to resume
        assert run.proc.returncode == 0, run.err
    else:
        run = Train(run_dir / "recipe.yaml", run_dir, "--resume")
        assert run.finish() == 0, f"killed {delay:.2f} s after resuming\n{run.err}"
    assert_same_run(run_dir, async_reference)
