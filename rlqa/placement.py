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


def demands(recipe: Recipe) -> list[tuple[str, dict[str, float]]]:
    """What must fit on the cluster's nodes before any actor starts: (what, resources) per bundle, or per actor
    without a placement group."""
    lc, rc = recipe.learner, recipe.rollout
    plan = layout(recipe)
    if plan.bundles:
        return [(f"placement bundle {i}", bundle) for i, bundle in enumerate(plan.bundles)]
    learner = {"CPU": lc.cpus, "GPU": lc.gpus}
    worker = {"CPU": rc.cpus_per_worker, "GPU": rc.gpus_per_worker}
    return [(f"learner {i}", learner) for i in range(lc.workers)] + [
        (f"rollout worker {i}", worker) for i in range(rc.workers)
    ]


def shortfall(recipe: Recipe, nodes: list[dict[str, float]]) -> str | None:
    """None when the recipe's actors fit on these nodes' resources (one dict per node, Ray's "Resources"), else one
    line naming what the recipe needs and what the cluster offers. Pure: first-fit by decreasing size, as Ray's
    scheduler would at best; STRICT_PACK needs one node for all bundles, STRICT_SPREAD one node per bundle."""
    needs = demands(recipe)
    free = [{"CPU": float(n.get("CPU", 0)), "GPU": float(n.get("GPU", 0))} for n in nodes]
    strategy = recipe.ray.strategy if layout(recipe).bundles else "PACK"
    fits = _fits(needs, free, strategy)
    if fits:
        return None
    total = {k: sum(n[k] for n in free) for k in ("CPU", "GPU")}
    need = {k: sum(r.get(k, 0) for _, r in needs) for k in ("CPU", "GPU")}
    largest = max(free, key=lambda n: (n["GPU"], n["CPU"]), default={"CPU": 0, "GPU": 0})
    return (
        f"the cluster cannot hold this recipe: it needs {_amounts(need)} in all ({_itemised(needs)}"
        f"{', ' + strategy if strategy.startswith('STRICT') else ''}); the cluster offers {_amounts(total)} over "
        f"{len(free)} node{'s' * (len(free) != 1)} (largest {_amounts(largest)})"
    )


def _fits(needs: list[tuple[str, dict[str, float]]], free: list[dict[str, float]], strategy: str) -> bool:
    free = [dict(n) for n in free]
    if strategy == "STRICT_PACK":
        need = {k: sum(r.get(k, 0) for _, r in needs) for k in ("CPU", "GPU")}
        return any(all(node[k] >= need[k] - 1e-9 for k in need) for node in free)
    used: set[int] = set()
    for _, resources in sorted(needs, key=lambda item: (-item[1].get("GPU", 0), -item[1].get("CPU", 0))):
        for i, node in enumerate(free):
            if strategy == "STRICT_SPREAD" and i in used:
                continue
            if all(node[k] >= resources.get(k, 0) - 1e-9 for k in ("CPU", "GPU")):
                for k in ("CPU", "GPU"):
                    node[k] -= resources.get(k, 0)
                used.add(i)
                break
        else:
            return False
    return True


def _amounts(resources: dict[str, float]) -> str:
    return ", ".join(f"{resources.get(k, 0):g} {k}" for k in ("CPU", "GPU"))


def _itemised(needs: list[tuple[str, dict[str, float]]]) -> str:
    """"learner 0: 1 CPU, 0 GPU; rollout worker 0-1: 1 CPU, 0 GPU each" (equal neighbours grouped)."""
    groups: list[tuple[str, int, dict]] = []
    for what, resources in needs:
        kind = what.rsplit(" ", 1)[0]
        if groups and groups[-1][0] == kind and groups[-1][2] == resources:
            groups[-1] = (kind, groups[-1][1] + 1, resources)
        else:
            groups.append((kind, 1, resources))
    return "; ".join(
        f"{count} {kind}{'s' * (count > 1)}: {_amounts(resources)}{' each' * (count > 1)}" for kind, count, resources in groups
    )


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
