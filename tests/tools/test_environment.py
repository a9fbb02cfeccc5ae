"""Stateful environments (issue 27 point 3), TRL's environment_factory convention: loading a class and the bad specs
(one line, exit 2 at `rlqa check`), an episode's instance living in its own process across calls, and what a
raising, hanging or crashing instance costs (its own episode, never the worker)."""

import math
import os

import pytest
import yaml

from rlqa.cli import main
from rlqa.recipe_files import validate_recipe
from rlqa.errors import UserError
from rlqa.tools.environment import (
    EnvironmentHost, environment_info, episode_row, load_environment, method_schemas, resolve_environment_spec,
)

ENVS = '''
import os
import time


class Counter:
    """Counts up from the row's start; the reward is where it ended."""

    def reset(self, start: int, **row):
        self.value = start
        return f" Start at {start}."

    def bump(self, by: int) -> int:
        """Add to the counter.

        Args:
            by: how much
        """
        self.value += by
        return self.value

    def fail(self) -> str:
        """Raises."""
        raise ValueError("no")

    def hang(self) -> str:
        """Sleeps."""
        time.sleep(60)
        return "woke"

    def crash(self) -> str:
        """Kills its interpreter."""
        os._exit(3)

    @property
    def done(self) -> bool:
        return self.value >= 10

    def get_reward(self) -> float:
        return float(self.value)

    def _helper(self):
        pass


class NoReset:
    def go(self) -> str:
        """Go."""
        return "x"


class DoneMethod:
    def reset(self, **row):
        pass

    def done(self) -> bool:
        return True


class Args:
    def __init__(self, size):
        pass

    def reset(self, **row):
        pass


class Untyped:
    def reset(self, **row):
        pass

    def go(self, x):
        """Go.

        Args:
            x: a value
        """


class NoMethods:
    def reset(self, **row):
        pass


class NoReward:
    def reset(self, **row):
        pass

    def go(self) -> str:
        """Go."""
        return "x"


class BadReset:
    def reset(self, **row):
        return 42

    def go(self) -> str:
        """Go."""
        return "x"


def not_a_class():
    pass
'''
CHAT = {"task": "arithmetic", "chat_template": True}


@pytest.fixture
def env_dir(tmp_path):
    (tmp_path / "envs.py").write_text(ENVS)
    (tmp_path / "tools.py").write_text('def bump(by: int) -> int:\n    """Other.\n\n    Args:\n        by: x\n    """\n    return by\n')
    return tmp_path


def host(env_dir, name="Counter", deadline_s=5.0):
    return EnvironmentHost(resolve_environment_spec(f"envs.py:{name}", env_dir), deadline_s)


def test_the_public_methods_are_the_tools_and_the_convention_methods_are_not(env_dir):
    cls = load_environment(resolve_environment_spec("envs.py:Counter", env_dir))
    schemas = method_schemas(cls, "envs.py:Counter")
    # reset, get_reward, done (a property) and _helper are not tools; the rest, in name order, without `self`
    assert [s["function"]["name"] for s in schemas] == ["bump", "crash", "fail", "hang"]
    assert schemas[0]["function"] == {
        "name": "bump", "description": "Add to the counter.",
        "parameters": {"type": "object", "properties": {"by": {"type": "integer", "description": "how much"}}, "required": ["by"]},
    }


def test_an_instance_keeps_its_state_across_calls_and_scores_the_episode(env_dir):
    environment = host(env_dir)
    states, observations = environment.reset([{"start": 1}, {"start": 5}])
    assert observations == [" Start at 1.", " Start at 5."]
    # each episode its own instance, in its own process: 1 + 2 = 3 and 5 + 2 = 7, then 3 + 4 = 7 and 7 + 4 = 11
    assert environment.call([(states[0], "bump", {"by": 2}), (states[1], "bump", {"by": 2})]) == [("3", "ok", False), ("7", "ok", False)]
    assert environment.call([(states[0], "bump", {"by": 4}), (states[1], "bump", {"by": 4})]) == [("7", "ok", False), ("11", "ok", True)]
    assert environment.finish(states) == [7.0, 11.0]
    assert len(environment._pool.pids()) == 2  # the zygote and its idle worker: the episodes' processes are gone
    environment.close()


