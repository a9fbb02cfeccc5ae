"""A run directory belongs to one run: a fresh run refuses a directory with another run's files, a lock keeps a
second run out while the first lives, pruning goes by step number, and a resume that fails leaves the run as it was.
Hand-built directories; only the failed resume starts Ray (it stops at the cluster-size check, before any actor)."""

import json
import os
import subprocess
import sys

import pytest

from rlqa import checkpoint, rundir
from rlqa.cli import main


def fake_checkpoint(run_dir, step, payload=b"weights"):
    tmp = checkpoint.begin(run_dir, step)
    (tmp / "policy.safetensors").write_bytes(payload)
    return checkpoint.commit(tmp, checkpoint.step_dir(run_dir, step), {"step": step})


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rlqa: error: "), err
    return err.strip()


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("trainer: {steps: 2}\n")
    return path


def test_a_fresh_run_refuses_a_directory_that_holds_another_run(tmp_path, recipe, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 0}\n')
    (run / "samples.jsonl").write_text("")
    assert main(["train", str(recipe), "--run-dir", str(run)]) == 2
    assert one_error_line(capsys) == (
        f"rlqa: error: --run-dir {run}: not empty (metrics.jsonl, samples.jsonl); "
        "continue that run with --resume, or give another --run-dir"
    )
    assert (run / "metrics.jsonl").read_text() == '{"step": 0}\n'  # nothing wiped
    (run / "metrics.jsonl").unlink()
    (run / "samples.jsonl").unlink()
    # a run directory given as a file is refused before anything is created
    (tmp_path / "file").write_text("x")
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "file")]) == 2
    assert one_error_line(capsys) == f"rlqa: error: --run-dir {tmp_path / 'file'}: exists and is not a directory"


def test_checkpoints_are_ordered_by_step_number_and_prune_keeps_the_one_just_saved(tmp_path):
    # by name step_100000000 sorts before step_99999999; by number it is the newer one
    for step in (99_999_999, 100_000_000):
        fake_checkpoint(tmp_path / "a", step)
    (tmp_path / "a" / "checkpoints" / "step_notanumber").mkdir()  # not a checkpoint, and no crash
    assert [checkpoint.step_of(p) for p in checkpoint.list_checkpoints(tmp_path / "a")] == [99_999_999, 100_000_000]
    checkpoint.prune(tmp_path / "a", keep_last=1)
    assert [checkpoint.step_of(p) for p in checkpoint.list_checkpoints(tmp_path / "a")] == [100_000_000]
    # higher-numbered checkpoints from elsewhere never push out the one a run has just committed
    for step in (30, 40):
        fake_checkpoint(tmp_path / "b", step)
    just_saved = fake_checkpoint(tmp_path / "b", 10)
    checkpoint.prune(tmp_path / "b", keep_last=1, keep=(just_saved, None))
    assert [checkpoint.step_of(p) for p in checkpoint.list_checkpoints(tmp_path / "b")] == [10, 40]


@pytest.mark.integration
def test_a_failed_resume_leaves_the_run_recipe_as_it_was(tmp_path, capsys):
    """The resume fails after Ray is up (a cluster too small for the recipe, exit 2): RUN/recipe.yaml, which the
    printed resume command starts from, keeps what it held, not the failed command's overrides."""
    run = tmp_path / "run"
    fake_checkpoint(run, 1)
    newest = fake_checkpoint(run, 2)  # a corrupt policy, left out of a trimmed manifest: --resume takes step 1
    (newest / "policy.safetensors").write_bytes(b"corrupt")
    (newest / checkpoint.MANIFEST).write_text(json.dumps({"files": {"driver.json": json.loads(
        (newest / checkpoint.MANIFEST).read_text())["files"]["driver.json"]}}))
    saved = "trainer: {steps: 2}\nlogging: {progress: false}\n"
    (run / "recipe.yaml").write_text(saved)
    args = ["train", str(run / "recipe.yaml"), "--run-dir", str(run), "--resume", "ray.num_cpus=1", "rollout.workers=3"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert f"resuming from {checkpoint.step_dir(run, 1)}" in captured.out
    assert f"skipping bad checkpoint: {newest / 'policy.safetensors'}: not in the manifest" in captured.err
    assert "the cluster cannot hold this recipe" in captured.err.strip().splitlines()[-1]
    assert (run / "recipe.yaml").read_text() == saved
    assert checkpoint.step_dir(run, 2).exists()  # a bad checkpoint is skipped, not deleted


HOLD_LOCK = """
import sys, time
from pathlib import Path
from rlqa import checkpoint, rundir
with rundir.locked(Path(sys.argv[1])):
    checkpoint.begin(Path(sys.argv[1]), 5)  # its checkpoint in progress
    print("held", flush=True)
    time.sleep(120)
"""


def hold_the_lock(run):
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def test_a_second_run_on_a_locked_directory_exits_2_naming_the_holder_and_leaves_its_files(tmp_path, recipe, capsys):
    run = tmp_path / "run"
    fake_checkpoint(run, 4)
    holder = hold_the_lock(run)
    try:
        for extra in ([], ["--resume"]):
            assert main(["train", str(recipe), "--run-dir", str(run), *extra]) == 2
            line = one_error_line(capsys)
            assert line.startswith(f"rlqa: error: --run-dir {run}: in use by another rlqa run (pid {holder.pid}, started ")
            assert line.endswith("); wait for it to end or stop it")
        assert (run / "checkpoints" / ".tmp_step_00000005").is_dir()  # the live run's save is untouched
    finally:
        holder.kill()
        holder.wait()
    # SIGKILL released the flock: the lock is free at once though the file still names the dead holder
    assert json.loads((run / rundir.LOCK).read_text())["pid"] == holder.pid
    with rundir.locked(run):
        assert json.loads((run / rundir.LOCK).read_text())["pid"] == os.getpid()
        assert rundir.holds_lock(run)
        checkpoint.discard_after(run, 4, say=lambda m: None)  # the dead run's unfinished save goes
    assert not rundir.holds_lock(run) and (run / rundir.LOCK).read_text() == ""
    assert not (run / "checkpoints" / ".tmp_step_00000005").exists()
    assert [checkpoint.step_of(p) for p in checkpoint.list_checkpoints(run)] == [4]
