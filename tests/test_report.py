"""`rlqa report` on a synthetic run directory: which plots are drawn, that they are real PNGs, and the figures in
report.md, worked out by hand from the rows below."""

import json

import matplotlib.image
import pytest

from rlqa.cli import main
from rlqa.errors import UserError
from rlqa.report import (
    held_out_by_compute, load_run, plot_accuracy_by_compute, plot_reward_accuracy, plot_reward_health, plot_turns_and_tools,
    step_phases, write_report,
)

# two steps; per-phase seconds chosen so every share is exact
ROWS = [
    {"step": 0, "reward/mean": 0.25, "correct/mean": 0.25, "policy/entropy": 0.8, "policy/target_entropy": 0.8,
     "rollout/temperature": 1.0, "rollout/length_mean": 30.0, "rollout/length_correct_mean": None,
     "sampler/alloc_min": 4.0, "sampler/alloc_mean": 8.0, "sampler/alloc_max": 12.0, "rollout/count": 16.0, "rollout/tokens": 400.0,
     "time/generate": 2.0, "time/reward": 0.5, "time/train": 1.0, "time/sync": 0.25, "time/step": 4.0,
     "reward/accuracy/unparsed_frac": 0.5, "reward/accuracy/timeout_frac": 0.0, "learner/pad_frac": 0.125,
     "yield/total_rollouts": 16.0, "yield/total_informative_tokens": 100.0},
    {"step": 1, "reward/mean": 0.75, "correct/mean": 0.5, "policy/entropy": 0.7, "policy/target_entropy": 0.8,
     "rollout/temperature": 1.1, "rollout/length_mean": 20.0, "rollout/length_correct_mean": 18.0,
     "sampler/alloc_min": 2.0, "sampler/alloc_mean": 8.0, "sampler/alloc_max": 14.0, "rollout/count": 16.0, "rollout/tokens": 600.0,
     "time/generate": 3.0, "time/reward": 0.5, "time/train": 1.5, "time/sync": 0.25, "time/step": 6.0,
     "eval/accuracy": 0.6, "eval/pass@4": 0.8, "eval/mean_length": 19.0,
     "reward/accuracy/unparsed_frac": 0.25, "reward/accuracy/timeout_frac": 0.125, "learner/pad_frac": 0.0625,
     "yield/total_rollouts": 32.0, "yield/total_informative_tokens": 250.0},
]
SUMMARY = {"eval": {"before": {"accuracy": 0.5, "pass@4": 0.75, "num_prompts": 200, "temperature": 1.0},
                    "after": {"accuracy": 0.625, "pass@4": 0.875, "num_prompts": 200, "temperature": 1.0}},
           "steps": 2, "wall_seconds": 42.0,
           "yield": {"rollouts": 32, "tokens": 1000, "informative_rollouts": 12, "informative_tokens": 250,
                     "informative_rollout_frac": 0.375, "informative_token_frac": 0.25}}


def make_run(tmp_path, rows=ROWS, summary=SUMMARY):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if summary is not None:
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_other_is_step_time_minus_the_timed_phases(tmp_path):
    phases = step_phases(load_run(make_run(tmp_path)).rows)
    # step 0: 4 - (2 + 0.5 + 1 + 0.25) = 0.25; step 1: 6 - (3 + 0.5 + 1.5 + 0.25) = 0.75
    assert phases["other"] == [0.25, 0.75]
    assert phases["generate"] == [2.0, 3.0]


def test_report_writes_seven_pngs_and_the_figures(tmp_path):
    run = make_run(tmp_path)
    assert main(["report", str(run)]) == 0
    out = run / "report"
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["accuracy_by_compute.png", "entropy_temperature.png", "response_length.png", "reward_accuracy.png", "reward_health.png",
                    "rollout_allocation.png", "step_time.png"]
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.image.imread(out / name).shape[:2] == (495, 880)  # 8 x 4.5 inches at 110 dpi

    md = (out / "report.md").read_text()
    for name in pngs:
        assert f"]({name})" in md
    # held-out: 0.625 - 0.5 = +0.125, 0.875 - 0.75 = +0.125
    assert "| accuracy | 0.5 | 0.625 | +0.125 |" in md
    assert "| pass@4 | 0.75 | 0.875 | +0.125 |" in md
    # medians of two steps are their means; shares of all 10 s: generate 5, reward 1, train 2.5, sync 0.5, other 1
    assert "| generate | 2.500 | 50.0% |" in md
    assert "| reward | 0.500 | 10.0% |" in md
    assert "| train | 1.250 | 25.0% |" in md
    assert "| sync | 0.250 | 5.0% |" in md
    assert "| other | 0.500 | 10.0% |" in md
    # completions/s: 16/4 = 4 and 16/6 = 2.667, median 3.333; tokens/s: 400/4 = 600/6 = 100
    assert "Median step 5.000 s over 2 steps; 3.3 completions/s, 100 generated tokens/s." in md
    assert "2 RL steps in 42 s" in md
    assert "Yield: 12 of 32 rollouts (37.5%) and 250 of 1,000 generated tokens (25.0%) carried learning signal." in md
    # sync shares 0.25/4 = 6.25% and 0.25/6 = 4.17%, median (their mean) 5.2%; pad_frac 12.5% and 6.25%
    assert "Weight sync (time/sync / time/step): median 5.2%, max 6.2% of a step." in md
    assert "Learner padding (learner/pad_frac): median 9.4%, max 12.5% of a step." in md


