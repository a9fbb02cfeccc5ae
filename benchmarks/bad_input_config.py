"""Bad recipes and numbers (issue 28): each case through the real `rlqa check` CLI, as a markdown table of its exit
status and the one line it prints on stderr.

    python benchmarks/bad_input_config.py > /tmp/bad_input_config.md

Each case is a recipe of its own (only the sections it changes) or overrides of recipes/quickstart.yaml.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (case, recipe text, overrides)
CASES = [
    ("learner.lr: .inf", "learner: {lr: .inf}\n", []),
    ("learner.betas: [.nan, .nan]", "learner: {betas: [.nan, .nan]}\n", []),
    ("reward weight: .nan", "rewards: {terms: [{fn: accuracy, weight: .nan}]}\n", []),
    ("reward deadline_s: .inf", "rewards: {terms: [{fn: accuracy, deadline_s: .inf}]}\n", []),
    ("reward kwargs verify_deadline_s: .inf", "rewards: {terms: [{fn: accuracy, kwargs: {verify_deadline_s: .inf}}]}\n", []),
    ("algorithm.clip_high: .inf", "algorithm: {clip_high: .inf}\n", []),
    ("algorithm.kl_coef: -.inf", "algorithm: {kl_coef: -.inf}\n", []),
    ("temperature.t_max: .nan", "temperature: {t_max: .nan}\n", []),
    ("rollout.deadline_s: .inf", "rollout: {deadline_s: .inf}\n", []),
    ("rollout.deadline_s: 1e300", "rollout: {deadline_s: 1.0e+300}\n", []),
    ("rollout.rollouts_per_prompt: 1e9", "rollout: {rollouts_per_prompt: 1000000000}\n", []),
    ("rollout.workers: 100000", "rollout: {workers: 100000}\n", []),
    ("trainer.steps: 1e23 (integer)", "trainer: {steps: 100000000000000000000000}\n", []),
    ("trainer.steps: 1.0e+23 (float)", "trainer: {steps: 1.0e+23}\n", []),
    ("trainer.eval_every: 3e9", "trainer: {eval_every: 3000000000}\n", []),
    ("trainer.seed: -1", "trainer: {seed: -1}\n", []),
    ("duplicate key in a section", "trainer:\n  steps: 3\n  seed: 1\n  steps: 4\n", []),
    ("duplicate section", "trainer: {steps: 3}\ntrainer: {steps: 4}\n", []),
    ("duplicate key in an override", "", ["rollout={workers: 1, workers: 2}"]),
    ("empty override model.path=", "", ["model.path="]),
    ("model.path: ''", "model: {path: ''}\n", []),
    ("missing model.path", "", ["model.path=no_such_model"]),
    ("missing data.train.path", "", ["data.train={path: missing.jsonl}"]),
    ("missing sft.data.path", "", ["sft.data={path: sft_missing.jsonl}"]),
    ("override learner.lr=nan", "", ["learner.lr=.nan"]),
]


def run_case(recipe_text: str, overrides: list[str], directory: Path) -> tuple[int, str]:
    """Exit status and stderr of `rlqa check` on the case's recipe (the quickstart when it has none of its own)."""
    recipe = ROOT / "recipes" / "quickstart.yaml"
    if recipe_text:
        recipe = directory / "recipe.yaml"
        recipe.write_text(recipe_text)
    done = subprocess.run(
        [sys.executable, "-m", "rlqa.cli", "check", str(recipe), *overrides],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    lines = done.stderr.strip().splitlines()
    return done.returncode, lines[0] if len(lines) == 1 else f"({len(lines)} lines) {' / '.join(lines)[:200]}"


def main() -> None:
    print("| case | exit status | the one line printed |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for case, text, overrides in CASES:
            status, line = run_case(text, overrides, Path(tmp))
            line = line.replace(tmp, "TMP").replace(str(ROOT), ".").replace("|", "\\|")
            shown = case + (f" (`{' '.join(overrides)}`)" if overrides else "")
            print(f"| {shown} | {status} | `{line}` |")


if __name__ == "__main__":
    main()
