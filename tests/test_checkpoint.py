"""Checkpoint files: atomic commit, verification by name, fallback to the previous good one, what is kept, RNG states
as JSON, resuming the JSONL logs, and `rlqa export`. No Ray here: these are the file-level contracts."""

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlqa import checkpoint, rundir
from rlqa.cli import main
from rlqa.config import TinyModelConfig
from rlqa.errors import UserError
from rlqa.metrics import MetricsWriter, truncate_jsonl
from rlqa.models import build_char_tokenizer, build_tiny_model


def fake_checkpoint(run_dir, step, payload=b"weights"):
    tmp = checkpoint.begin(run_dir, step)
    (tmp / "policy.safetensors").write_bytes(payload)
    (tmp / "hf").mkdir()
    (tmp / "hf" / "config.json").write_text("{}")
    return checkpoint.commit(tmp, checkpoint.step_dir(run_dir, step), {"step": step})


def test_commit_renames_into_place_and_the_manifest_covers_every_file(tmp_path):
    ckpt = fake_checkpoint(tmp_path, 3)
    assert ckpt.name == "step_00000003"
    assert not list((tmp_path / "checkpoints").glob(".tmp_*"))
    files = json.loads((ckpt / checkpoint.MANIFEST).read_text())["files"]
    assert sorted(files) == ["driver.json", "hf/config.json", "policy.safetensors"]
    # `printf weights | sha256sum`
    assert files["policy.safetensors"] == {"bytes": 7, "sha256": "9a129038d9a00aed0cf6a7ea059ca50a813449061ab87848cf1a13eafdf33b2c"}
    checkpoint.verify(ckpt)
    assert checkpoint.read_driver_state(ckpt) == {"step": 3}


def test_a_truncated_file_is_rejected_by_name_and_auto_resume_takes_the_one_before(tmp_path):
    older = fake_checkpoint(tmp_path, 1)
    newer = fake_checkpoint(tmp_path, 2)
    with (newer / "policy.safetensors").open("r+b") as f:
        f.truncate(3)
    with pytest.raises(checkpoint.CheckpointError, match=r"step_00000002/policy.safetensors: truncated or altered \(3 bytes, the manifest says 7\)"):
        checkpoint.verify(newer)
    warnings = []
    assert checkpoint.latest_good(tmp_path, warn=warnings.append) == older
    assert len(warnings) == 1 and "step_00000002/policy.safetensors: truncated" in warnings[0]


def test_a_corrupt_or_missing_file_and_an_unfinished_checkpoint_are_rejected(tmp_path):
    ckpt = fake_checkpoint(tmp_path, 1)
    (ckpt / "policy.safetensors").write_bytes(b"weightz")  # same size, other bytes
    with pytest.raises(checkpoint.CheckpointError, match="policy.safetensors: checksum mismatch"):
        checkpoint.verify(ckpt)
    (ckpt / "hf" / "config.json").unlink()
    with pytest.raises(checkpoint.CheckpointError, match="hf/config.json: missing"):
        checkpoint.verify(ckpt)
    (ckpt / checkpoint.MANIFEST).unlink()
    with pytest.raises(checkpoint.CheckpointError, match="no manifest.json"):
        checkpoint.verify(ckpt)
    # a save killed before its rename leaves a temporary directory, which is never a checkpoint
    checkpoint.begin(tmp_path, 5)
    assert checkpoint.list_checkpoints(tmp_path) == [ckpt]


def test_auto_resume_with_only_bad_checkpoints_exits_2_naming_the_file(tmp_path, capsys):
    ckpt = fake_checkpoint(tmp_path / "run", 1)
    (ckpt / "driver.json").write_text("{")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("trainer: {steps: 2}\n")
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"skipping bad checkpoint: {ckpt}/driver.json: truncated or altered" in err
    assert err.endswith(f"rlqa: error: {tmp_path / 'run'}: no usable checkpoint to resume from\n")