def test_sync_and_pad_fractions_say_when_they_were_not_logged(tmp_path):
    rows = [{k: v for k, v in row.items() if k not in ("time/sync", "learner/pad_frac")} for row in ROWS]
    md = write_report(make_run(tmp_path, rows)).read_text()
    assert "Weight sync (time/sync / time/step): not logged." in md
    assert "Learner padding (learner/pad_frac): not logged." in md


def test_held_out_series_are_in_the_reward_plot(tmp_path):
    _, ax, drawn = plot_reward_accuracy(load_run(make_run(tmp_path)))
    labels = ax.get_legend_handles_labels()[1]
    assert drawn
    assert "eval/accuracy (held-out)" in labels and "eval/pass@4 (held-out)" in labels
    assert "held-out greedy accuracy after RL (0.625)" in labels


def test_reward_health_plots_unparsed_and_timeout_fractions(tmp_path):
    _, ax, drawn = plot_reward_health(load_run(make_run(tmp_path)))
    lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    assert drawn and lines == {"reward/accuracy/timeout_frac": [0.0, 0.125], "reward/accuracy/unparsed_frac": [0.5, 0.25]}


def test_plots_of_metrics_never_logged_are_skipped_and_named(tmp_path):
    rows = [{k: v for k, v in r.items() if not k.startswith("sampler/")} for r in ROWS]
    path = write_report(make_run(tmp_path, rows, summary=None))
    assert not (path.parent / "rollout_allocation.png").exists()
    md = path.read_text()
    assert "Not drawn (their metrics were not logged): rollout_allocation.png, turns_and_tools.png." in md
    assert "No summary.json yet" in md


def test_bad_metrics_line_names_the_file_and_line(tmp_path):
    run = make_run(tmp_path)
    with (run / "metrics.jsonl").open("a") as f:
        f.write("{not json\n")
    with pytest.raises(UserError, match=r"metrics.jsonl: line 3: not JSON"):
        load_run(run)


def test_missing_run_directory_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics.jsonl: not found" in err


def test_held_out_accuracy_is_plotted_against_rollouts_and_informative_tokens(tmp_path):
    run = load_run(make_run(tmp_path))
    # before RL at 0; step 1's eval (0.6) at its totals; after RL (0.625) at the last row's totals
    assert held_out_by_compute(run, "yield/total_rollouts") == ([0.0, 32.0, 32.0], [0.5, 0.6, 0.625])
    assert held_out_by_compute(run, "yield/total_informative_tokens") == ([0.0, 250.0, 250.0], [0.5, 0.6, 0.625])
    fig, _, drawn = plot_accuracy_by_compute(run)
    assert drawn and [ax.get_xlabel() for ax in fig.axes] == ["rollouts generated", "informative tokens generated"]
    (tmp_path / "old").mkdir()
    old = load_run(make_run(tmp_path / "old", [{k: v for k, v in r.items() if not k.startswith("yield/")} for r in ROWS]))
    assert held_out_by_compute(old, "yield/total_rollouts") == ([], [])


def test_a_multi_turn_run_reports_its_turns_and_tool_calls(tmp_path):
    tools = [{"rollout/turns": 1.5, "tools/calls": 10.0, "tools/errors": 2.0, "tools/timeouts": 1.0, "tools/environment_errors": 0.0},
             {"rollout/turns": 2.5, "tools/calls": 30.0, "tools/errors": 1.0, "tools/timeouts": 0.0, "tools/environment_errors": 3.0}]
    run = make_run(tmp_path, [{**row, **more} for row, more in zip(ROWS, tools)])
    _, ax, drawn = plot_turns_and_tools(load_run(run))
    assert drawn and {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()} == {"rollout/turns": [1.5, 2.5]}
    md = write_report(run).read_text()
    assert "](turns_and_tools.png)" in md
    # turns: mean of the step means (1.5 + 2.5) / 2 = 2; calls 10 + 30 = 40, errors 2 + 1 = 3, timeouts 1 + 0 = 1
    assert "Turns and tool calls: 2.00 model turns per rollout (mean over 2 steps); 40 tool calls, 3 errors, 1 timeouts; 3 episodes whose environment failed." in md
    # the training table: first, last, and the mean of the last tenth (the last step, of two)
    assert "| rollout/turns | 1.5 | 2.5 | 2.5 |" in md and "| tools/calls | 10 | 30 | 30 |" in md
