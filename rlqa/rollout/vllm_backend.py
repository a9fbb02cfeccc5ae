"""Generation with a vLLM engine (GPU; `pip install 'rlqa[vllm]'`), updated in place after every learner step.

The engine runs its model in a worker process of its own; `WeightLoader` is mixed into that worker
(`worker_extension_cls`), and `collective_rpc` calls its methods there. New weights reach it by one of three roads:
tensors handed over (CPU path, from the object store), an NCCL broadcast from the learner (separate GPUs), or
CUDA IPC handles of the learner's own tensors (colocated on one GPU). In every case the engine's
`model.load_weights` maps Hugging Face names onto its fused layers, as it does when it loads a checkpoint.

Log-probs are vLLM's "processed" ones (`logprobs_mode="processed_logprobs"`; vLLM's default, raw_logprobs, is
before temperature and top-k/top-p): log softmax of logits / T after top-k/top-p filtering, i.e. of the
distribution the token was drawn from, renormalised. The HF backend records and the learner recomputes the same
quantity (rlqa.algorithms.entropy.token_logprobs with the rollout's top_k/top_p), as TRL and verl ask vLLM for it.
They come from vLLM's kernels, so they match the learner's to within numerics, not bit for bit. Samples are seeded per request (run seed, step, prompt id, sample index),
so they do not depend on batching, but vLLM's sampler is not the HF backend's: the two backends draw different
tokens from the same seeds.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from rlqa.rollout.types import GenerationRequest, Rollout, SamplingParams
from rlqa.rollout.weight_sync import BroadcastChannel, WeightSpec, open_ipc_handles

WORKER_EXTENSION = "rlqa.rollout.vllm_backend.WeightLoader"


class WeightLoader:
    """Mixed into vLLM's GPU worker: `self.model_runner` and `self.device` are the worker's own."""

    def rlqa_load(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        self.model_runner.model.load_weights(weights=[(name, t.to(self.device)) for name, t in weights])

    def rlqa_join(self, host: str, port: int, rank: int, world_size: int) -> None:
        self.rlqa_channel = BroadcastChannel(host, port, rank, world_size, self.device)

    def rlqa_receive(self, spec: WeightSpec) -> None:
        self.model_runner.model.load_weights(weights=self.rlqa_channel.receive(spec))

    def rlqa_load_ipc(self, handles: dict[str, tuple]) -> None:
        self.model_runner.model.load_weights(weights=open_ipc_handles(handles, self.device.index))
        torch.cuda.synchronize(self.device)


class VLLMBackend:
    def __init__(self, model_dir: str, dtype: str, gpu_memory: float, trust_remote_code: bool = False):
        from vllm import LLM

        self.llm = LLM(
            model=model_dir,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory,
            trust_remote_code=trust_remote_code,
            enable_sleep_mode=True,
            worker_extension_cls=WORKER_EXTENSION,
            logprobs_mode="processed_logprobs",
            seed=0,
        )
        self.asleep = False

    def generate(self, requests: list[GenerationRequest], params: SamplingParams, version: int) -> list[Rollout]:
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.inputs import TokensPrompt

        greedy = params.temperature == 0
        sampling = [
            VLLMSamplingParams(
                temperature=params.temperature,
                top_k=params.top_k if params.top_k > 0 and not greedy else -1,
                top_p=params.top_p,
                max_tokens=params.max_new_tokens,
                seed=request.seed,
                logprobs=0,  # the sampled token's log-prob only
            )
            for request in requests
        ]
        prompts = [TokensPrompt(prompt_token_ids=list(r.prompt_tokens)) for r in requests]
        outputs = self.llm.generate(prompts, sampling, use_tqdm=False)
        return [to_rollout(request, out.outputs[0], version) for request, out in zip(requests, outputs)]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.llm.collective_rpc("rlqa_load", args=(list(weights),))

    def join_channel(self, host: str, port: int, rank: int, world_size: int) -> None:
        self.llm.collective_rpc("rlqa_join", args=(host, port, rank, world_size))

    def receive(self, spec: WeightSpec) -> None:
        self.llm.collective_rpc("rlqa_receive", args=(spec,))

    def load_ipc(self, handles: dict[str, tuple]) -> None:
        self.llm.collective_rpc("rlqa_load_ipc", args=(handles,))

    def sleep(self) -> None:
        """Level 1: weights to CPU memory, KV cache dropped; the engine wakes with the same weights."""
        if not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False


def to_rollout(request: GenerationRequest, completion, version: int) -> Rollout:
    """A vLLM CompletionOutput as a Rollout: the sampled tokens (EOS kept, as the HF backend keeps it) and their
    log-probs."""
    tokens = list(completion.token_ids)
    logprobs = [step[token].logprob for step, token in zip(completion.logprobs, tokens)]
    return Rollout(
        prompt_id=request.prompt_id,
        sample_index=request.sample_index,
        prompt_tokens=list(request.prompt_tokens),
        completion_tokens=tokens,
        logprobs=logprobs,
        finish_reason="stop" if completion.finish_reason == "stop" else "length",
        policy_version=version,
        text=completion.text,
    )
