"""Multi-turn rollouts with tool calls: tokens in, tokens out (issue 27).

An episode is the prompt's tokens followed by the model's turn 1, the tool messages that answer its calls and the
opening of the next assistant turn, then the model's turn 2, and so on. Every token is kept as the id it was
sampled as or inserted as: a model turn's ids are the sampled ids; a tool suffix is tokenised once, when it is
inserted, and appended to the ids; the next turn is generated from those exact ids. Nothing is decoded and
re-encoded, so the learner's forward pass sees the very sequence whose log-probs the sampler recorded. The loss mask
is 1 on the model's tokens, 0 on the inserted ones (which carry log-prob 0.0, never read: the mask is 0 there).

The episode ends at a turn with no tool call ("stop"), at a turn cut by `max_new_tokens` ("length"), or at a
limit: a turn with calls when `max_turns` turns are done, or calls whose results would leave no room under the
total token limit ("length": the model asked for something it will never read, the episode is cut short). A call
that fails still gets an answer, the error sentence, and the episode goes on.

The suffix is what the chat template writes between the end of the model's turn (its EOS, the last token of the
turn) and the start of the next assistant turn, found as TRL's GRPOTrainer finds it (`_get_tool_suffix_ids`):
render a dummy conversation ending in an assistant tool call, then the same plus the tool messages and the
generation prompt, and take the difference after the prefix's last EOS.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlqa.errors import UserError
from rlqa.rollout.types import GenerationRequest, Rollout
from rlqa.tools.hermes import BadCall, ToolCall, parse_tool_calls


@dataclass
class Episode:
    """One request's multi-turn rollout as it is built."""

    request: GenerationRequest
    tokens: list[int] = field(default_factory=list)  # completion ids: model turns and tool suffixes
    logprobs: list[float] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    tool_timeouts: int = 0
    finish: str | None = None  # set when the episode ends

    @property
    def context(self) -> list[int]:
        """The ids the next turn is generated from."""
        return list(self.request.prompt_tokens) + self.tokens

    def add_turn(self, tokens: list[int], logprobs: list[float]) -> None:
        self.tokens += tokens
        self.logprobs += logprobs
        self.mask += [1] * len(tokens)
        self.turns += 1

    def add_suffix(self, ids: list[int]) -> None:
        self.tokens += ids
        self.logprobs += [0.0] * len(ids)
        self.mask += [0] * len(ids)

    def rollout(self, version: int, text: str) -> Rollout:
        return Rollout(
            prompt_id=self.request.prompt_id,
            sample_index=self.request.sample_index,
            prompt_tokens=list(self.request.prompt_tokens),
            completion_tokens=self.tokens,
            logprobs=self.logprobs,
            finish_reason=self.finish or "length",
            policy_version=version,
            text=text,
            loss_mask=self.mask,
            turns=self.turns,
            tool_calls=self.tool_calls,
            tool_errors=self.tool_errors,
            tool_timeouts=self.tool_timeouts,
        )


class ToolTurns:
    """What happens between two model turns: parse the calls, run them, and tokenise the tool messages once."""

    def __init__(self, tokenizer, runner, max_turns: int, max_total_tokens: int):
        self.tokenizer = tokenizer
        self.runner = runner
        self.max_turns = max_turns
        self.max_total_tokens = max_total_tokens

    def calls(self, turn_tokens: list[int]) -> list[ToolCall | BadCall]:
        """The tool calls in a model turn, read from its text (special tokens kept: a tag may be one)."""
        return parse_tool_calls(self.tokenizer.decode(turn_tokens, skip_special_tokens=False))

    def respond(self, episodes: list[Episode], calls: list[list[ToolCall | BadCall]]) -> None:
        """Run every episode's calls (one batch, so slow tools overlap), then append each episode's tool suffix,
        or end it where the suffix would not fit or no turn is left."""
        flat = [call for episode_calls in calls for call in episode_calls]
        outcomes = iter(self.runner.run(flat))
        for episode, episode_calls in zip(episodes, calls):
            results = [next(outcomes) for _ in episode_calls]
            episode.tool_calls += len(results)
            episode.tool_errors += sum(r.status == "error" for r in results)
            episode.tool_timeouts += sum(r.status == "timeout" for r in results)
            messages = [{"role": "tool", "name": r.name, "content": r.content} for r in results]
            suffix = tool_suffix_ids(self.tokenizer, messages)
            if len(episode.tokens) + len(suffix) >= self.max_total_tokens:  # no room left for the model to read it
                episode.finish = "length"
                continue
            episode.add_suffix(suffix)

    def budget(self, episode: Episode) -> int:
        """Tokens the episode's next turn may still generate under the total limit."""
        return self.max_total_tokens - len(episode.tokens)


def tool_suffix_ids(tokenizer, tool_messages: list[dict]) -> list[int]:
    """The ids the chat template puts between the end of an assistant turn that called tools and the start of the
    next assistant turn, for these tool messages (module docstring)."""
    calls = [{"type": "function", "function": {"name": tool_messages[0]["name"], "arguments": {}}}]
    dummy = [{"role": "user", "content": "dummy"}, {"role": "assistant", "content": "", "tool_calls": calls}]
    prefix = tokenizer.apply_chat_template(dummy, tokenize=True, return_dict=False)
    full = tokenizer.apply_chat_template(dummy + tool_messages, tokenize=True, add_generation_prompt=True, return_dict=False)
    ends = [i for i, token in enumerate(prefix) if token == tokenizer.eos_token_id]
    if ends:  # the model's turn ends at its EOS; what the template writes after it belongs to the suffix
        prefix = prefix[: ends[-1] + 1]
    if full[: len(prefix)] != prefix:
        raise ValueError("the chat template renders an assistant turn differently once tool messages follow it")
    return full[len(prefix) :]


def check_tool_template(tokenizer, where: str) -> None:
    """A UserError naming `where` unless the chat template can render a tool message after an assistant tool call
    (some templates refuse a `tool` role)."""
    try:
        suffix = tool_suffix_ids(tokenizer, [{"role": "tool", "name": "check", "content": "42"}])
    except Exception as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{where}: rollout.tools needs a chat template that renders tool messages, and this one fails: {message}") from None
    if "42" not in tokenizer.decode(suffix):
        raise UserError(f"{where}: rollout.tools needs a chat template that renders tool messages, and this one leaves out their content")
