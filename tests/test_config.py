"""Recipes: validation errors name the file and key path; overrides; `rlqa check`; exit status 2 for user errors."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlqa.cli import main
from rlqa.recipe_files import apply_override, load_recipe, reference_markdown, to_yaml
from rlqa.errors import UserError

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_quickstart_validates_and_round_trips():
    recipe = load_recipe(QUICKSTART)
    assert recipe.rollout.workers == 2 and recipe.sft is not None
    again = yaml.safe_load(to_yaml(recipe))
    assert again["trainer"]["steps"] == recipe.trainer.steps
    assert "base_dir" not in again


def test_overrides_parse_yaml_values_and_create_sections():
    recipe = load_recipe(QUICKSTART, ["trainer.steps=7", "learner.lr=3e-4", "data.train.levels=[1]", "sft=null"])
    assert recipe.trainer.steps == 7 and recipe.learner.lr == 3e-4
    assert recipe.data.train.levels == [1] and recipe.sft is None
    raw: dict = {}
    apply_override(raw, "a.b.c=true")
    assert raw == {"a": {"b": {"c": True}}}


@pytest.mark.parametrize(
    "text, message",
    [
        ("trainer: {stepz: 3}\n", "r.yaml: trainer.stepz: unknown key"),
        ("trainer: {steps: many}\n", "r.yaml: trainer.steps: Input should be a valid integer"),
        ("rollout: {workers: 0}\n", "r.yaml: rollout.workers: Input should be greater than or equal to 1"),
        ("rewards: {terms: [{weight: 2}]}\n", "r.yaml: rewards.terms.0.fn: required key is missing"),
        ("trainer: [1, 2\n", "r.yaml: line 2: invalid YAML"),
        ("- 1\n- 2\n", "a recipe is a mapping of sections, got list"),
        ("data: {train: {task: arithmetic, path: x.jsonl}}\n", "data.train: give exactly one of 'path'"),
        ("temperature: {initial: 3.0}\n", "temperature: need t_min <= initial <= t_max"),
        ("sampler: {bounds_schedule: e4}\n", "r.yaml: sampler.bounds_schedule: a list of phases, or the named schedule 'e3'; got 'e4'"),
        ("sampler: {bounds_schedule: e3, n_max: 12}\n", "r.yaml: sampler: bounds_schedule sets the bounds: leave out n_min, n_max,"),
        ("sampler: {bounds_schedule: [{from_fraction: 0.5, n_min: 8, n_max: 8}]}\n", "must start at 0 and increase, got [0.5]"),
        ("sampler: {bounds_schedule: [{from_fraction: 1, n_min: 8, n_max: 8}]}\n", "sampler.bounds_schedule.0.from_fraction: Input should be less than 1"),
        ("sampler: {bounds_schedule: e3}\nrollout: {rollouts_per_prompt: 4}\n", "bounds_schedule phase 1: need n_min <= rollouts_per_prompt <= n_max, got 8, 4, 8"),
        ("sampler: {bounds_schedule: e3, allocation: uniform}\n", "sampler: allocation 'uniform' gives every prompt rollouts_per_prompt"),
        # issue 28: non-finite numbers in any key (lists and reward terms included), absurd sizes, duplicate keys
        ("learner: {lr: .inf}\n", "r.yaml: learner.lr: Input should be a finite number"),
        ("learner: {betas: [.nan, .nan]}\n", "r.yaml: learner.betas.0: Input should be a finite number"),
        ("rewards: {terms: [{fn: accuracy, weight: .nan}]}\n", "r.yaml: rewards.terms.0.weight: Input should be a finite number"),
        ("rewards: {terms: [{fn: accuracy, deadline_s: .inf}]}\n", "r.yaml: rewards.terms.0.deadline_s: Input should be a finite number"),
        ("rewards: {terms: [{fn: accuracy, kwargs: {verify_deadline_s: .nan}}]}\n", "rewards.terms.0.kwargs: verify_deadline_s: nan is not a finite number"),
        ("algorithm: {clip_high: .inf}\n", "r.yaml: algorithm.clip_high: Input should be a finite number"),
        ("rollout: {deadline_s: 1.0e+300}\n", "r.yaml: rollout.deadline_s: Input should be less than or equal to 604800"),
        ("rollout: {rollouts_per_prompt: 1000000000}\n", "r.yaml: rollout.rollouts_per_prompt: Input should be less than or equal to 4096"),
        ("rollout: {workers: 100000}\n", "r.yaml: rollout.workers: Input should be less than or equal to 4096"),
        ("trainer: {steps: 100000000000000000000000}\n", "r.yaml: trainer.steps: Input should be less than or equal to 10000000"),
        ("trainer: {eval_every: 3000000000}\n", "r.yaml: trainer.eval_every: 3000000000 is out of range (at most 2147483647"),
        ("model: {path: ''}\n", "r.yaml: model.path: String should have at least 1 character"),
        ("trainer:\n  steps: 3\n  seed: 1\n  steps: 4\n", "r.yaml: line 4: key 'steps' is given twice"),
        ("sampler: {dynamic_sampling_signal: correct}\n", "r.yaml: sampler.dynamic_sampling_signal: Input should be 'accuracy' or 'reward'"),
        ("sampler: {dynamic_sampling: true}\nrewards: {correctness: null}\n", "sampler.dynamic_sampling_signal: accuracy reads the rewards.correctness verdicts, which is null"),
    ],
)
def test_bad_recipes_name_the_file_and_key(tmp_path, text, message):
    with pytest.raises(UserError) as err:
        load_recipe(write(tmp_path, text))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bounds_schedule_e3_is_its_three_phases(tmp_path):
    recipe = load_recipe(write(tmp_path, "sampler: {bounds_schedule: e3}\n"))
    assert [(p.from_fraction, p.n_min, p.n_max) for p in recipe.sampler.phases()] == [(0, 8, 8), (1 / 3, 6, 10), (2 / 3, 4, 12)]
    spelled = "sampler: {bounds_schedule: [{from_fraction: 0, n_min: 8, n_max: 8}, {from_fraction: 0.5, n_min: 6, n_max: 10}]}\n"
    assert [p.n_max for p in load_recipe(write(tmp_path, spelled)).sampler.phases()] == [8, 10]


def test_bad_override():
    with pytest.raises(UserError, match="expected key.path=value"):
        load_recipe(QUICKSTART, ["trainer.steps"])
    with pytest.raises(UserError, match="override .trainer.steps.x=1.: trainer.steps is not a section"):
        load_recipe(QUICKSTART, ["trainer.steps.x=1"])


def test_bad_override_values():
    with pytest.raises(UserError, match="override 'model.path=': empty value"):  # was: the tiny model, silently
        load_recipe(QUICKSTART, ["model.path="])
    with pytest.raises(UserError, match="override 'rollout={workers: 1, workers: 2}': line 1: key 'workers' is given twice"):
        load_recipe(QUICKSTART, ["rollout={workers: 1, workers: 2}"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.path=no_such_model", "model.path: {base}/no_such_model is not a Hugging Face model directory (no config.json)"),
        ("data.train={path: missing.jsonl}", "data.train.path: file not found: {base}/missing.jsonl"),
        ("data.test={path: gone.parquet}", "data.test.path: file not found: {base}/gone.parquet"),
    ],
)
def test_check_refuses_missing_paths(capsys, override, message):
    assert main(["check", str(QUICKSTART), override]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["rlqa: error: " + message.format(base=QUICKSTART.parent)]


def test_missing_recipe_file(tmp_path):
    with pytest.raises(UserError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_check_prints_the_resolved_recipe(capsys):
    assert main(["check", str(QUICKSTART), "trainer.steps=3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["steps"] == 3
    assert printed["algorithm"]["clip_high"] == 0.28


def test_user_errors_exit_2_with_one_line_and_no_traceback(tmp_path):
    bad = write(tmp_path, "trainer: {stepz: 3}\n")
    done = subprocess.run([sys.executable, "-m", "rlqa.cli", "check", str(bad)], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"rlqa: error: {bad}: trainer.stepz: unknown key"]
    assert done.stdout == ""


def test_train_with_a_missing_dataset_file_exits_2_before_starting_anything(tmp_path):
    bad = write(tmp_path, "data: {train: {path: missing.jsonl}}\nsft: null\n")
    done = subprocess.run(
        [sys.executable, "-m", "rlqa.cli", "train", str(bad), "--run-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("rlqa: error: data.train.path: file not found:") and "missing.jsonl" in last
    assert "Traceback" not in done.stderr


def test_reference_lists_every_section():
    text = reference_markdown()
    for key in ("`trainer.steps`", "`rollout.workers`", "`learner.zero_stage`", "`sft.max_steps`", "`rewards.terms[].fn`"):
        assert key in text


def test_docs_recipe_reference_is_up_to_date():
    """docs/recipe.md is generated; a key added to the schema without regenerating it fails here."""
    docs = Path(__file__).resolve().parents[1] / "docs" / "recipe.md"
    assert docs.read_text() == reference_markdown() + "\n", "regenerate: python -m rlqa.recipe_files > docs/recipe.md"


def test_overrides_are_accepted_anywhere_on_the_command_line(capsys):
    from rlqa.cli import _parse

    args = _parse(["train", "r.yaml", "a.b=1", "--run-dir", "D", "trainer.steps=1", "--resume", "c=[1, 2]"])
    assert args.overrides == ["a.b=1", "trainer.steps=1", "c=[1, 2]"] and str(args.run_dir) == "D" and args.resume
    assert _parse(["check", str(QUICKSTART), "trainer.steps=3"]).overrides == ["trainer.steps=3"]
    with pytest.raises(SystemExit) as exit_:
        _parse(["train", "r.yaml", "--run-dir", "D", "--bogus", "x=1"])
    assert exit_.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse(["report", "D", "x=1"])  # report takes no overrides


def test_reward_terms_need_distinct_names(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("rewards: {terms: [{fn: accuracy}, {fn: 'my.py:accuracy'}]}\n")
    with pytest.raises(UserError, match="rewards: .*more than one term is named 'accuracy'; give each a distinct name"):
        load_recipe(recipe)
    recipe.write_text("rewards: {terms: [{fn: accuracy}, {fn: 'my.py:accuracy', name: mine}]}\n")
    assert load_recipe(recipe).rewards.term_names() == ["accuracy", "mine"]
