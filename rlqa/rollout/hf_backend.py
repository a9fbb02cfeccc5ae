"""Generation with Hugging Face `generate` (KV cache), sampling through the seeded exponential-race processor.

The tokens must come from exactly the distribution whose log-probs are recorded (softmax of logits / T, with
top-k / top-p filtered and renormalised, as the learner recomputes them), since those log-probs are π_old. So `generate` runs greedy
decoding under a generation config built from scratch: a checkpoint's own `generation_config.json` (a repetition
penalty, forced or suppressed tokens, a minimum length, sampling defaults) never reaches it. The one thing kept
from it is the full list of EOS ids (Qwen2.5 and Llama 3 stop on several).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from rlqa.rollout.seeding import SeededSampler
from rlqa.rollout.types import GenerationRequest, Rollout, SamplingParams
from rlqa.rollout.weight_sync import BroadcastChannel, WeightSpec, open_ipc_handles


def eos_token_ids(generation_config: GenerationConfig, tokenizer) -> list[int]:
    """Every token that ends a completion: the checkpoint's EOS list (an int or a list in generation_config.json),
    then the tokenizer's EOS if the list lacks it."""
    ids = generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def first_stop(tokens: list[int], stop_ids: list[int]) -> int | None:
    """Index of the first stop token in `tokens`, or None."""
    return next((i for i, token in enumerate(tokens) if token in stop_ids), None)


class GreedyLogprobs(LogitsProcessor):
    """Greedy decoding (temperature 0): records the log-prob of the argmax token at each position, like
    SeededSampler does for the token it samples, and leaves the scores alone."""

    def __init__(self):
        self._logprobs: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._logprobs.append(torch.log_softmax(scores.float(), dim=-1).max(-1).values)
        return scores

    def logprobs(self) -> torch.Tensor:
        return torch.stack(self._logprobs, dim=1)  # (B, N)


class HFBackend:
    def __init__(self, model, tokenizer, micro_batch_size: int):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.tokenizer = tokenizer
        self.micro_batch_size = micro_batch_size
        self.eos_ids = eos_token_ids(model.generation_config, tokenizer)
        # generate() fills every unset field from model.generation_config: leave nothing of the checkpoint's there
        self.model.generation_config = GenerationConfig(eos_token_id=self.eos_ids, pad_token_id=tokenizer.pad_token_id)

    def _generation_config(self, max_new_tokens: int) -> GenerationConfig:
        """Greedy decoding and nothing else: the seeded sampler is the only processor between logits and token."""
        return GenerationConfig(
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=self.eos_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            use_cache=True,
        )

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        params = self.model.state_dict()
        for name, tensor in weights:
            params[name].copy_(tensor)

    def join_channel(self, host: str, port: int, rank: int, world_size: int) -> None:
        self.channel = BroadcastChannel(host, port, rank, world_size, self.device)

    def receive(self, spec: WeightSpec) -> None:
        self.load_weights(self.channel.receive(spec))

    def load_ipc(self, handles: dict[str, tuple]) -> None:
        self.load_weights(open_ipc_handles(handles, self.device.index))
        torch.cuda.synchronize(self.device)

    def sleep(self) -> None:
        if self.device.type == "cuda":
            self.model.to("cpu")
            torch.cuda.empty_cache()

    def wake(self) -> None:
        self.model.to(self.device)

    @torch.no_grad()
    def generate(self, requests: list[GenerationRequest], params: SamplingParams, version: int) -> list[Rollout]:
        rollouts: list[Rollout] = []
        for start in range(0, len(requests), self.micro_batch_size):
            rollouts += self._generate_batch(requests[start : start + self.micro_batch_size], params, version)
        return rollouts

    def _generate_batch(self, requests: list[GenerationRequest], params: SamplingParams, version: int) -> list[Rollout]:
        pad = self.tokenizer.pad_token_id
        width = max(len(r.prompt_tokens) for r in requests)
        input_ids = torch.full((len(requests), width), pad, dtype=torch.long)  # (B, P), left-padded
        attention_mask = torch.zeros_like(input_ids)
        for row, request in enumerate(requests):
            input_ids[row, width - len(request.prompt_tokens) :] = torch.tensor(request.prompt_tokens)
            attention_mask[row, width - len(request.prompt_tokens) :] = 1

        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        if params.temperature > 0:
            seeds = torch.tensor([r.seed for r in requests], dtype=torch.int64)
            picker = SeededSampler(seeds, width, params.temperature, params.top_k, params.top_p)
        else:
            picker = GreedyLogprobs()
        sequences = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=self._generation_config(params.max_new_tokens),
            logits_processor=LogitsProcessorList([picker]),
        )
        completions = sequences[:, width:]  # (B, N)
        logprobs = picker.logprobs()  # (B, N) of the tokens picked, under the distribution they were drawn from

        rollouts = []
        for row, request in enumerate(requests):
            tokens = completions[row].tolist()
            stop = first_stop(tokens, self.eos_ids)
            finish = "length" if stop is None else "stop"
            tokens = tokens if stop is None else tokens[: stop + 1]
            rollouts.append(
                Rollout(
                    prompt_id=request.prompt_id,
                    sample_index=request.sample_index,
                    prompt_tokens=list(request.prompt_tokens),
                    completion_tokens=tokens,
                    logprobs=logprobs[row, : len(tokens)].tolist(),
                    finish_reason=finish,
                    policy_version=version,
                    text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                )
            )
        return rollouts
