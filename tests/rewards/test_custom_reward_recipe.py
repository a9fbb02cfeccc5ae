"""recipes/custom_reward.yaml: the README's own-reward example checks, loads by its relative path, and scores."""

import subprocess
import sys
from pathlib import Path

import yaml

from rewards.pipeline import RewardPipeline, RewardTermSpec
from rewards.registry import load_reward_fn
from rlqa.cli import main
from rlqa.recipe_files import load_recipe

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
RECIPE = RECIPES / "custom_reward.yaml"


def test_rlqa_check_accepts_the_recipe_from_any_directory(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "rlqa.cli", "check", str(RECIPE)], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    terms = yaml.safe_load(done.stdout)["rewards"]["terms"]
    assert [(term["fn"], term["weight"]) for term in terms] == [("accuracy", 1.0), ("my_reward.py:repeated_lines", 1.0)]


def test_rlqa_check_fails_in_one_line_on_a_reward_that_does_not_load(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"rewards": {"terms": [{"fn": "my_reward.py:repeated_lines"}]}}))
    assert main(["check", str(recipe)]) == 2  # my_reward.py is not next to this recipe
    error = capsys.readouterr().err
    assert error == f"rlqa: error: reward 'my_reward.py:repeated_lines': no such file {tmp_path / 'my_reward.py'}\n"


def test_the_recipe_function_resolves_and_scores():
    recipe = load_recipe(RECIPE)
    spec = recipe.rewards.terms[1].fn
    repeated_lines = load_reward_fn(spec, base_dir=Path(recipe.base_dir))
    # "a\na\nb": 3 lines, 2 distinct -> -0.1; "a\n\nb": blank lines do not count -> 0; "a\na\na": -0.2
    assert repeated_lines(["a\na\nb", "a\n\nb", "a\na\na"], ["p"] * 3) == [-0.1, 0.0, -0.2]


def test_the_recipe_terms_run_in_the_reward_pipeline():
    recipe = load_recipe(RECIPE)
    terms = [RewardTermSpec(term.fn.rpartition(":")[2], term.fn, term.weight) for term in recipe.rewards.terms]
    with RewardPipeline(terms, base_dir=Path(recipe.base_dir)) as pipeline:
        out = pipeline(["3+4=7\n3+4=7\n\\boxed{7}", "3+4=8\n\\boxed{8}"], ["3+4=?\n"] * 2, {"answer": ["7", "7"]})
    # correct with one repeated line: 1 - 0.1 = 0.9; wrong without repeats: 0 + 0 = 0
    assert out.total == [0.9, 0.0]
    assert out.correct == [True, False]
    assert out.metrics["reward/repeated_lines"] == -0.05


def test_the_readme_example_is_the_recipe_function_and_at_most_10_lines():
    readme = (REPO / "README.md").read_text()
    block = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert "def repeated_lines(" in block and len(block.splitlines()) <= 10
    namespace: dict = {}
    exec(block, namespace)
    completions = ["a\na\nb", "a\n\nb", "x\nx\nx\ny"]
    expected = load_reward_fn(f"{RECIPES}/my_reward.py:repeated_lines")(completions, ["p"] * 3)
    assert namespace["repeated_lines"](completions, ["p"] * 3) == expected == [-0.1, 0.0, -0.2]


def test_rlqa_check_names_a_function_that_cannot_take_trls_keyword_call(tmp_path, capsys):
    (tmp_path / "old_style.py").write_text("def f(completions, prompts):\n    return [0.0] * len(completions)\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"rewards": {"terms": [{"fn": "old_style.py:f"}]}}))
    assert main(["check", str(recipe)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("rlqa: error: reward 'old_style.py:f': f(completions, prompts)")
    assert "has no **kwargs" in error
