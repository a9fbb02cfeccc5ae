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

from rlqa.rollout.multi_turn import Episode, ToolTurns
from rlqa.rollout.seeding import SeededSampler, turn_seed
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
    """`tool_turns` (rlqa.rollout.multi_turn) makes every rollout a multi-turn episode with tool calls; without it
    each rollout is one completion, as always."""

    def __init__(self, model, tokenizer, micro_batch_size: int, tool_turns: ToolTurns | None = None):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.tokenizer = tokenizer
        self.micro_batch_size = micro_batch_size
        self.tool_turns = tool_turns
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
        batch = self._generate_episodes if self.tool_turns is not None else self._generate_batch
        for start in range(0, len(requests), self.micro_batch_size):
            rollouts += batch(requests[start : start + self.micro_batch_size], params, version)
        return rollouts

    def _generate_batch(self, requests: list[GenerationRequest], params: SamplingParams, version: int) -> list[Rollout]:
        turns = self._sample([list(r.prompt_tokens) for r in requests], [r.seed for r in requests], params, params.max_new_tokens)
        return [
            Rollout(
                prompt_id=request.prompt_id,
                sample_index=request.sample_index,
                prompt_tokens=list(request.prompt_tokens),
                completion_tokens=tokens,
                logprobs=logprobs,
                finish_reason=finish,
                policy_version=version,
                text=self.tokenizer.decode(tokens, skip_special_tokens=True),
            )
            for request, (tokens, logprobs, finish) in zip(requests, turns)
        ]

    def _generate_episodes(self, requests: list[GenerationRequest], params: SamplingParams, version: int) -> list[Rollout]:
        """Multi-turn rollouts: each turn generates for the episodes still going, from their exact ids, seeded by
        (sample seed, turn); between turns their tool calls run and the tool suffixes are appended."""
        tools = self.tool_turns
        episodes = [Episode(request) for request in requests]
        tools.begin(episodes)
        try:
            self._turns(episodes, params)
        except BaseException:
            tools.abandon(episodes)
            raise
        tools.finish(episodes)
        return [e.rollout(version, self.tokenizer.decode(e.tokens, skip_special_tokens=True)) for e in episodes]

    def _turns(self, episodes: list[Episode], params: SamplingParams) -> None:
        tools = self.tool_turns
        for turn in range(tools.max_turns):
            active = [e for e in episodes if e.finish is None]
            if not active:
                break
            budgets = [tools.budget(e) for e in active]
            seeds = [turn_seed(e.request.seed, turn) for e in active]
            sampled = self._sample([e.context for e in active], seeds, params, min(params.max_new_tokens, max(budgets)))
            calling, calls = [], []
            for episode, budget, (tokens, logprobs, finish) in zip(active, budgets, sampled):
                if len(tokens) > budget:  # the widest budget of the batch ran past this one's: cut at its own
                    tokens, logprobs, finish = tokens[:budget], logprobs[:budget], "length"
                episode.add_turn(tokens, logprobs)
                turn_calls = tools.calls(tokens) if finish == "stop" else []
                if finish == "length" or not turn_calls:
                    episode.finish = finish
                elif episode.turns == tools.max_turns:  # calls that no turn is left to read
                    episode.finish = "length"
                else:
                    calling.append(episode)
                    calls.append(turn_calls)
            if calling:
                tools.respond(calling, calls)

    def _sample(
        self, contexts: list[list[int]], seeds: list[int], params: SamplingParams, max_new_tokens: int
    ) -> list[tuple[list[int], list[float], str]]:
        """One turn for each context (left-padded together): its tokens up to and including the first stop token,
        their log-probs, and "stop" or "length"."""
        pad = self.tokenizer.pad_token_id
        width = max(len(c) for c in contexts)
        input_ids = torch.full((len(contexts), width), pad, dtype=torch.long)  # (B, P), left-padded
        attention_mask = torch.zeros_like(input_ids)
        for row, context in enumerate(contexts):
            input_ids[row, width - len(context) :] = torch.tensor(context)
            attention_mask[row, width - len(context) :] = 1

        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        if params.temperature > 0:
            picker = SeededSampler(torch.tensor(seeds, dtype=torch.int64), width, params.temperature, params.top_k, params.top_p)
        else:
            picker = GreedyLogprobs()
        sequences = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=self._generation_config(max_new_tokens),
            logits_processor=LogitsProcessorList([picker]),
        )
        completions = sequences[:, width:]  # (B, N)
        logprobs = picker.logprobs()  # (B, N) of the tokens picked, under the distribution they were drawn from

        turns = []
        for row in range(len(contexts)):
            tokens = completions[row].tolist()
            stop = first_stop(tokens, self.eos_ids)
            tokens = tokens if stop is None else tokens[: stop + 1]
            turns.append((tokens, logprobs[row, : len(tokens)].tolist(), "length" if stop is None else "stop"))
        return turns
