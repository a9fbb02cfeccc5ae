"""Bad input through the real CLI: exit 2 and one line naming the file and what is wrong, nothing written or lost;
and an untrusted checkpoint's own code never runs unless the user's command line says so. No Ray here."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlqa import checkpoint
from rlqa.cli import main
from rlqa.errors import UserError
from test_checkpoint import fake_checkpoint, tiny_checkpoint


def error_line(capsys, *args) -> str:
    capsys.readouterr()  # what came before (a fixture's progress bars)
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rlqa: error: "), err
    return err.strip().removeprefix("rlqa: error: ")


def test_a_recipe_that_is_not_utf8_is_one_line(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(b"trainer: {steps: 2}\n# caf\xe9\n")  # Latin-1, not UTF-8
    # byte 25: len("trainer: {steps: 2}\n# caf") = 20 + 5
    want = f"{recipe}: not UTF-8 text (byte 25 is b'\\xe9')"
    assert error_line(capsys, "check", str(recipe)) == want
    assert error_line(capsys, "train", str(recipe), "--run-dir", str(tmp_path / "run")) == want


def test_a_manifest_that_is_not_utf8_is_one_line(tmp_path, capsys):
    ckpt = fake_checkpoint(tmp_path / "run", 1)
    (ckpt / checkpoint.MANIFEST).write_bytes(b'{"files": "\xff"}')
    recipe = tmp_path / "r.yaml"
    recipe.write_text("trainer: {steps: 2}\n")
    line = error_line(capsys, "train", str(recipe), "--resume-from", str(ckpt))
    assert line == f"--resume-from: {ckpt / checkpoint.MANIFEST}: unreadable manifest (not UTF-8: byte 11)"
    assert error_line(capsys, "export", str(ckpt), str(tmp_path / "out")).endswith("unreadable manifest (not UTF-8: byte 11)")


def test_metrics_that_are_not_utf8_are_one_line_at_report(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_bytes(b'{"step": 0}\n{"step": 1, "x": "\x80"}\n')
    # byte 12 + 18: the second line starts at 12, its \x80 is len('{"step": 1, "x": "') = 18 bytes into it
    assert error_line(capsys, "report", str(run)) == f"{run / 'metrics.jsonl'}: not UTF-8 text (byte 30 is b'\\x80')"
    (run / "metrics.jsonl").write_text('{"step": 0, "reward/mean": 0.5}\n')
    (run / "summary.json").write_bytes(b'{"steps": "\xff"}')
    assert error_line(capsys, "report", str(run)) == f"{run / 'summary.json'}: not UTF-8 text (byte 11 is b'\\xff')"


def test_export_refuses_an_existing_file_a_full_directory_and_the_checkpoint_itself(tmp_path, capsys):
    ckpt, _, _ = tiny_checkpoint(tmp_path)
    taken = tmp_path / "taken.txt"
    taken.write_text("keep me")
    assert error_line(capsys, "export", str(ckpt), str(taken)) == f"{taken}: already exists and is not an empty directory"
    assert taken.read_text() == "keep me"
    full = tmp_path / "full"
    full.mkdir()
    (full / "config.json").write_text("mine")
    assert error_line(capsys, "export", str(ckpt), str(full)) == f"{full}: already exists and is not an empty directory"
    assert [p.name for p in full.iterdir()] == ["config.json"] and (full / "config.json").read_text() == "mine"
    for inside in (ckpt / checkpoint.HF_FILES, ckpt, ckpt / "new"):
        assert error_line(capsys, "export", str(ckpt), str(inside)) == (
            f"{inside}: inside the checkpoint {ckpt}; export to a directory outside it"
        )
    checkpoint.verify(ckpt)  # untouched
    (tmp_path / "empty").mkdir()  # an empty directory is taken, and filled whole
    assert main(["export", str(ckpt), str(tmp_path / "empty")]) == 0
    assert (tmp_path / "empty" / "model.safetensors").is_file()


def test_export_with_a_config_that_does_not_fit_the_weights_is_one_line_and_leaves_nothing(tmp_path, capsys):
    ckpt, _, _ = tiny_checkpoint(tmp_path, config={"intermediate_size": 48})  # the weights have 32
    line = error_line(capsys, "export", str(ckpt), str(tmp_path / "out"))
    assert line.startswith(f"{ckpt}: its policy weights do not fit {ckpt / 'hf' / 'config.json'} (size mismatch for ")
    assert "torch.Size([32, 16])" in line and "torch.Size([48, 16])" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["init_model", "run"]  # no out/, no temporary directory


CUSTOM_CODE = '''
from pathlib import Path
Path({marker!r}).write_text("the checkpoint's code ran")
from transformers import LlamaConfig

class CustomConfig(LlamaConfig):
    model_type = "llama"
'''


@pytest.fixture
def untrusted(tmp_path):
    """A checkpoint whose hf/config.json maps AutoConfig to its own code, and whose recipe asks to trust it."""
    marker = tmp_path / "ran"
    ckpt, weights, _ = tiny_checkpoint(
        tmp_path, config={"auto_map": {"AutoConfig": "configuration_custom.CustomConfig"}},
        recipe="model: {trust_remote_code: true}\n",
    )
    manifest = json.loads((ckpt / checkpoint.MANIFEST).read_text())
    code = ckpt / checkpoint.HF_FILES / "configuration_custom.py"
    code.write_text(CUSTOM_CODE.format(marker=str(marker)))
    tmp = checkpoint.begin(tmp_path / "run", 8)  # re-committed with the code in its manifest: it verifies
    for name in manifest["files"]:
        if name != checkpoint.DRIVER_STATE:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes((ckpt / name).read_bytes())
    (tmp / "hf" / code.name).write_bytes(code.read_bytes())
    return checkpoint.commit(tmp, checkpoint.step_dir(tmp_path / "run", 8), {"step": 8}), weights, marker


def test_export_never_runs_a_checkpoints_code_on_its_recipes_say_so(tmp_path, untrusted, capsys):
    ckpt, weights, marker = untrusted
    assert main(["export", str(ckpt), str(tmp_path / "out")]) == 0  # the built-in Llama classes, not its code
    assert not marker.exists()
    for name, value in AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict().items():
        assert torch.equal(value, weights[name]), name
    # the user's own flag is what lets it run (its config class has no model: exit 2)
    assert main(["export", str(ckpt), str(tmp_path / "out2"), "--trust-remote-code"]) == 2
    assert marker.read_text() == "the checkpoint's code ran"


def test_eval_never_runs_a_checkpoints_code_on_its_recipes_say_so(tmp_path, untrusted):
    from rlqa.evaluation import resolve_target

    ckpt, _, marker = untrusted
    model_dir, recipe = resolve_target(ckpt, tmp_path / "scratch")
    assert (model_dir / "model.safetensors").is_file() and not marker.exists()
    with pytest.raises(UserError, match="Unrecognized configuration class"):  # its code ran, and is no model
        resolve_target(ckpt, tmp_path / "scratch2", trust_remote_code=True)
    assert marker.exists()