def test_prune_keeps_the_last_k_and_the_best(tmp_path):
    for step in range(1, 6):
        fake_checkpoint(tmp_path, step)
    checkpoint.prune(tmp_path, keep_last=2, keep=(checkpoint.step_dir(tmp_path, 2),))
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step_00000002", "step_00000004", "step_00000005"]


def test_is_better_by_mode_and_never_for_nan_or_missing():
    assert checkpoint.is_better(0.5, None, "max") and checkpoint.is_better(0.5, 0.25, "max")
    assert not checkpoint.is_better(0.25, 0.5, "max") and not checkpoint.is_better(0.5, 0.5, "max")
    assert checkpoint.is_better(0.25, 0.5, "min") and not checkpoint.is_better(0.5, 0.25, "min")
    assert not checkpoint.is_better(float("nan"), None, "max") and not checkpoint.is_better(None, 0.1, "min")


def test_resuming_discards_later_checkpoints_and_unfinished_saves(tmp_path):
    for step in (2, 4, 6):
        fake_checkpoint(tmp_path, step)
    checkpoint.begin(tmp_path, 7)
    said = []
    with pytest.raises(RuntimeError, match="without the run directory's lock"):
        checkpoint.discard_after(tmp_path, 4, say=said.append)
    with rundir.locked(tmp_path):
        checkpoint.discard_after(tmp_path, 4, say=said.append)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step_00000002", "step_00000004"]
    assert not list((tmp_path / "checkpoints").glob(".tmp_*"))
    assert len(said) == 1 and "step_00000006" in said[0]


def test_recipe_changes_name_the_key_paths(tmp_path):
    (tmp_path / checkpoint.RECIPE).write_text("trainer: {steps: 4, seed: 0}\nrollout: {workers: 2}\nbase_dir: /a\n")
    current = {"trainer": {"steps": 8, "seed": 0}, "rollout": {"workers": 2}, "base_dir": "/b"}
    assert checkpoint.recipe_changes(tmp_path, current) == ["trainer.steps: 4 -> 8"]


def test_rng_states_round_trip_through_json():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = json.loads(json.dumps(checkpoint.rng_state()))
    expected = (random.random(), np.random.rand(), torch.rand(1).item(), random.gauss(0, 1))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    checkpoint.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item(), random.gauss(0, 1)) == expected


def test_truncate_jsonl_keeps_the_steps_up_to_the_checkpoint_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 1}\n{"step": 2}\n{"step": 3, "rew')  # killed while writing step 3
    truncate_jsonl(path, 1)
    assert path.read_text() == '{"step": 0}\n{"step": 1}\n'
    writer = MetricsWriter(tmp_path, 4, 2, progress=False)  # resumed at step 2: it appends step 2 next
    writer.log(2, {"reward/mean": 0.5}, [{"completion": "x"}])
    writer.close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 1, 2]
    assert [json.loads(line)["step"] for line in (tmp_path / "samples.jsonl").read_text().splitlines()] == [2]


SHAPE = TinyModelConfig(hidden_size=16, layers=1, heads=2, intermediate_size=32, max_positions=32)


def tiny_checkpoint(tmp_path, step=7, config=None, recipe="trainer: {steps: 2}\n"):
    """A real checkpoint of a tiny model (what save_checkpoint writes, minus the optimizer): RUN/checkpoints/step_7
    with its recipe, the run's model files under hf/ (`config` edits their config.json) and other weights than the
    base's. Returns (checkpoint, its weights, the tokenizer)."""
    tokenizer = build_char_tokenizer()
    model_dir = tmp_path / "init_model"
    if not model_dir.exists():
        build_tiny_model(SHAPE, len(tokenizer), seed=0).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    trained = build_tiny_model(SHAPE, len(tokenizer), seed=1)  # other weights than the base: the checkpoint's
    weights = {k: v.detach().clone().contiguous() for k, v in trained.state_dict().items()}
    tmp = checkpoint.begin(tmp_path / "run", step)
    save_file(weights, tmp / "policy.safetensors")
    checkpoint.copy_model_files(model_dir, tmp / checkpoint.HF_FILES)
    assert not list((tmp / checkpoint.HF_FILES).glob("*.safetensors"))  # config and tokenizer only
    if config:
        path = tmp / checkpoint.HF_FILES / "config.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | config))
    (tmp / checkpoint.RECIPE).write_text(recipe)
    return checkpoint.commit(tmp, checkpoint.step_dir(tmp_path / "run", step), {"step": step}), weights, tokenizer


