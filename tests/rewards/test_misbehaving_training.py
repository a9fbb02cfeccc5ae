"""A real few-step training run whose recipe carries three broken reward terms: one raises, one returns NaN, one
sleeps past its deadline. The run must finish, count every failure in metrics.jsonl, and leave correctness alone.

Nothing is mocked: a tiny transformers model after a short SFT warm-up on one-digit sums, two rollout workers and a
learner on Ray, real math-verify. The broken terms trigger on what the model wrote (the length of a completion), so the test
recounts every expected failure from samples.jsonl, which logs every rollout of every step here.
"""

import json
import math
from pathlib import Path

import pytest
import yaml

from rewards.math import accuracy
from rlqa import checkpoint
from rlqa.cli import main
from rlqa.models import load_tokenizer

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parent / "fixtures" / "misbehaving.py"
STEPS = 3
MAX_NEW_TOKENS = 12
# One-digit sums whose solution is the boxed answer alone: a short warm-up teaches the tiny model the format, and
# about one answer in ten is then right, so the correctness compared below is not all zeros.
PROBLEMS = [{"prompt": f"{a}+{b}=?\n", "answer": str(a + b), "solution": f"\\boxed{{{a + b}}}"}
            for a in range(10) for b in range(10)]
RECIPE = {
    "model": {"tiny": {"hidden_size": 64, "layers": 2, "heads": 2, "intermediate_size": 128, "max_positions": 32}},
    "data": {"train": {"path": "sums.jsonl", "solution_key": "solution"},
             "test": {"path": "sums.jsonl", "solution_key": "solution", "limit": 4}},
    "sft": {"max_steps": 200, "batch_size": 16, "lr": 3.0e-3},
    "rollout": {"workers": 2, "prompts_per_step": 4, "rollouts_per_prompt": 4, "max_new_tokens": MAX_NEW_TOKENS},
    "rewards": {
        "workers": 2,
        "terms": [
            {"fn": "accuracy"},
            {"fn": "hapo_length", "weight": 0.0},  # logged, not in the total: shows when the history starts
            {"fn": f"{FIXTURES}:raise_on_odd_length", "name": "boom"},
            {"fn": f"{FIXTURES}:nan_on_odd_length", "name": "nan"},
            {"fn": f"{FIXTURES}:sleep_on_length_multiple_of_3", "name": "sleep", "deadline_s": 1.0},
        ],
    },
    "trainer": {"steps": STEPS, "eval_before": False, "eval_k": 2},
    "logging": {"progress": False, "samples_per_step": 64},
}


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("misbehaving")
    (root / "sums.jsonl").write_text("".join(json.dumps(problem) + "\n" for problem in PROBLEMS))
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    assert main(["train", str(recipe), "--run-dir", str(root / "run")]) == 0
    run_dir = root / "run"
    samples = rows(run_dir / "samples.jsonl")
    metrics = rows(run_dir / "metrics.jsonl")
    by_step = [[s for s in samples if s["step"] == step] for step in range(STEPS)]
    assert [len(step) for step in by_step] == [m["rollout/count"] for m in metrics]  # every rollout was logged
    return run_dir, metrics, by_step


def test_the_run_finishes_and_counts_every_failure_per_step(run):
    run_dir, metrics, by_step = run
    assert [m["step"] for m in metrics] == list(range(STEPS))
    assert (run_dir / "summary.json").is_file() and (run_dir / "final").is_dir()
    totals = {"boom/errors": 0, "nan/nonfinite": 0, "sleep/timeouts": 0}
    for m, samples in zip(metrics, by_step):
        lengths = [len(s["completion"]) for s in samples]
        batch = len(samples)
        # boom raises when any completion has odd length: the call fails, so every sample of the step counts.
        expected = {
            "boom/errors": batch if any(n % 2 for n in lengths) else 0,
            "nan/nonfinite": sum(n % 2 for n in lengths),  # one NaN per odd-length completion
            "sleep/timeouts": batch if any(n % 3 == 0 for n in lengths) else 0,
        }
        for key, count in expected.items():
            assert m[f"reward/{key}"] == count
            totals[key] += count
        failures = {k: v for k, v in m.items() if k.startswith("reward/") and k.count("/") == 2 and v
                    and not k.endswith("_frac")}
        assert set(failures) == {f"reward/{key}" for key, count in expected.items() if count}
        assert m["reward/sleep/timeout_frac"] == expected["sleep/timeouts"] / batch
    assert all(count > 0 for count in totals.values()), totals  # each kind of failure happened in this run
    # the healthy terms never fail
    assert all(m[f"reward/{term}/{kind}"] == 0 for m in metrics for term in ("accuracy", "hapo_length")
               for kind in ("errors", "timeouts", "nonfinite", "wrong_length"))


def test_failed_samples_score_zero_for_their_term_and_correctness_is_unaffected(run):
    run_dir, metrics, by_step = run
    gold = {f"sums-{row}": problem["answer"] for row, problem in enumerate(PROBLEMS)}  # the loader's prompt ids
    right = 0
    for m, samples in zip(metrics, by_step):
        completions = [s["completion"] for s in samples]
        # correctness computed here, outside the run, from what the model wrote
        recomputed = accuracy(completions, answer=[gold[s["prompt_id"]] for s in samples])
        assert [s["correct"] for s in samples] == [value == 1.0 for value in recomputed]
        assert m["correct/mean"] == pytest.approx(sum(recomputed) / len(samples))
        assert m["reward/accuracy"] == pytest.approx(sum(recomputed) / len(samples))
        right += sum(recomputed)
        # total = accuracy + boom + nan + sleep, each broken term 0 where it failed ("zero" failure value) else 1
        boom = 0.0 if any(len(c) % 2 for c in completions) else 1.0
        sleep = 0.0 if any(len(c) % 3 == 0 for c in completions) else 1.0
        for s, acc in zip(samples, recomputed):
            nan = 0.0 if len(s["completion"]) % 2 else 1.0
            assert s["reward"] == acc + boom + nan + sleep
            assert not math.isnan(s["reward"])
    assert right > 0  # the warm-up makes some answers right, so the comparison above is not all zeros


def test_held_out_evaluation_reports_the_length_of_correct_answers(run):
    run_dir, _, _ = run
    after = json.loads((run_dir / "summary.json").read_text())["eval"]["after"]
    if after["accuracy"] == 0:
        assert math.isnan(after["mean_length_correct"])
    else:  # at least "\boxed{n}" plus EOS, at most the generation limit
        assert 9 <= after["mean_length_correct"] <= MAX_NEW_TOKENS


def test_the_length_history_is_saved_in_the_checkpoint(run):
    run_dir, _, by_step = run
    tokenizer = load_tokenizer(str(run_dir / "init_model"), False)
    state = checkpoint.read_driver_state(checkpoint.step_dir(run_dir, STEPS))
    saved = dict(state["length_history"]["shortest_correct_length"])
    shortest: dict[str, int] = {}
    for sample in (s for samples in by_step for s in samples if s["correct"]):
        # completion tokens: one per character, plus EOS unless generation stopped at the limit
        length = len(tokenizer(sample["completion"], add_special_tokens=False).input_ids)
        length = length if length >= MAX_NEW_TOKENS else length + 1
        shortest[sample["prompt_id"]] = min(length, shortest.get(sample["prompt_id"], length))
    assert saved == shortest and saved
    # Step 0 had no history, so HAPO gave every sample 0: the step's own answers only count from the next step on.
    assert by_step[0] and rows(run_dir / "metrics.jsonl")[0]["reward/hapo_length"] == 0.0
