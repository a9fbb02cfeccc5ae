"""Every shipped recipe is valid, and the variants for the built-in task differ from the quickstart only in their RL
stage (so their figures are comparable, and a change to the quickstart's model or data reaches them too)."""

from pathlib import Path

import pytest

from rlqa.cli import main
from rlqa.recipe_files import check_paths, load_recipe, resolve_path
from rlqa.data.loaders import load_examples
from rlqa.errors import UserError
from rlqa.models import create_model_dir

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
ALL = sorted(RECIPES.rglob("*.yaml"))
BUILT_IN_VARIANTS = ["ppo.yaml", "dapo.yaml", "dr_grpo.yaml"]
GPU = sorted((RECIPES / "gpu").glob("*.yaml"))


@pytest.mark.parametrize("path", ALL, ids=[str(p.relative_to(RECIPES)) for p in ALL])
def test_every_recipe_passes_rlqa_check(path, capsys):
    try:
        check_paths(load_recipe(path))
    except UserError as err:  # a recipe for another machine (its model or data are not here): check names the path
        assert main(["check", str(path)]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"rlqa: error: {err}"]
        assert ".path: " in str(err)
        return
    assert main(["check", str(path)]) == 0
    assert "algorithm:" in capsys.readouterr().out


@pytest.mark.parametrize("name", BUILT_IN_VARIANTS)
def test_built_in_variants_share_the_quickstarts_model_data_and_warm_up(name):
    quickstart, variant = load_recipe(RECIPES / "quickstart.yaml"), load_recipe(RECIPES / name)
    assert variant.model == quickstart.model and variant.data == quickstart.data and variant.sft == quickstart.sft
    assert variant.rollout.max_new_tokens == quickstart.rollout.max_new_tokens
    assert _rl_stage(variant) != _rl_stage(quickstart)


def _rl_stage(recipe):
    return recipe.algorithm, recipe.rewards, recipe.sampler, recipe.temperature, recipe.learner


@pytest.mark.parametrize("path", GPU, ids=[p.name for p in GPU])
def test_gpu_recipes_name_real_data_and_say_which_model_path_is_missing(path, tmp_path):
    recipe = load_recipe(path)
    for spec in (recipe.data.train, recipe.data.test):
        file = resolve_path(recipe, spec.path)
        if not file.is_file():
            pytest.skip(f"{file}: the shared benchmark data is not in this checkout's neighbourhood")
        # the loader reads the first rows in the recipe's format (chat templating needs the real tokenizer)
        examples = load_examples(file, spec.model_copy(update={"limit": 3, "chat_template": False, "system_prompt": None}))
        assert len(examples) == 3 and all(e.answer for e in examples)
    if Path(recipe.model.path).is_dir():
        pytest.skip(f"{recipe.model.path} exists here")
    # without the model a run stops with the key to override, as for any other recipe (exit 2, one line)
    with pytest.raises(UserError, match=r"model\.path: .*Qwen2\.5-1\.5B-Instruct is not a Hugging Face model directory"):
        create_model_dir(recipe.model, tmp_path / "unused", seed=0, base_dir=recipe.base_dir)
