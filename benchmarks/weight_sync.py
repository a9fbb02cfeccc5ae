"""Weight sync alone, learner -> rollout workers, through the object store and through the shared-memory file, on
one model in one Ray session: the real Learner and RolloutWorker actors, the transports the trainer uses. The two
alternate, so a change in the machine's load falls on both.

    python benchmarks/weight_sync.py MODEL_DIR [--workers 2] [--repeats 5]
        MODEL_DIR: e.g. the SmolLM2-135M-Instruct stand-in (`rlqa import-gguf --smollm2 DIR`)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import ray

from rlqa.cluster import reaped, shared_dir
from rlqa.recipe_files import validate_recipe
from rlqa.learner.group import start_learners
from rlqa.rollout.group import RolloutGroup
from rlqa.rollout.sync import ObjectStoreSync, SharedMemorySync


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    recipe = validate_recipe({"model": {"path": str(args.model.resolve())}, "rollout": {"workers": args.workers}},
                             source="weight_sync.py", base_dir=".")
    with reaped() as token:
        ray.init(address="local", num_cpus=args.workers + 1, include_dashboard=False, configure_logging=False,
                 log_to_driver=False)
        try:
            learner = start_learners(recipe.model.path, recipe)
            ray.get(learner.start_rl())
            group = RolloutGroup(recipe.model.path, recipe)
            group.pids()  # every worker up and its model loaded before the clock starts
            transports = {"object_store": ObjectStoreSync(), "shared_memory": SharedMemorySync(shared_dir(token))}
            seconds: dict[str, list[float]] = {name: [] for name in transports}
            for _ in range(args.repeats + 1):  # the first round warms up (page faults, lazy imports)
                for name, sync in transports.items():
                    started = time.perf_counter()
                    sync.sync(learner, group)
                    seconds[name].append(time.perf_counter() - started)
        finally:
            ray.shutdown()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{args.model.name}, {args.workers} workers, {args.repeats} syncs each after one warm-up; load {load}")
    for name, values in seconds.items():
        print(f"{name:14s} median {statistics.median(values[1:]):.3f} s  (min {min(values[1:]):.3f}, max {max(values[1:]):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
