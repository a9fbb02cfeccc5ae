"""Every recipe `rlqa check` accepts either trains or stops with exit status 2 and one line: the schema is the one
place a constraint lives, so nothing it lets through may crash `rlqa train` with a traceback.

Hypothesis draws recipes from the schema itself: a few keys at a time, each from its type and bounds (Literal
choices, numeric ranges, optional sections), on top of a tiny GRPO or PPO recipe. Those the schema refuses are out of
scope; each accepted one runs what `rlqa train` builds and one whole RL step in-process (tests/in_process.py: the real
driver state, learner, generation backend and reward pipeline, no Ray). One fixed recipe runs `rlqa train` itself.

Left out of the draw: the resources Ray reserves (CPUs, GPUs, addresses: the cluster's question, not the
schema's), logging sinks, reward terms and the SFT warm-up (their own tests), file datasets (tests/data), and
numbers past where one step of a tiny model means anything (learning rates, temperatures).
"""

import json
import math
import types
import typing
from pathlib import Path

import pytest
import yaml
from annotated_types import Ge, Gt, Le, Lt
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import in_process
from rlqa.cli import main
from rlqa.config import Recipe, Section
from rlqa.recipe_files import apply_override, validate_recipe
from rlqa.errors import UserError
from rlqa.placement import layout
from rlqa.rollout.backends import check_backend
from rlqa.trainer import rl_step
from rewards.pipeline import RewardPipeline, RewardTermSpec

TINY = {"hidden_size": 16, "layers": 1, "heads": 2, "intermediate_size": 32, "max_positions": 64}
BASES = {
    "grpo": {
        "model": {"tiny": TINY},
        "data": {"train": {"task": "arithmetic", "size": 12, "levels": [1, 2]}, "test": {"task": "arithmetic", "split": "test", "size": 2}},
        "rollout": {"workers": 1, "prompts_per_step": 2, "rollouts_per_prompt": 2, "max_new_tokens": 6},
        "trainer": {"steps": 2, "eval_before": False, "eval_after": False},
        "logging": {"progress": False},
    },
}
BASES["ppo"] = {**BASES["grpo"], "algorithm": {"name": "ppo", "advantage": "gae", "critic": {}}}

SKIPPED = (
    "base_dir", "model.path", "model.trust_remote_code", "logging.", "rewards.", "sft.", "ray.address", "ray.num_",
    "trainer.output_dir", "data.train.path", "data.test.path", "data.train.task", "data.test.task", "rollout.cpus",
    "rollout.gpus", "rollout.deadline_s", "learner.cpus", "learner.gpus", "algorithm.critic.path",
)
RANGES = {  # (low, high) where the schema's bound is open or too wide for a tiny model's step
    "model.tiny.hidden_size": (1, 24), "model.tiny.intermediate_size": (1, 24), "model.tiny.max_positions": (1, 64),
    "data.train.size": (1, 24), "data.test.size": (1, 4), "data.train.limit": (1, 24), "data.test.limit": (1, 4),
    "rollout.max_new_tokens": (1, 8), "learner.micro_batch_tokens": (1, 64), "learner.lr": (1e-6, 1e-2),
    "algorithm.critic.lr": (1e-6, 1e-2), "algorithm.critic.vf_coef": (0.01, 5.0), "algorithm.kl_target": (1e-4, 1.0),
    "temperature.initial": (0.3, 3.0), "temperature.t_min": (0.3, 3.0), "temperature.t_max": (0.3, 3.0),
    "temperature.target": (0.1, 5.0), "sampler.prior_strength": (0.1, 10.0), "algorithm.cispo_max_ratio": (0.5, 10.0),
    "algorithm.dual_clip": (1.01, 10.0), "algorithm.clip_low": (0.0, 0.9), "algorithm.clip_high": (0.0, 2.0),
    "algorithm.kl_coef": (0.0, 0.5), "algorithm.entropy_coef": (0.0, 0.1), "learner.weight_decay": (0.0, 0.1),
    "learner.grad_clip": (0.01, 10.0), "algorithm.critic.value_clip": (0.01, 1.0),
}
CHOICES = {  # string keys: the values a recipe would name
    "sampler.rank_column": [None, "rank", "level"],
    "sampler.bounds_schedule": [None, "e3", [{"from_fraction": 0, "n_min": 1, "n_max": 2}, {"from_fraction": 0.5, "n_min": 1, "n_max": 3}]], "checkpoint.best_metric": [None, "reward/mean", "eval/accuracy"],
}


def _bounds(path: str, metadata: list, integer: bool) -> tuple[float, float]:
    """The schema's bounds on a number (an open bound: the next value inside), narrowed by RANGES."""
    step = (lambda x, towards: x + (1 if towards > x else -1)) if integer else math.nextafter
    low, high = RANGES.get(path, (-math.inf, math.inf))
    for bound in metadata:
        if isinstance(bound, Ge):
            low = max(low, bound.ge)
        elif isinstance(bound, Gt):
            low = max(low, step(bound.gt, math.inf))
        elif isinstance(bound, Le):
            high = min(high, bound.le)
        elif isinstance(bound, Lt):
            high = min(high, step(bound.lt, -math.inf))
    low = 0 if low == -math.inf else low
    return low, (low + 3 if high == math.inf else high)


