"""`rlqa eval`: held-out accuracy and pass@k of a run directory, a checkpoint, or any Hugging Face model directory.

It runs the very evaluation `rlqa train` runs before and after RL (same rollout workers, same seeds, same
correctness function), so its numbers are comparable with a run's summary.json.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from rlqa.cluster import ray_session

from rlqa import checkpoint
from rlqa.config import DatasetConfig, Recipe, load_recipe
from rlqa.data.sources import build_examples
from rlqa.errors import UserError
from rlqa.heldout import evaluate, scorer
from rlqa.models import load_tokenizer
from rlqa.rollout.group import RolloutGroup
from rewards.pipeline import RewardPipeline


def _recipe_of(run_dir: Path) -> Recipe:
    path = run_dir / "recipe.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir}: no recipe.yaml (not a run directory)")
    return load_recipe(path)  # its base_dir keeps relative paths pointing where the run found them


def _checkpoint_model(ckpt: Path, run_dir: Path, recipe: Recipe, scratch: Path) -> Path:
    """A Hugging Face directory of a checkpoint's policy: the base model's config and tokenizer, its weights."""
    try:
        checkpoint.verify(ckpt)
    except checkpoint.CheckpointError as err:
        raise UserError(str(err)) from None
    base = run_dir / "init_model" if recipe.model.path is None else Path(recipe.base_dir) / recipe.model.path
    for item in base.iterdir():
        if item.is_file() and not item.name.endswith((".safetensors", ".bin")) and item.name != "model.safetensors.index.json":
            (scratch / item.name).symlink_to(item.resolve())
    (scratch / "model.safetensors").symlink_to((ckpt / "policy.safetensors").resolve())
    return scratch


def resolve_target(target: Path, scratch: Path) -> tuple[Path, Recipe]:
    """(model directory, recipe) for a run directory, a checkpoint directory or a Hugging Face model directory."""
    if not target.exists():
        raise UserError(f"{target}: no such file or directory")
    if (target / "recipe.yaml").is_file():  # a run directory: its final policy, else its newest good checkpoint
        recipe = _recipe_of(target)
        if (target / "final" / "config.json").is_file():
            return target / "final", recipe
        ckpt = checkpoint.latest_good(target)
        if ckpt is None:
            raise UserError(f"{target}: the run has neither final/ nor a usable checkpoint")
        return _checkpoint_model(ckpt, target, recipe, scratch), recipe
    if (target / checkpoint.MANIFEST).is_file():  # RUN_DIR/checkpoints/step_X
        run_dir = target.parent.parent
        recipe = _recipe_of(run_dir)
        return _checkpoint_model(target, run_dir, recipe, scratch), recipe
    if (target / "config.json").is_file():
        return target, Recipe()
    raise UserError(f"{target}: not a run directory, a checkpoint or a Hugging Face model directory")


def evaluate_target(target: Path, *, data: str | None = None, k: int | None = None, address: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="rlqa-eval-") as scratch:
        model_dir, recipe = resolve_target(Path(target), Path(scratch))
        test_spec = recipe.data.test
        if data is not None:
            test_spec = DatasetConfig(path=str(Path(data).resolve()))
        recipe = recipe.model_copy(update={"model": recipe.model.model_copy(update={"path": str(model_dir)})})
        tokenizer = load_tokenizer(model_dir, recipe.model.trust_remote_code)
        examples = build_examples(test_spec, recipe, tokenizer, "--data" if data else "data.test")
        prompt_tokens = {e.prompt_id: tuple(tokenizer(e.prompt, add_special_tokens=False).input_ids) for e in examples}
        t = recipe.trainer
        cpus = max(int(recipe.rollout.workers * recipe.rollout.cpus_per_worker + 0.999), 1)
        with ray_session(address, num_cpus=cpus, configure_logging=False), RewardPipeline(
            [], correctness=recipe.rewards.correctness, base_dir=Path(recipe.base_dir)
        ) as pipeline:
            group = RolloutGroup(str(model_dir), recipe)
            results = evaluate(
                group, examples, prompt_tokens, scorer(pipeline),
                seed=t.seed, k=k or t.eval_k, temperature=t.eval_temperature,
                max_new_tokens=recipe.rollout.max_new_tokens,
            )
    return {"target": str(target), "model": str(model_dir), **results}