def test_export_writes_a_hugging_face_directory_with_the_checkpoint_weights(tmp_path, capsys):
    _, weights, tokenizer = tiny_checkpoint(tmp_path)

    # a run directory stands for its newest good checkpoint
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "out")]) == 0
    assert "exported" in capsys.readouterr().out
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    for name, value in exported.state_dict().items():
        assert torch.equal(value, weights[name]), name
    assert AutoTokenizer.from_pretrained(tmp_path / "out")("1+2").input_ids == tokenizer("1+2").input_ids
    # adapters alone exist only in a LoRA run's checkpoints (tests/learner/test_lora.py)
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "adapters"), "--adapters"]) == 2
    assert "holds full weights, not LoRA adapters (model.lora was off); export without --adapters" in capsys.readouterr().err
    assert not (tmp_path / "adapters").exists()


def test_export_of_a_bad_checkpoint_exits_2(tmp_path, capsys):
    ckpt = fake_checkpoint(tmp_path, 1)
    (ckpt / "policy.safetensors").write_bytes(b"")
    assert main(["export", str(ckpt), str(tmp_path / "out")]) == 2
    assert "policy.safetensors: truncated or altered (0 bytes, the manifest says 7)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("mode", "expected_steps"), [("max", [1, 1, 1, 4]), ("min", [1, 1, 3, 3])])
def test_the_best_checkpoint_moves_only_when_a_step_beats_it(mode, expected_steps):
    from rlqa.config import Recipe
    from rlqa.trainer import track_best

    recipe = Recipe.model_validate({"checkpoint": {"best_metric": "eval/accuracy", "best_mode": mode}})
    summary: dict = {}
    values = [0.5, None, 0.25, 0.75]  # step 2 has no evaluation: it cannot be the best
    steps = []
    for step, value in enumerate(values, start=1):
        metrics = {"reward/mean": 1.0} | ({} if value is None else {"eval/accuracy": value})
        steps.append(track_best(recipe, summary, step, metrics)["step"])
    assert steps == expected_steps
    assert summary["best_checkpoint"] == {"step": expected_steps[-1], "metric": "eval/accuracy", "value": values[expected_steps[-1] - 1]}
    assert track_best(Recipe(), {}, 1, {"eval/accuracy": 1.0}) is None  # no best_metric: only the last K are kept