def test_a_raising_method_is_an_error_the_model_reads_and_the_instance_lives_on(env_dir):
    environment = host(env_dir)
    [state], _ = environment.reset([{"start": 0}])
    assert environment.call([(state, "fail", {})]) == [("Error: ValueError: no", "error", False)]
    assert environment.call([(state, "bump", {"by": 3})]) == [("3", "ok", False)]
    assert environment.finish([state]) == [3.0] and state.error == ""
    environment.close()


def test_a_hanging_or_crashing_instance_ends_its_own_episode_only(env_dir):
    environment = host(env_dir, deadline_s=1.0)
    states, _ = environment.reset([{"start": 0}, {"start": 0}, {"start": 0}])
    results = environment.call([(states[0], "hang", {}), (states[1], "crash", {}), (states[2], "bump", {"by": 1})])
    assert results[0] == ("Error: hang did not finish within 1 s; the environment is gone", "timeout", False)
    assert results[1][1] == "error" and results[1][0].startswith("Error: crash crashed (") and "exited with code 3" in results[1][0]
    assert results[2] == ("1", "ok", False)
    # a later call on a gone instance is answered at once; its reward is NaN (a failure of the environment term)
    [(content, status, _)] = environment.call([(states[0], "bump", {"by": 1})])
    assert status == "error" and content == "Error: the environment is gone (hang: did not finish within 1 s)"
    rewards = environment.finish(states)
    assert math.isnan(rewards[0]) and math.isnan(rewards[1]) and rewards[2] == 1.0
    assert states[1].error.startswith("crash: crashed (")
    environment.close()


def test_a_reset_that_fails_or_returns_no_text_leaves_the_episode_without_an_instance(env_dir):
    environment = host(env_dir, "BadReset")
    [state], [observation] = environment.reset([{}])
    assert observation is None and state.error == "reset returned int; it returns None or a string"
    environment.close()
    environment = host(env_dir)
    [state], [observation] = environment.reset([{}])  # Counter.reset needs `start`
    assert observation is None and state.error == "reset: TypeError: Counter.reset() missing 1 required positional argument: 'start'"
    assert math.isnan(environment.finish([state])[0])
    environment.close()


def test_the_reset_row_is_the_dataset_row_with_the_prompt_as_messages():
    from rlqa.data.example import Example

    example = Example("q1", "prompt text", "42", None, {"level": 3, "start": 1}, ({"role": "user", "content": "hi"},))
    assert episode_row(example) == {"prompt": [{"role": "user", "content": "hi"}], "answer": "42", "level": 3, "start": 1}


@pytest.mark.parametrize(
    "spec, message",
    [
        ("envs.py", "'envs.py': expected 'package.module:ClassName' or 'path/to/file.py:ClassName'"),
        ("missing.py:Counter", "no such file"),
        ("no_such_module_xyz:Env", "'no_such_module_xyz:Env': no module named 'no_such_module_xyz'"),
        ("envs.py:Nope", "has no attribute 'Nope'"),
        ("envs.py:not_a_class", "not_a_class is not a class (type function); an environment is a class whose instances are episodes"),
        ("envs.py:NoReset", "NoReset has no reset method; reset(**row) starts each episode"),
        ("envs.py:DoneMethod", "DoneMethod.done is a method; done is an attribute or property"),
        ("envs.py:Args", "Args() must take no arguments, as TRL's environment_factory is called"),
        ("envs.py:Untyped", "'Untyped.go': Argument x is missing a type hint in function go"),
    ],
)
def test_a_bad_environment_is_one_user_error_naming_it(env_dir, spec, message):
    raw = {"data": {"train": CHAT, "test": {**CHAT, "split": "test"}}, "rollout": {"max_turns": 2, "environment": spec}}
    recipe = validate_recipe(raw, source="r.yaml", base_dir=env_dir)
    with pytest.raises(UserError, match="rollout.environment: ") as err:
        environment_info(recipe.rollout, env_dir)
    assert message in str(err.value) and "\n" not in str(err.value)


