"""Generation with Hugging Face `generate` (KV cache), sampling through the seeded Gumbel-max processor."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import LogitsProcessorList

from rlqa.rollout.seeding import SeededSampler
from rlqa.rollout.types import GenerationRequest, Rollout, SamplingParams
from rlqa.rollout.weight_sync import BroadcastChannel, WeightSpec, open_ipc_handles


class HFBackend:
    def __init__(self, model, tokenizer, micro_batch_size: int):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.tokenizer = tokenizer
        self.micro_batch_size = micro_batch_size

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
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        width = max(len(r.prompt_tokens) for r in requests)
        input_ids = torch.full((len(requests), width), pad, dtype=torch.long)  # (B, P), left-padded
        attention_mask = torch.zeros_like(input_ids)
        for row, request in enumerate(requests):
            input_ids[row, width - len(request.prompt_tokens) :] = torch.tensor(request.prompt_tokens)
            attention_mask[row, width - len(request.prompt_tokens) :] = 1

        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        processors = LogitsProcessorList()
        if params.temperature > 0:
            seeds = torch.tensor([r.seed for r in requests], dtype=torch.int64)
            processors.append(SeededSampler(seeds, width, params.temperature, params.top_k, params.top_p))
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=False,
            max_new_tokens=params.max_new_tokens,
            logits_processor=processors,
            pad_token_id=pad,
            eos_token_id=eos,
            return_dict_in_generate=True,
            output_logits=True,
            use_cache=True,
            # the processor does the sampling: keep generation_config from adding warpers or penalties
            temperature=None,
            top_k=None,
            top_p=None,
        )
        completions = out.sequences[:, width:]  # (B, N)
        logits = torch.stack(out.logits, dim=1).float()  # (B, N, V) raw
        if params.temperature > 0:
            logits = logits / params.temperature
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, completions[..., None]).squeeze(-1)  # (B, N)

        rollouts = []
        for row, request in enumerate(requests):
            tokens = completions[row].tolist()
            finish = "length"
            if eos in tokens:
                tokens = tokens[: tokens.index(eos) + 1]
                finish = "stop"
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
