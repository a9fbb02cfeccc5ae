"""`rlqa report RUN_DIR`: PNG plots and a markdown summary of a run.

It reads only the run-directory contract (metrics.jsonl, summary.json, recipe.yaml; DESIGN.md), so a report can be
made from a copied run directory, on another machine, or while the run is still going. A plot whose metrics the
run did not log is skipped and the summary says so, rather than drawing an empty frame.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed, and none exists on a cluster node

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.ticker import MaxNLocator  # noqa: E402
import yaml  # noqa: E402

from rlqa.errors import UserError, read_user_text  # noqa: E402
from rlqa.yields import describe_yield  # noqa: E402

PHASES = ("generate", "reward", "train", "sync")  # time/<phase>; "other" is time/step minus their sum
EVAL_COLORS = ("tab:red", "tab:brown", "tab:olive", "tab:cyan", "tab:pink", "tab:gray")  # apart from the train lines
PHASE_COLORS = {"generate": "tab:blue", "reward": "tab:orange", "train": "tab:green", "sync": "tab:red", "other": "tab:gray"}


@dataclass(frozen=True)
class Run:
    path: Path
    rows: list[dict]  # metrics.jsonl, one dict per step; null values read as NaN
    summary: dict  # summary.json, {} while the run is still going
    recipe: dict  # recipe.yaml, {} when absent


# -- reading -------------------------------------------------------------------------------------------------------


def load_run(run_dir: Path) -> Run:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise UserError(f"{metrics}: not found (is {run_dir} a run directory?)")
    rows = []
    for number, line in enumerate(read_user_text(metrics).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{metrics}: line {number}: not JSON ({err.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise UserError(f"{metrics}: line {number}: expected an object with an integer 'step'")
        rows.append({k: math.nan if v is None else v for k, v in row.items()})
    if not rows:
        raise UserError(f"{metrics}: no steps logged yet")
    return Run(run_dir, rows, _read_json(run_dir / "summary.json"), _read_yaml(run_dir / "recipe.yaml"))


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(read_user_text(path))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not JSON ({err.msg})") from None


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return yaml.safe_load(read_user_text(path)) or {}
    except yaml.YAMLError:
        raise UserError(f"{path}: not valid YAML") from None


def series(rows: list[dict], name: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric over the steps that logged a finite number for it."""
    points = [(r["step"], float(r[name])) for r in rows if _finite(r.get(name))]
    return [s for s, _ in points], [v for _, v in points]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def step_phases(rows: list[dict]) -> dict[str, list[float]]:
    """Seconds per phase per step, "other" (driver bookkeeping outside the timed phases) included.

    Rows missing time/step are left out, so every list lines up with `timed_steps(rows)`.
    """
    timed = [r for r in rows if _finite(r.get("time/step"))]
    phases = {p: [float(r[f"time/{p}"]) if _finite(r.get(f"time/{p}")) else 0.0 for r in timed] for p in PHASES}
    phases["other"] = [max(r["time/step"] - sum(phases[p][i] for p in PHASES), 0.0) for i, r in enumerate(timed)]
    return phases


def timed_steps(rows: list[dict]) -> list[int]:
    return [r["step"] for r in rows if _finite(r.get("time/step"))]


def sync_fraction(rows: list[dict]) -> tuple[list[int], list[float]]:
    """(steps, time/sync / time/step) over the steps that logged both."""
    points = [(r["step"], r["time/sync"] / r["time/step"]) for r in rows if _finite(r.get("time/sync")) and _finite(r.get("time/step")) and r["time/step"] > 0]
    return [s for s, _ in points], [f for _, f in points]


# -- plots ---------------------------------------------------------------------------------------------------------