def _strategy(path: str, annotation, metadata: list) -> st.SearchStrategy | None:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if path in CHOICES:
        return st.sampled_from(CHOICES[path])
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        value = _strategy(path, inner, metadata)
        return None if value is None else st.none() | value
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return st.integers(*map(int, _bounds(path, metadata, integer=True)))
    if annotation is float:
        return st.floats(*_bounds(path, metadata, integer=False), allow_nan=False)
    if origin is list and args == (int,):
        return st.lists(st.integers(0, 6), min_size=0, max_size=3)
    return None  # free text, mappings, pairs: nothing a draw would learn from


def leaves(model: type[BaseModel], prefix: str = "") -> dict[str, st.SearchStrategy]:
    """A strategy for every key of the schema that is drawn, by dotted path."""
    found = {}
    for name, field in model.model_fields.items():
        path = prefix + name
        if path.startswith(SKIPPED):
            continue
        section = next((a for a in typing.get_args(field.annotation) or (field.annotation,) if isinstance(a, type) and issubclass(a, Section)), None)
        if section is not None:
            found.update(leaves(section, path + "."))
        elif (strategy := _strategy(path, field.annotation, field.metadata)) is not None:
            found[path] = strategy
    return found


LEAVES = leaves(Recipe)


@st.composite
def recipes(draw) -> tuple[str, dict[str, object]]:
    base = draw(st.sampled_from(sorted(BASES)))
    keys = draw(st.lists(st.sampled_from(sorted(LEAVES)), max_size=4, unique=True))
    return base, {key: draw(LEAVES[key]) for key in keys}


@pytest.fixture(scope="module")
def rewards():
    with RewardPipeline([RewardTermSpec("accuracy", "accuracy"), RewardTermSpec("length_penalty", "length_penalty")]) as pipeline:
        yield pipeline


def test_the_draw_covers_every_section():
    assert {path.split(".")[0] for path in LEAVES} == {
        "model", "data", "rollout", "learner", "algorithm", "sampler", "temperature", "trainer", "checkpoint", "ray"
    }
    assert {"sampler.skip_mastered", "algorithm.policy_loss", "algorithm.critic.kind", "model.tiny.heads"} <= set(LEAVES)


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(recipes())
def test_what_check_accepts_builds_and_steps_or_is_one_user_error(tmp_path_factory, rewards, drawn):
    base, overrides = drawn
    raw = json.loads(json.dumps(BASES[base]))
    for key, value in overrides.items():
        apply_override(raw, f"{key}={json.dumps(value)}")
    try:
        recipe = validate_recipe(raw, source="drawn.yaml", base_dir=Path("."))
    except UserError:
        assume(False)  # `rlqa check` refuses it: exit 2, one line (tests/test_config.py)
    run_dir = tmp_path_factory.mktemp("drawn")
    try:
        check_backend(recipe.rollout.backend, gpus_available=0)
        layout(recipe)
        c = in_process.components(recipe, run_dir, rewards)
        if recipe.trainer.steps == 0:  # an SFT-only run (the warm-up is left out of the draw)
            return
        metrics, _ = rl_step(c, 0)
    except UserError as err:  # what `rlqa train` prints as its one line before exiting 2
        assert "\n" not in str(err) and str(err)
        event(f"user error: {str(err).split(':')[0]}")
        return
    event("one step")
    assert metrics["rollout/count"] > 0 and metrics["policy/version"] == 1.0


def test_skip_mastered_one_is_refused_by_check_not_by_train(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"sampler": {"skip_mastered": 1.0}}))
    assert main(["check", str(recipe)]) == 2
    assert capsys.readouterr().err.strip() == f"rlqa: error: {recipe}: sampler.skip_mastered: Input should be less than 1"


def test_a_rank_column_that_holds_no_ranks_is_one_user_error(tmp_path, rewards):
    recipe = validate_recipe({**BASES["grpo"], "sampler": {"rank_column": "level"}}, source="r.yaml", base_dir=tmp_path)
    with pytest.raises(UserError, match=r"^sampler.rank_column: prompt '.*' has level = [12], not a rank in \[0, 1\)$"):
        in_process.components(recipe, tmp_path, rewards)


@pytest.mark.integration
def test_rlqa_train_with_overrides_after_the_flags(tmp_path):
    """`rlqa train R.yaml --run-dir D key=value ...`: overrides after the flags, as after the recipe; the first real
    training of GSPO, with skip_mastered just below the 1.0 the schema now refuses."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(BASES["grpo"]))
    overrides = ["trainer.steps=1", "algorithm.policy_loss=gspo", "algorithm.loss_aggregation=seq-mean-token-mean", "sampler.skip_mastered=0.99"]
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run"), *overrides]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0] and rows[0]["rollout/count"] == 4.0
    resolved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert resolved["algorithm"]["policy_loss"] == "gspo" and resolved["sampler"]["skip_mastered"] == 0.99
