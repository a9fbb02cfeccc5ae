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
from typing import TYPE_CHECKING

from rlqa.errors import UserError
from rlqa.rollout.types import GenerationRequest, Rollout
from rlqa.tools.hermes import BadCall, ToolCall, parse_tool_calls
from rlqa.tools.runner import ToolOutcome, _cut, _signature_problem

if TYPE_CHECKING:
    from rlqa.tools.environment import EpisodeState


@dataclass
class Episode:
    """One request's multi-turn rollout as it is built."""

    request: GenerationRequest
    prompt: list[int] = field(default_factory=list)  # the request's, unless an environment's reset rewrote it
    tokens: list[int] = field(default_factory=list)  # completion ids: model turns and tool suffixes
    logprobs: list[float] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    tool_timeouts: int = 0
    finish: str | None = None  # set when the episode ends
    environment: EpisodeState | None = None  # rollout.environment: this episode's instance
    environment_reward: float | None = None

    def __post_init__(self):
        self.prompt = self.prompt or list(self.request.prompt_tokens)

    @property
    def context(self) -> list[int]:
        """The ids the next turn is generated from."""
        return self.prompt + self.tokens

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
            prompt_tokens=list(self.prompt),
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
            environment_reward=self.environment_reward,
            environment_error=self.environment.error if self.environment is not None else "",
        )


class ToolTurns:
    """What happens between two model turns: parse the calls, run them, and tokenise the tool messages once.

    With an `environment` (rlqa.tools.environment.EnvironmentHost), `begin` gives each episode its own instance,
    reset from the request's row, calls to its methods go to that instance (one at a time, in the order the model
    wrote them), and `finish` scores each episode with get_reward() and ends the instances. `schemas` are every tool's,
    the prompt's `tools=`, for a prompt that reset rewrites."""

    def __init__(self, tokenizer, runner, max_turns: int, max_total_tokens: int, environment=None, schemas: list[dict] | None = None):
        self.tokenizer = tokenizer
        self.runner = runner
        self.max_turns = max_turns
        self.max_total_tokens = max_total_tokens
        self.environment = environment
        self.schemas = schemas or []

    def begin(self, episodes: list[Episode]) -> None:
        """rollout.environment: a fresh instance per episode, reset from its row; a reset that returns text appends
        it to the prompt's last message (as TRL does) and the prompt is rendered and tokenised again."""
        if self.environment is None:
            return
        rows = [e.request.row for e in episodes]
        if any(row is None for row in rows):
            raise ValueError("rollout.environment: a generation request came without its dataset row")
        states, observations = self.environment.reset(rows)
        for episode, state, observation, row in zip(episodes, states, observations, rows):
            episode.environment = state
            if observation:
                episode.prompt = prompt_with_observation(self.tokenizer, row["prompt"], observation, self.schemas)

    def finish(self, episodes: list[Episode]) -> None:
        """rollout.environment: each episode's reward from its instance, then the instances end."""
        if self.environment is None:
            return
        started = [e for e in episodes if e.environment is not None]
        for episode, reward in zip(started, self.environment.finish([e.environment for e in started])):
            episode.environment_reward = reward

    def abandon(self, episodes: list[Episode]) -> None:
        """End the instances of episodes that will not finish (generation raised)."""
        if self.environment is not None:
            self.environment.close_sessions([e.environment for e in episodes if e.environment is not None])

    def calls(self, turn_tokens: list[int]) -> list[ToolCall | BadCall]:
        """The tool calls in a model turn, read from its text (special tokens kept: a tag may be one)."""
        return parse_tool_calls(self.tokenizer.decode(turn_tokens, skip_special_tokens=False))

    def respond(self, episodes: list[Episode], calls: list[list[ToolCall | BadCall]]) -> None:
        """Run every episode's calls (one batch, so slow tools overlap), then append each episode's tool suffix,
        or end it where the suffix would not fit or no turn is left."""
        calls = [[self._known(call) for call in episode_calls] for episode_calls in calls]
        routed = [[self._is_method(call) for call in episode_calls] for episode_calls in calls]
        flat = [call for episode_calls, where in zip(calls, routed) for call, method in zip(episode_calls, where) if not method]
        outcomes = iter(self.runner.run(flat) if flat else [])
        method_results, done = self._call_methods(episodes, calls, routed)
        for e, (episode, episode_calls) in enumerate(zip(episodes, calls)):
            from_methods = iter(method_results[e])
            results = [next(from_methods) if method else next(outcomes) for method in routed[e]]
            episode.tool_calls += len(results)
            episode.tool_errors += sum(r.status == "error" for r in results)
            episode.tool_timeouts += sum(r.status == "timeout" for r in results)
            if done[e]:  # the environment says the episode is over: no turn follows to read the results
                episode.finish = "stop"
                continue
            messages = [{"role": "tool", "name": r.name, "content": r.content} for r in results]
            suffix = tool_suffix_ids(self.tokenizer, messages)
            if len(episode.tokens) + len(suffix) >= self.max_total_tokens:  # no room left for the model to read it
                episode.finish = "length"
                continue
            episode.add_suffix(suffix)

    def _known(self, call: ToolCall | BadCall) -> ToolCall | BadCall:
        """With an environment, a call to a name neither a tool nor a method is answered with both lists."""
        if self.environment is None or not isinstance(call, ToolCall):
            return call
        names = self.runner.names + list(self.environment.methods)
        if call.name in names:
            return call
        return BadCall(f"there is no tool named {call.name!r} (tools: {', '.join(names)})", call.name)

    def _is_method(self, call: ToolCall | BadCall) -> bool:
        return self.environment is not None and isinstance(call, ToolCall) and call.name in self.environment.methods

    def _call_methods(self, episodes: list[Episode], calls, routed) -> tuple[list[list[ToolOutcome]], list[bool]]:
        """The environment calls of every episode: the k-th of each episode side by side in round k, so that one
        instance sees its calls in order. Per episode: the outcomes, and whether the instance is done after them."""
        pending = [[call for call, method in zip(episode_calls, where) if method] for episode_calls, where in zip(calls, routed)]
        results: list[list[ToolOutcome]] = [[] for _ in episodes]
        done = [False] * len(episodes)
        for k in range(max((len(p) for p in pending), default=0)):
            batch = []
            for e, episode_calls in enumerate(pending):
                if k >= len(episode_calls):
                    continue
                call = episode_calls[k]
                problem = _signature_problem(self.environment.methods[call.name], call)
                if problem is not None:
                    results[e].append(ToolOutcome(call.name, f"Error: {problem}", "error"))
                else:
                    batch.append((e, call))
            answers = self.environment.call([(episodes[e].environment, call.name, call.arguments) for e, call in batch])
            for (e, call), (content, status, finished) in zip(batch, answers):
                results[e].append(ToolOutcome(call.name, content if status != "ok" else _cut(content), status))
                done[e] = done[e] or finished
        return results, done

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


def prompt_with_observation(tokenizer, messages: list[dict], observation: str, schemas: list[dict]) -> list[int]:
    """The prompt's ids once an environment's reset observation is appended to its last message: rendered as the
    driver renders a prompt with tools (`tools=` to the template; a template that ignores them has the Hermes section
    in the messages already) and tokenised as the driver tokenises it."""
    messages = [dict(m) for m in messages]
    messages[-1] = {**messages[-1], "content": messages[-1]["content"] + observation}
    text = tokenizer.apply_chat_template(messages, tools=schemas or None, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False).input_ids


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