def _figure(title: str, ylabel: str):
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax.set_title(title)
    ax.set_xlabel("RL step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _line(ax, rows, name, label, **style) -> bool:
    steps, values = series(rows, name)
    if steps:
        ax.plot(steps, values, label=label, **style)
    return bool(steps)


def plot_reward_accuracy(run: Run):
    fig, ax = _figure("Reward and accuracy", "mean reward / fraction correct")
    drawn = _line(ax, run.rows, "reward/mean", "reward/mean (train rollouts)", color="tab:blue")
    drawn |= _line(ax, run.rows, "correct/mean", "correct/mean (train rollouts)", color="tab:green")
    eval_names = sorted(k for k in {k for r in run.rows for k in r} if k.startswith("eval/") and ("accuracy" in k or "pass@" in k))
    for name, color in zip(eval_names, EVAL_COLORS):
        drawn |= _line(ax, run.rows, name, f"{name} (held-out)", color=color, marker="o", linestyle="--")
    for when, marker in (("before", "<"), ("after", ">")):
        accuracy = run.summary.get("eval", {}).get(when, {}).get("accuracy")
        if _finite(accuracy):
            x = run.rows[0]["step"] if when == "before" else run.rows[-1]["step"]
            ax.plot([x], [accuracy], marker=marker, markersize=10, linestyle="none", color="black",
                    label=f"held-out greedy accuracy {when} RL ({accuracy:.3f})")
    return fig, ax, drawn


def plot_entropy_temperature(run: Run):
    fig, ax = _figure("Policy entropy and sampling temperature", "entropy (nats per token)")
    drawn = _line(ax, run.rows, "policy/entropy", "policy/entropy", color="tab:purple")
    _line(ax, run.rows, "policy/target_entropy", "target entropy", color="tab:purple", linestyle="--")
    right = ax.twinx()
    right.set_ylabel("sampling temperature")
    _line(right, run.rows, "rollout/temperature", "rollout/temperature (right axis)", color="tab:red")
    _merge_legends(ax, right)
    return fig, ax, drawn


def plot_length(run: Run):
    fig, ax = _figure("Response length", "completion length (tokens)")
    drawn = _line(ax, run.rows, "rollout/length_mean", "all completions", color="tab:blue")
    drawn |= _line(ax, run.rows, "rollout/length_correct_mean", "correct completions", color="tab:green")
    _line(ax, run.rows, "eval/mean_length", "held-out greedy (eval/mean_length)", color="black", marker="o", linestyle="--")
    return fig, ax, drawn


def plot_allocation(run: Run):
    fig, ax = _figure("Rollout allocation per prompt", "rollouts per prompt")
    steps, low = series(run.rows, "sampler/alloc_min")
    _, high = series(run.rows, "sampler/alloc_max")
    drawn = bool(steps) and len(low) == len(high)
    if drawn:
        ax.fill_between(steps, low, high, color="tab:blue", alpha=0.2, label="min to max over the step's prompts")
    drawn |= _line(ax, run.rows, "sampler/alloc_mean", "mean", color="tab:blue")
    _line(ax, run.rows, "sampler/n_min", "n_min bound", color="gray", linestyle=":")
    _line(ax, run.rows, "sampler/n_max", "n_max bound", color="gray", linestyle="--")
    return fig, ax, drawn


def plot_step_time(run: Run):
    fig, ax = _figure("Step-time split", "seconds per step")
    steps, phases = timed_steps(run.rows), step_phases(run.rows)
    bottom = [0.0] * len(steps)
    for name, seconds in phases.items():
        ax.bar(steps, seconds, bottom=bottom, width=0.85, color=PHASE_COLORS[name], label=f"time/{name}" if name != "other" else "other (driver)")
        bottom = [b + s for b, s in zip(bottom, seconds)]
    right = ax.twinx()
    right.set_ylabel("fraction")
    sync_steps, sync = sync_fraction(run.rows)
    if sync_steps:
        right.plot(sync_steps, sync, color="black", marker=".", label="sync share (time/sync / time/step, right axis)")
    _line(right, run.rows, "learner/pad_frac", "learner/pad_frac (right axis)", color="tab:purple", marker=".")
    right.set_ylim(bottom=0)
    _merge_legends(ax, right)
    return fig, ax, bool(steps)


def plot_reward_health(run: Run):
    """Per reward term: the share of completions with no extractable answer, and of checks past their deadline."""
    fig, ax = _figure("Reward health", "fraction of the step's completions")
    names = sorted({k for r in run.rows for k in r if k.endswith(("/unparsed_frac", "/timeout_frac"))})
    drawn = False
    for name in names:
        style = {"linestyle": "--"} if name.endswith("/timeout_frac") else {}
        drawn |= _line(ax, run.rows, name, name, **style)
    ax.set_ylim(-0.02, 1.02)
    return fig, ax, drawn


def plot_turns_and_tools(run: Run):
    """Multi-turn runs (rollout.tools, rollout.environment): model turns per rollout, and the step's tool calls with
    the errors and timeouts among them."""
    fig, ax = _figure("Turns and tool calls", "model turns per rollout (mean)")
    drawn = _line(ax, run.rows, "rollout/turns", "rollout/turns", color="tab:blue")
    right = ax.twinx()
    right.set_ylabel("tool calls in the step")
    for name, color in (("tools/calls", "tab:green"), ("tools/errors", "tab:orange"), ("tools/timeouts", "tab:red")):
        drawn |= _line(right, run.rows, name, f"{name} (right axis)", color=color, linestyle="--")
    right.set_ylim(bottom=0)
    _merge_legends(ax, right)
    return fig, ax, drawn


def _merge_legends(left, right) -> None:
    handles, labels = left.get_legend_handles_labels()
    more, more_labels = right.get_legend_handles_labels()
    if handles or more:
        left.legend(handles + more, labels + more_labels, loc="best", fontsize="small")


def held_out_by_compute(run: Run, total: str) -> tuple[list[float], list[float]]:
    """Held-out greedy accuracy against the running total `total` (yield/total_rollouts, ...): before RL at 0, every
    eval/accuracy row at that row's total, after RL at the last row's total. Empty when the run logged no totals."""
    rows = [r for r in run.rows if _finite(r.get(total))]
    if not rows:
        return [], []
    points = []
    before = run.summary.get("eval", {}).get("before", {}).get("accuracy")
    if _finite(before):
        points.append((0.0, before))
    points += [(float(r[total]), float(r["eval/accuracy"])) for r in rows if _finite(r.get("eval/accuracy"))]
    after = run.summary.get("eval", {}).get("after", {}).get("accuracy")
    if _finite(after):
        points.append((float(rows[-1][total]), after))
    return [x for x, _ in points], [y for _, y in points]


def plot_accuracy_by_compute(run: Run):
    """What the compute bought: held-out accuracy against rollouts generated, and against the generated tokens that
    carried learning signal (yield/*)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 4.5), dpi=110, sharey=True)
    fig.suptitle("Held-out greedy accuracy by compute spent")
    drawn = False
    for ax, total, label in ((left, "yield/total_rollouts", "rollouts generated"),
                             (right, "yield/total_informative_tokens", "informative tokens generated")):
        xs, ys = held_out_by_compute(run, total)
        if len(xs) > 0:
            ax.plot(xs, ys, marker="o", color="tab:red", label="held-out greedy accuracy")
            drawn = True
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    left.set_ylabel("accuracy")
    return fig, left, drawn


PLOTS = {
    "reward_accuracy.png": plot_reward_accuracy,
    "entropy_temperature.png": plot_entropy_temperature,
    "response_length.png": plot_length,
    "rollout_allocation.png": plot_allocation,
    "step_time.png": plot_step_time,
    "reward_health.png": plot_reward_health,
    "accuracy_by_compute.png": plot_accuracy_by_compute,
    "turns_and_tools.png": plot_turns_and_tools,
}


def write_plots(run: Run, out_dir: Path) -> tuple[list[str], list[str]]:
    """(files written, files skipped because the run logged none of their metrics)."""
    written, skipped = [], []
    for name, plot in PLOTS.items():
        fig, ax, drawn = plot(run)
        if drawn:
            if not ax.get_legend():
                ax.legend(loc="best", fontsize="small")
            fig.tight_layout()
            fig.savefig(out_dir / name)
            written.append(name)
        else:
            skipped.append(name)
        plt.close(fig)
    return written, skipped


# -- markdown ------------------------------------------------------------------------------------------------------


def _fmt(value) -> str:
    if not _finite(value):
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def eval_table(summary: dict) -> list[str]:
    before, after = summary.get("eval", {}).get("before", {}), summary.get("eval", {}).get("after", {})
    names = [k for k in dict.fromkeys([*before, *after]) if k not in ("num_prompts", "temperature")]
    if not names:
        return ["No held-out evaluation in summary.json."]
    lines = ["| held-out metric | before RL | after RL | change |", "|---|---|---|---|"]
    for k in names:
        b, a = before.get(k), after.get(k)
        change = f"{a - b:+.4g}" if _finite(a) and _finite(b) else "-"
        lines.append(f"| {k} | {_fmt(b)} | {_fmt(a)} | {change} |")
    prompts = after.get("num_prompts", before.get("num_prompts"))
    if prompts:
        lines.append(f"\n{prompts} held-out prompts; accuracy is greedy, pass@k and maj@k sample at temperature {_fmt(after.get('temperature', before.get('temperature')))}.")
    return lines


TRACKED = ("reward/mean", "correct/mean", "policy/entropy", "rollout/temperature", "rollout/length_mean", "rollout/length_correct_mean", "policy/kl",
           "rollout/turns", "tools/calls")


def tools_line(rows: list[dict]) -> list[str]:
    """A multi-turn run's totals over the steps logged: tool calls, the errors and timeouts among them, episodes
    whose environment failed, and the mean of the per-step mean turns (nothing for a single-turn run)."""
    turns = [float(r["rollout/turns"]) for r in rows if _finite(r.get("rollout/turns"))]
    if not turns:
        return []

    def total(name: str) -> int:
        return round(sum(float(r[name]) for r in rows if _finite(r.get(name))))

    line = (f"Turns and tool calls: {statistics.fmean(turns):.2f} model turns per rollout (mean over {len(turns)} steps); "
            f"{total('tools/calls'):,} tool calls, {total('tools/errors'):,} errors, {total('tools/timeouts'):,} timeouts")
    environment_errors = total("tools/environment_errors")
    return [line + (f"; {environment_errors:,} episodes whose environment failed." if environment_errors else ".")]


def training_table(rows: list[dict]) -> list[str]:
    """First step, last step, and the mean over the last tenth of the steps (less noisy than one step)."""
    tail = rows[-max(len(rows) // 10, 1) :]
    lines = [f"| metric | step {rows[0]['step']} | step {rows[-1]['step']} | mean of last {len(tail)} |", "|---|---|---|---|"]
    for name in TRACKED:
        values = [float(r[name]) for r in tail if _finite(r.get(name))]
        if any(_finite(r.get(name)) for r in rows):
            lines.append(f"| {name} | {_fmt(rows[0].get(name))} | {_fmt(rows[-1].get(name))} | {_fmt(statistics.fmean(values) if values else None)} |")
    return lines


def time_table(rows: list[dict]) -> list[str]:
    phases = step_phases(rows)
    if not phases["other"]:
        return ["No step timings in metrics.jsonl."]
    total = sum(sum(v) for v in phases.values())
    lines = ["| phase | median s/step | share of all step time |", "|---|---|---|"]
    for name, seconds in phases.items():
        lines.append(f"| {name} | {statistics.median(seconds):.3f} | {sum(seconds) / total:.1%} |")
    step = [float(r["time/step"]) for r in rows if _finite(r.get("time/step"))]
    completions = [r["rollout/count"] / r["time/step"] for r in rows if _finite(r.get("rollout/count")) and _finite(r.get("time/step"))]
    tokens = [r["rollout/tokens"] / r["time/step"] for r in rows if _finite(r.get("rollout/tokens")) and _finite(r.get("time/step"))]
    lines.append("")
    lines.append(f"Median step {statistics.median(step):.3f} s over {len(step)} steps"
                 + (f"; {statistics.median(completions):.1f} completions/s" if completions else "")
                 + (f", {statistics.median(tokens):.0f} generated tokens/s" if tokens else "") + ".")
    for label, (_, fractions) in (("Weight sync (time/sync / time/step)", sync_fraction(rows)),
                                  ("Learner padding (learner/pad_frac)", series(rows, "learner/pad_frac"))):
        if fractions:
            lines.append(f"{label}: median {statistics.median(fractions):.1%}, max {max(fractions):.1%} of a step.")
        else:
            lines.append(f"{label}: not logged.")
    return lines


def recipe_line(recipe: dict) -> str:
    if not recipe:
        return "No recipe.yaml in the run directory."
    model = recipe.get("model", {}).get("path") or "built-in tiny model"
    rollout, sampler, temperature = recipe.get("rollout", {}), recipe.get("sampler", {}), recipe.get("temperature", {})
    return (
        f"Model: {model}; {rollout.get('prompts_per_step')} prompts x {rollout.get('rollouts_per_prompt')} rollouts per step, "
        f"max {rollout.get('max_new_tokens')} new tokens; advantage {recipe.get('algorithm', {}).get('advantage')}, "
        f"allocation {sampler.get('allocation')}, temperature {temperature.get('mode')}; seed {recipe.get('trainer', {}).get('seed')}."
    )


def markdown(run: Run, written: list[str], skipped: list[str]) -> str:
    s = run.summary
    head = [f"# Run report: {run.path.name}", "", f"Run directory: `{run.path}`", "", recipe_line(run.recipe), ""]
    if s:
        head.append(f"{_fmt(s.get('steps'))} RL steps in {_fmt(s.get('wall_seconds'))} s of wall time (SFT warm-up included).")
        if "yield" in s:
            head.append(describe_yield(s["yield"]).capitalize() + ".")
        if "sft" in s:
            head.append(f"SFT warm-up: {_fmt(s['sft'].get('sft/steps'))} steps, final loss {_fmt(s['sft'].get('sft/loss'))}, {_fmt(s['sft'].get('time/sft'))} s.")
    else:
        head.append(f"No summary.json yet (run still going or stopped); {len(run.rows)} steps logged.")
    tools = tools_line(run.rows)
    body = ["", "## Held-out evaluation", "", *eval_table(s), "", "## Training", "", *training_table(run.rows),
            *(["", *tools] if tools else []), "", "## Step time", "", *time_table(run.rows), "", "## Plots", ""]
    body += [f"![{name.removesuffix('.png')}]({name})" for name in written]
    if skipped:
        body += ["", "Not drawn (their metrics were not logged): " + ", ".join(skipped) + "."]
    return "\n".join(head + body) + "\n"


def write_report(run_dir: Path, out_dir: Path | None = None) -> Path:
    """Plots and report.md in `out_dir` (default RUN_DIR/report); returns the path of report.md."""
    run = load_run(run_dir)
    out_dir = out_dir or run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    written, skipped = write_plots(run, out_dir)
    path = out_dir / "report.md"
    path.write_text(markdown(run, written, skipped))
    return path
