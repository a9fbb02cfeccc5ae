"""Where metrics go: metrics.jsonl (one row per step), samples.jsonl, a live progress line, and optionally
TensorBoard and Weights & Biases (offline) sinks, which get the very same rows."""

from __future__ import annotations

import json
import math
import os
import sys
from importlib import import_module
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from rlqa.errors import UserError


def _clean(value):
    """JSON has no NaN/inf: write them as null so every line parses."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _step_of(line: str) -> int | None:
    """The step of one JSONL row; None for a line torn by a crash in the middle of writing it."""
    try:
        return json.loads(line).get("step")
    except json.JSONDecodeError:
        return None


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the rows up to `last_step`, so a resumed run continues the file with no step twice and none missing.

    Rows past the checkpoint (written before a crash) and a torn last line go; the file is replaced atomically, so a
    crash here loses nothing either.
    """
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if (step := _step_of(line)) is not None and step <= last_step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def _append(path: Path, lines: list[str]) -> None:
    """Append and fsync: a step's rows are on disk before the checkpoint that follows them."""
    with path.open("a") as f:
        f.write("".join(line + "\n" for line in lines))
        f.flush()
        os.fsync(f.fileno())


def merge(*parts: dict[str, float]) -> dict[str, float]:
    """One step's metrics from its stages. Each key has one producer: a key two stages produce is a bug (the later
    would silently win), so it raises."""
    merged: dict[str, float] = {}
    for part in parts:
        twice = merged.keys() & part.keys()
        if twice:
            raise ValueError(f"metric keys produced twice in one step: {', '.join(sorted(twice))}")
        merged.update(part)
    return merged


class TensorBoardSink:
    """Scalars under RUN_DIR/tensorboard. A resumed run purges events from `start_step` on, as truncate_jsonl does."""

    def __init__(self, run_dir: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start_step)

    def log(self, step: int, row: dict) -> None:
        for name, value in row.items():
            if name != "step" and value is not None:
                self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """A Weights & Biases run in offline mode under RUN_DIR/wandb: no login, no network. `wandb sync` uploads it."""

    def __init__(self, run_dir: Path, project: str, config: dict):
        import wandb

        self.run = wandb.init(project=project, name=run_dir.name, dir=str(run_dir), mode="offline", config=config)

    def log(self, step: int, row: dict) -> None:
        # commit now, not when the next step arrives, so a crash loses no step
        self.run.log({k: v for k, v in row.items() if k != "step" and v is not None}, step=step, commit=True)

    def close(self) -> None:
        self.run.finish()


SINKS = ("tensorboard", "wandb")  # logging.<name> turns one on; it needs the package of the same name


def require_sinks(logging_cfg, where: str) -> None:
    """Stop before any work when an enabled sink's package is missing: exit 2 with one line, not a late traceback."""
    for name in SINKS:
        if getattr(logging_cfg, name):
            try:
                import_module(name)
            except ImportError:
                raise UserError(f"{where}: logging.{name} needs the {name} package: pip install 'rlqa[{name}]'") from None


def open_sinks(recipe, run_dir: Path, start_step: int) -> list:
    """The extra sinks the recipe's `logging` section enables."""
    cfg = recipe.logging
    require_sinks(cfg, str(run_dir / "recipe.yaml"))
    sinks: list = []
    if cfg.tensorboard:
        sinks.append(TensorBoardSink(run_dir, start_step))
    if cfg.wandb:
        sinks.append(WandbSink(run_dir, cfg.wandb_project, recipe.model_dump(mode="json")))
    return sinks


class MetricsWriter:
    def __init__(self, run_dir: Path, total_steps: int, start_step: int, progress: bool, sinks: list = ()):
        self.metrics_path = run_dir / "metrics.jsonl"
        self.samples_path = run_dir / "samples.jsonl"
        truncate_jsonl(self.metrics_path, start_step - 1)
        truncate_jsonl(self.samples_path, start_step - 1)
        self.console = Console(stderr=True)
        self.live = progress and self.console.is_terminal
        self.plain = progress and not self.live
        self.progress = None
        if self.live:
            self.progress = Progress(
                TextColumn("[bold]RL"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.task = self.progress.add_task("rl", total=total_steps, completed=start_step, status="")
            self.progress.start()
        self.total_steps = total_steps
        self.sinks = list(sinks)

    def log(self, step: int, metrics: dict[str, float], samples: list[dict]) -> None:
        row = {"step": step, **{k: _clean(v) for k, v in sorted(metrics.items())}}
        _append(self.metrics_path, [json.dumps(row)])
        _append(self.samples_path, [json.dumps({"step": step, **sample}) for sample in samples])
        for sink in self.sinks:
            sink.log(step, row)
        status = (
            f"reward {metrics.get('reward/mean', float('nan')):.3f}  acc {metrics.get('correct/mean', float('nan')):.3f}  "
            f"H {metrics.get('policy/entropy', float('nan')):.3f}  T {metrics.get('rollout/temperature', float('nan')):.3f}  "
            f"{metrics.get('throughput/tokens_per_s', 0):.0f} tok/s"
        )
        if self.progress is not None:
            self.progress.update(self.task, completed=step + 1, status=status)
        elif self.plain:
            print(f"step {step + 1}/{self.total_steps}  {status}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        for sink in self.sinks:
            sink.close()
        self.sinks = []
