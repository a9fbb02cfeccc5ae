"""Where the actors run, from the recipe's `ray` section.

- `none`: each actor asks Ray for its own CPUs/GPUs (`learner.cpus/gpus`, `rollout.cpus_per_worker/gpus_per_worker`).
- `separate`: one placement group reserves every actor's resources at once (gang scheduling: a run starts whole or
  not at all), learners and rollout workers in bundles of their own, spread or packed by `ray.strategy`.
- `colocate`: bundle k holds learner rank k and rollout worker k, which share its GPU; their fractions add up
  (e.g. 0.5 + 0.5). The rollout engines sleep (free their GPU memory) while the learners train.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlqa.config import Recipe


@dataclass(frozen=True)
class Layout:
    bundles: list[dict[str, float]]  # empty: no placement group
    learner_bundles: list[int | None]  # bundle index of each learner rank
    rollout_bundles: list[int | None]  # bundle index of each rollout worker


def layout(recipe: Recipe) -> Layout:
    """The placement group's bundles and which actor goes in which; pure, so it is tested without Ray."""
    lc, rc, mode = recipe.learner, recipe.rollout, recipe.ray.placement
    learner = {"CPU": lc.cpus, "GPU": lc.gpus}
    worker = {"CPU": rc.cpus_per_worker, "GPU": rc.gpus_per_worker}
    if mode == "none":
        return Layout([], [None] * lc.workers, [None] * rc.workers)
    if mode == "separate":
        bundles = [learner] * lc.workers + [worker] * rc.workers
        return Layout(_nonzero(bundles), list(range(lc.workers)), list(range(lc.workers, lc.workers + rc.workers)))
    count = max(lc.workers, rc.workers)
    bundles = [
        {k: learner[k] * (i < lc.workers) + worker[k] * (i < rc.workers) for k in ("CPU", "GPU")} for i in range(count)
    ]
    return Layout(_nonzero(bundles), list(range(lc.workers)), list(range(rc.workers)))


def _nonzero(bundles: list[dict[str, float]]) -> list[dict[str, float]]:
    """Ray rejects an empty bundle; a zero amount is simply left out."""
    return [{k: v for k, v in b.items() if v > 0} or {"CPU": 0.01} for b in bundles]


def actor_options(recipe: Recipe, timeout_s: float = 600.0) -> tuple[list[dict], list[dict]]:
    """Ray `.options(...)` for each learner rank and each rollout worker; reserves the placement group if any."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    plan = layout(recipe)
    lc, rc = recipe.learner, recipe.rollout
    learners = [{"num_cpus": lc.cpus, "num_gpus": lc.gpus} for _ in plan.learner_bundles]
    workers = [{"num_cpus": rc.cpus_per_worker, "num_gpus": rc.gpus_per_worker} for _ in plan.rollout_bundles]
    if not plan.bundles:
        return learners, workers
    group = placement_group(plan.bundles, strategy=recipe.ray.strategy)
    ready, _ = ray.wait([group.ready()], timeout=timeout_s)
    if not ready:
        raise RuntimeError(f"ray.placement: the cluster cannot hold these bundles within {timeout_s:.0f}s: {plan.bundles}")
    for options, index in [*zip(learners, plan.learner_bundles), *zip(workers, plan.rollout_bundles)]:
        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index)
    return learners, workers