def test_a_trimmed_manifest_does_not_hide_a_corrupt_file_and_resume_takes_the_previous_checkpoint(tmp_path):
    older = fake_checkpoint(tmp_path, 1)
    newer = fake_checkpoint(tmp_path, 2)
    (newer / "policy.safetensors").write_bytes(b"corrupt!")
    manifest = json.loads((newer / checkpoint.MANIFEST).read_text())
    del manifest["files"]["policy.safetensors"]  # the corrupt file left out: everything listed still checks out
    (newer / checkpoint.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(checkpoint.CheckpointError, match=r"step_00000002/policy.safetensors: not in the manifest"):
        checkpoint.verify(newer)
    (newer / "policy.safetensors").unlink()
    (newer / "hf" / "extra.safetensors").write_bytes(b"")  # an added file is as bad
    with pytest.raises(checkpoint.CheckpointError, match=r"step_00000002/hf/extra.safetensors: not in the manifest"):
        checkpoint.verify(newer)
    warnings = []
    assert checkpoint.latest_good(tmp_path, warn=warnings.append) == older
    assert warnings == [f"skipping bad checkpoint: {newer / 'hf' / 'extra.safetensors'}: not in the manifest (an added file, or a trimmed manifest)"]


MALFORMED = {
    "empty object": (b"{}", "expected"),
    "a number": (b"5", "expected"),
    "files a list": (b'{"files": []}', "expected"),
    "no files": (b'{"files": {}}', "expected"),
    "an entry not an object": (b'{"files": {"driver.json": 5}}', "entry 'driver.json': expected {bytes, sha256}, got 5"),
    "a size as text": (b'{"files": {"driver.json": {"bytes": "7", "sha256": "' + b"0" * 64 + b'"}}}', "entry 'driver.json'"),
    "a path outside": (b'{"files": {"../x": {"bytes": 1, "sha256": "' + b"0" * 64 + b'"}}}', "entry '../x' is not a file inside"),
    "not UTF-8": (b'{"files": {"\xff": 1}}', "not UTF-8: byte 12"),
    "not JSON": (b'{"files": ', "Expecting value"),
}


@pytest.mark.parametrize("content", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_manifest_is_a_bad_checkpoint_never_a_crash(tmp_path, content):
    raw, message = content
    older = fake_checkpoint(tmp_path, 1)
    newer = fake_checkpoint(tmp_path, 2)
    (newer / checkpoint.MANIFEST).write_bytes(raw)
    with pytest.raises(checkpoint.CheckpointError, match="unreadable manifest") as err:
        checkpoint.verify(newer)
    assert message in str(err.value) and "\n" not in str(err.value)
    warnings = []
    assert checkpoint.latest_good(tmp_path, warn=warnings.append) == older  # the previous good one, no traceback
    assert len(warnings) == 1 and str(newer / checkpoint.MANIFEST) in warnings[0]


def test_a_driver_state_that_is_no_object_is_a_bad_checkpoint(tmp_path):
    older = fake_checkpoint(tmp_path, 1)
    tmp = checkpoint.begin(tmp_path, 2)
    checkpoint.commit(tmp, checkpoint.step_dir(tmp_path, 2), [])  # verifies, but holds no state
    assert checkpoint.latest_good(tmp_path, warn=lambda m: None) == older


def test_seal_replaces_a_directory_whole_and_leaves_no_temporary_one(tmp_path):
    for text in ("old", "new"):
        tmp = tmp_path / ".tmp_final"
        tmp.mkdir()
        (tmp / "config.json").write_text(text)
        checkpoint.seal(tmp, tmp_path / "final")
    checkpoint.verify(tmp_path / "final")
    assert (tmp_path / "final" / "config.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_eval_takes_a_checkpoint_directory_for_a_checkpoint_not_a_run(tmp_path):
    from rlqa.evaluation import resolve_target

    ckpt, weights, _ = tiny_checkpoint(tmp_path, recipe="trainer: {steps: 2, seed: 5}\n")
    model_dir, recipe = resolve_target(ckpt, tmp_path / "scratch")
    assert recipe.trainer.seed == 5  # the checkpoint's own recipe
    for name, value in AutoModelForCausalLM.from_pretrained(model_dir).state_dict().items():
        assert torch.equal(value, weights[name]), name


def test_eval_of_a_run_uses_final_only_when_it_verifies(tmp_path, capsys):
    from rlqa.evaluation import resolve_target

    ckpt, _, _ = tiny_checkpoint(tmp_path)
    run = tmp_path / "run"
    (run / "recipe.yaml").write_text("trainer: {steps: 2}\n")
    tmp = run / ".tmp_final"
    assert main(["export", str(ckpt), str(tmp)]) == 0
    checkpoint.seal(tmp, run / "final")
    assert resolve_target(run, tmp_path / "scratch")[0] == run / "final"
    assert resolve_target(run / "final", tmp_path / "scratch")[0] == run / "final"
    with (run / "final" / "model.safetensors").open("r+b") as f:
        f.truncate(100)  # torn: eval falls back to the newest good checkpoint and says why
    capsys.readouterr()
    assert resolve_target(run, tmp_path / "scratch")[0] == tmp_path / "scratch"
    assert f"skipping final/: {run / 'final' / 'model.safetensors'}: truncated or altered (100 bytes" in capsys.readouterr().err
    with pytest.raises(UserError, match="model.safetensors: truncated or altered"):
        resolve_target(run / "final", tmp_path / "scratch2")
