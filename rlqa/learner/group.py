"""The learner actors as the driver sees them: one Learner, or `learner.workers` Learners that form one DeepSpeed
data-parallel group (rlqa.learner.deepspeed_engine), behind the same explicit methods.

Each method runs on every rank, with its arguments stored once in the object store, and returns rank 0's
ObjectRef; the other ranks' results are checked at the next call, so a failure on any rank surfaces. So the driver
loop is the same for one learner or many.
"""

from __future__ import annotations

import socket

import ray

from rlqa.config import LearnerConfig, Recipe
from rlqa.errors import UserError
from rlqa.learner.batch import TrainSample
from rlqa.learner.deepspeed_engine import DeepSpeedEngine
from rlqa.learner.learner import Learner
from rlqa.rollout.weight_sync import free_port


def check_learner_gpus(cfg: LearnerConfig, gpus_available: float) -> None:
    """A user error (exit 2, one line), before any actor starts, when the recipe puts the learner on a GPU the Ray
    cluster does not have (Ray would otherwise wait for it forever)."""
    if cfg.gpus > 0 and gpus_available <= 0:
        raise UserError(f"learner.gpus: {cfg.gpus:g} asks for a GPU and the Ray cluster has none; use learner.gpus: 0")


class LearnerGroup:
    def __init__(self, actors: list):
        self.actors = actors
        self._others: list[ray.ObjectRef] = []

    @property
    def leader(self):
        """Rank 0's actor: it holds the full weights (ZeRO 0-2 replicate them) and writes the files."""
        return self.actors[0]

    def sft(self, pairs: list[tuple[str, str]], out_dir: str) -> ray.ObjectRef:
        args = self._store(pairs, out_dir)
        return self._first([a.sft.remote(*args) for a in self.actors])

    def start_rl(self) -> ray.ObjectRef:
        return self._first([a.start_rl.remote() for a in self.actors])

    def update(self, samples: list[TrainSample], temperature: float, step: int) -> ray.ObjectRef:
        args = self._store(samples, temperature, step)
        return self._first([a.update.remote(*args) for a in self.actors])

    def weights(self) -> ray.ObjectRef:
        return self._first([a.weights.remote() for a in self.actors])

    def write_shared_weights(self, directory: str) -> ray.ObjectRef:
        return self._first([a.write_shared_weights.remote(directory) for a in self.actors])

    def save_state(self, out_dir: str) -> ray.ObjectRef:
        return self._first([a.save_state.remote(out_dir) for a in self.actors])

    def load_state(self, ckpt_dir: str) -> ray.ObjectRef:
        return self._first([a.load_state.remote(ckpt_dir) for a in self.actors])

    def save_pretrained(self, out_dir: str) -> ray.ObjectRef:
        return self._first([a.save_pretrained.remote(out_dir) for a in self.actors])

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)

    @staticmethod
    def _store(*args) -> list[ray.ObjectRef]:
        return [ray.put(a) for a in args]

    def _first(self, refs: list[ray.ObjectRef]) -> ray.ObjectRef:
        ray.get(self._others)
        self._others = refs[1:]
        return refs[0]


def _rendezvous(_learner) -> tuple[str, int]:
    """Run on rank 0's actor: its node's address and a free port there. Not loopback, even where the embedded Ray's
    node IP is 127.0.0.1: a gloo group (DeepSpeed on CPU) does not form over a loopback MASTER_ADDR, it hangs."""
    host = ray.util.get_node_ip_address()
    if host.startswith("127.") or host == "::1":
        host = _outbound_address()
    return host, free_port(host)


def _outbound_address() -> str:
    """This machine's address on the interface its traffic leaves by (a UDP connect sends nothing), as Ray finds
    a node's IP; loopback when there is none."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("8.8.8.8", 80))  # as Ray does: no packet is sent, the route picks the interface
            return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def start_learners(model_dir: str, recipe: Recipe, actor_options: list[dict] | None = None) -> LearnerGroup:
    """`learner.workers` Learner actors; more than one form a DeepSpeed group that has met before this returns."""
    cfg, world = recipe.learner, recipe.learner.workers
    options = actor_options or [{"num_cpus": cfg.cpus, "num_gpus": cfg.gpus}] * world
    engines = [None] if world == 1 else [DeepSpeedEngine(cfg, recipe.model.dtype, rank, world) for rank in range(world)]
    actors = [
        ray.remote(Learner).options(**options[rank]).remote(model_dir, recipe, recipe.trainer.steps, engine)
        for rank, engine in enumerate(engines)
    ]
    if world > 1:
        address, port = ray.get(actors[0].__ray_call__.remote(_rendezvous))
        ray.get([actor.join_group.remote(address, port) for actor in actors])
    return LearnerGroup(actors)