def check_error(capsys, env_dir, rollout: dict, rewards: dict | None = None) -> str:
    recipe = env_dir / "recipe.yaml"
    raw = {"data": {"train": CHAT, "test": {**CHAT, "split": "test"}}, "rollout": {"max_turns": 2, **rollout}}
    if rewards is not None:
        raw["rewards"] = rewards
    recipe.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["check", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rlqa: error: "), err
    return err.strip().removeprefix("rlqa: error: ")


def test_rlqa_check_exits_2_with_one_line_on_a_bad_environment(env_dir, capsys):
    assert check_error(capsys, env_dir, {"environment": "envs.py:NoReset"}) == (
        f"rollout.environment: '{env_dir / 'envs.py'}:NoReset': NoReset has no reset method; reset(**row) starts each episode"
    )
    assert check_error(capsys, env_dir, {"environment": "envs.py:NoMethods"}) == "rollout.environment: 'envs.py:NoMethods' has no public method for the model to call"
    line = check_error(capsys, env_dir, {"environment": "envs.py:Counter", "tools": ["tools.py:bump"]})
    assert line == "rollout.environment: its method 'bump' has the name of a tool in rollout.tools; a model calls a tool by its name"
    line = check_error(capsys, env_dir, {"environment": "envs.py:NoReward"}, {"terms": [{"fn": "environment"}], "correctness": None})
    assert line == "rewards: the environment term reads get_reward(), which 'envs.py:NoReward' does not define"
    line = check_error(capsys, env_dir, {}, {"terms": [{"fn": "environment"}], "correctness": None})
    assert line == f"{env_dir / 'recipe.yaml'}: rewards: the environment term reads the reward of rollout.environment, which is not set"
    line = check_error(capsys, env_dir, {"environment": "envs.py:Counter", "backend": "vllm", "gpus_per_worker": 1})
    assert line == f"{env_dir / 'recipe.yaml'}: rollout.environment: the vllm backend does not run tools; use backend: hf"
    # and a good one passes
    (env_dir / "recipe.yaml").write_text(yaml.safe_dump({
        "data": {"train": CHAT, "test": {**CHAT, "split": "test"}},
        "rollout": {"max_turns": 2, "environment": "envs.py:Counter"},
        "rewards": {"terms": [{"fn": "accuracy"}, {"fn": "environment", "weight": 0.5}]},
    }))
    assert main(["check", str(env_dir / "recipe.yaml")]) == 0


@pytest.mark.parametrize(
    "rollout, extra, message",
    [
        ({"environment": "envs.py:Counter"}, {}, "rollout.max_turns: a tool's result is read in the next turn; set max_turns >= 2 with rollout.environment"),
        ({"environment": "envs.py:Counter", "max_turns": 2}, {"sampler": {"hints": {}}}, "sampler.hints: a hint continues the prompt's text"),
        ({"environment": " ", "max_turns": 2}, {}, "rollout.environment: empty"),
    ],
)
def test_the_schema_refuses_an_environment_where_it_cannot_run(rollout, extra, message):
    with pytest.raises(UserError) as err:
        validate_recipe({"data": {"train": CHAT, "test": {**CHAT, "split": "test"}}, "rollout": rollout, **extra}, source="r.yaml", base_dir=".")
    assert str(err.value).startswith(f"r.yaml: {message}"), str(err.value)


def test_an_environment_needs_chat_rendered_prompts():
    with pytest.raises(UserError) as err:
        validate_recipe({"rollout": {"environment": "envs.py:Counter", "max_turns": 2}}, source="r.yaml", base_dir=".")
    assert "data.train.chat_template: rollout.environment needs chat-rendered prompts" in str(err.value)


def test_the_environment_term_and_correctness_read_get_reward_and_a_failed_instance_is_a_failure():
    from rewards.pipeline import RewardPipeline, RewardTermSpec

    # get_reward gave 1 and 0; the third episode's instance failed (NaN)
    with RewardPipeline([RewardTermSpec("game", "environment", weight=2.0)], correctness="environment") as pipeline:
        out = pipeline(["a", "b", "c"], ["p"] * 3, {"environment_reward": [1.0, 0.0, math.nan]})
    # weight 2: totals 2 and 0; the failure scores 0 (failure_value "zero") and is counted; 1 >= 0.5 is correct
    assert out.total == [2.0, 0.0, 0.0] and out.correct[:2] == [True, False]
    # reward/game is the mean after failure handling, the failure's 0 included: (1 + 0 + 0) / 3
    assert out.metrics["reward/game/nonfinite"] == 1 and out.metrics["reward/game"] == pytest.approx(1 / 3)


def test_an_async_checkpoints_unscored_batch_keeps_the_environments_rewards():
    """Async mode saves the next step's generated batch (JSON); an episode's get_reward, NaN included, survives."""
    import json

    from rlqa.rollout.types import Rollout
    from rlqa.stages import StepBatch

    rollouts = [
        Rollout("q", i, [1], [2, 3], [-0.5, 0.0], "stop", 4, loss_mask=[1, 0], turns=1, tool_calls=1,
                environment_reward=reward, environment_error=error)
        for i, (reward, error) in enumerate([(1.0, ""), (math.nan, "reset: ValueError: no")])
    ]
    state = json.loads(json.dumps(StepBatch(3, 1.0, [("q", 2)], rollouts).to_state()))
    restored = StepBatch.from_state(state).rollouts
    assert restored[0].environment_reward == 1.0 and math.isnan(restored[1].environment_reward)
    assert restored[1].environment_error == "reset: ValueError: no" and restored[0].loss_mask == [1, 0]


def test_between_turns_calls_go_to_their_episodes_instance_and_done_ends_the_episode(env_dir, smollm2_dir):
    """ToolTurns with Counter and a plain tool, on SmolLM2's tokenizer (no model): reset rewrites the prompt, the
    calls of each episode reach its own instance, a call to no known name or with missing arguments is answered
    without running, and an instance that is done ends its episode without the results' suffix."""
    from rlqa.models import load_tokenizer
    from rlqa.rollout.multi_turn import Episode, ToolTurns, tool_suffix_ids
    from rlqa.rollout.types import GenerationRequest
    from rlqa.tools.hermes import ToolCall
    from rlqa.tools.python_tool import SandboxLimits
    from rlqa.tools.runner import ToolRunner

    (env_dir / "more.py").write_text('def echo(text: str) -> str:\n    """Echo.\n\n    Args:\n        text: x\n    """\n    return text\n')
    tokenizer = load_tokenizer(str(smollm2_dir))
    messages = [{"role": "user", "content": "Count."}]
    turns = ToolTurns(tokenizer, ToolRunner(["more.py:echo"], env_dir, 5.0, SandboxLimits()), 3, 500, host(env_dir), [])
    episodes = [Episode(GenerationRequest("p", i, (1, 2), 0, row={"prompt": messages, "start": start})) for i, start in enumerate((1, 5))]
    turns.begin(episodes)
    observed = [{"role": "user", "content": "Count. Start at 1."}]
    assert episodes[0].prompt == tokenizer(tokenizer.apply_chat_template(observed, tokenize=False, add_generation_prompt=True), add_special_tokens=False).input_ids
    turns.respond(episodes, [
        [ToolCall("bump", {"by": 2}), ToolCall("echo", {"text": "hi"}), ToolCall("nope"), ToolCall("bump"), ToolCall("bump", {"by": 3})],
        [ToolCall("bump", {"by": 5})],
    ])
    first, second = episodes
    # episode 0: 1 + 2 = 3, the tool's echo, two errors that ran nothing, then 3 + 3 = 6 (in the order written)
    expected = [("bump", "3"), ("echo", "hi"), ("nope", "Error: there is no tool named 'nope' (tools: echo, bump, crash, fail, hang)"),
                ("bump", "Error: bump: missing a required argument: 'by'"), ("bump", "6")]
    assert first.tokens == tool_suffix_ids(tokenizer, [{"role": "tool", "name": n, "content": c} for n, c in expected])
    assert (first.tool_calls, first.tool_errors, first.finish) == (5, 2, None)
    # episode 1: 5 + 5 = 10, Counter is done at 10: the episode ends, "stop", nothing appended
    assert (second.tokens, second.tool_calls, second.finish) == ([], 1, "stop")
    turns.finish(episodes)
    assert (first.environment_reward, second.environment_reward) == (6.0, 10.0)
