"""The optional TensorBoard and Weights & Biases (offline) sinks get the same rows as metrics.jsonl, and a sink whose
package is missing stops `rlqa train` with exit 2 before anything runs."""

import math
import sys

import pytest

from rlqa.cli import main
from rlqa.metrics import MetricsWriter, TensorBoardSink, WandbSink


def log_steps(writer, values):
    for step, value in values:
        writer.log(step, {"reward/mean": value, "policy/kl": math.nan}, [])
    writer.close()


def test_tensorboard_gets_each_step_and_a_resume_replaces_the_steps_after_the_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_steps(MetricsWriter(tmp_path, 3, 0, False, sinks=[TensorBoardSink(tmp_path, 0)]), [(0, 0.0), (1, 0.5), (2, 1.0)])
    # resumed from a checkpoint after step 0: steps 1 and 2 of the first attempt are purged, step 1 logged anew
    log_steps(MetricsWriter(tmp_path, 3, 1, False, sinks=[TensorBoardSink(tmp_path, 1)]), [(1, 0.25)])

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("reward/mean")] == [(0, 0.0), (1, 0.25)]
    assert "policy/kl" not in events.Tags()["scalars"]  # NaN is written as null in metrics.jsonl and skipped here


def test_wandb_runs_offline_in_the_run_directory(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))  # no settings written to the home directory
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)  # offline needs no login
    sink = WandbSink(tmp_path, "rlqa-test", {"trainer": {"seed": 3}})
    assert sink.run.settings.mode == "offline"
    assert sink.run.config["trainer"] == {"seed": 3}
    writer = MetricsWriter(tmp_path, 2, 0, False, sinks=[sink])
    writer.log(0, {"reward/mean": 0.125}, [])
    writer.log(1, {"reward/mean": 0.375}, [])
    assert sink.run.summary["reward/mean"] == 0.375
    writer.close()
    # the run's record file (written by W&B's service process, which `wandb sync` uploads) is in the run directory
    assert len(list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))) == 1


@pytest.mark.parametrize("key", ["tensorboard", "wandb"])
def test_a_sink_without_its_package_exits_2_before_training(tmp_path, monkeypatch, capsys, key):
    monkeypatch.setitem(sys.modules, key, None)  # how Python marks a module as not importable
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"logging: {{{key}: true}}\ntrainer: {{steps: 1}}\n")
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err == f"rlqa: error: {recipe}: logging.{key} needs the {key} package: pip install 'rlqa[{key}]'\n"
    assert not (tmp_path / "run").exists()
