"""Where metrics go: metrics.jsonl (one row per step), samples.jsonl, and a live progress line."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _clean(value):
    """JSON has no NaN/inf: write them as null so every line parses."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop rows past `last_step`, so a resumed run continues the file without duplicated steps."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", -1) <= last_step]
    path.write_text("".join(line + "\n" for line in kept))


class MetricsWriter:
    def __init__(self, run_dir: Path, total_steps: int, start_step: int, progress: bool):
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

    def log(self, step: int, metrics: dict[str, float], samples: list[dict]) -> None:
        row = {"step": step, **{k: _clean(v) for k, v in sorted(metrics.items())}}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        with self.samples_path.open("a") as f:
            for sample in samples:
                f.write(json.dumps({"step": step, **sample}) + "\n")
        status = (
            f"reward {metrics.get('reward/mean', float('nan')):.3f}  acc {metrics.get('correct/mean', float('nan')):.3f}  "
            f"H {metrics.get('policy/entropy', float('nan')):.3f}  T {metrics.get('rollout/temperature', float('nan')):.3f}  "
            f"{metrics.get('throughput/tokens_per_s', 0):.0f} tok/s"
        )
        if self.progress is not None:
            self.progress.update(self.task, completed=step + 1, status=status)
        elif self.plain:
            print(f"step {step + 1}/{self.total_steps}  {status}", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
