"""Multi-turn tool episodes on the stand-in real model (SmolLM2-135M-Instruct, its BPE tokenizer and chat template):
tokens in, tokens out (issue 27 point 5).

The prompt is a few-shot conversation in which the assistant adds numbers with an `add` tool, one call a turn, so
the 135M model calls the tool itself. At temperature 0.7 the sample seeded by (run seed 0, step 1, "p", 2) makes a
3-turn episode: add(17, 25), reads 42, add(42, 45), reads 87, and its third turn runs into max_new_tokens; sample 3
makes add(17, 25), reads 42, and answers. The checks: the completion is exactly the model's sampled ids with each
tool suffix (tokenised once by the chat template) between them, the mask is 0 on the suffixes only, and the
learner's recomputed log-probs of the model's tokens match the recorded ones to < 1e-4 (fp32, CPU).
"""

import json

import pytest

from rlqa.recipe_files import validate_recipe
from rlqa.data.loaders import render_prompt
from rlqa.errors import UserError
from rlqa.learner.batch import TrainSample
from rlqa.learner.learner import Learner
from rlqa.models import load_model, load_tokenizer
from rlqa.rollout.hf_backend import HFBackend
from rlqa.rollout.multi_turn import ToolTurns, check_tool_template, tool_suffix_ids
from rlqa.rollout.seeding import sample_seed
from rlqa.rollout.types import GenerationRequest, SamplingParams
from rlqa.tools.hermes import with_tools_system_message
from rlqa.tools.python_tool import SandboxLimits
from rlqa.tools.registry import tool_schemas
from rlqa.tools.runner import ToolRunner

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ADD = '''
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first integer
        b: the second integer
    """
    return a + b
'''
BROKEN_ADD = ADD.replace("return a + b", 'raise ValueError("the adder is broken")')
IM_END = 2  # SmolLM2's <|im_end|>, its EOS
PARAMS = SamplingParams(temperature=0.7, max_new_tokens=40)


def call(a: int, b: int) -> str:
    return "<tool_call>\n" + json.dumps({"name": "add", "arguments": {"a": a, "b": b}}) + "\n</tool_call>"


SHOTS = [
    {"role": "user", "content": "What is 2 + 3 + 4?"},
    {"role": "assistant", "content": call(2, 3)}, {"role": "tool", "content": "5"},
    {"role": "assistant", "content": call(5, 4)}, {"role": "tool", "content": "9"},
    {"role": "assistant", "content": "The answer is 9."},
    {"role": "user", "content": "What is 6 + 7 + 8?"},
    {"role": "assistant", "content": call(6, 7)}, {"role": "tool", "content": "13"},
    {"role": "assistant", "content": call(13, 8)}, {"role": "tool", "content": "21"},
    {"role": "assistant", "content": "The answer is 21."},
    {"role": "user", "content": "What is 17 + 25 + 3?"},
]


@pytest.fixture(scope="module")
def setup(smollm2_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("tools")
    (root / "add.py").write_text(ADD)
    (root / "broken.py").write_text(BROKEN_ADD)
    raw = {
        "model": {"path": str(smollm2_dir)},
        "data": {"train": {"task": "arithmetic", "chat_template": True}, "test": {"task": "arithmetic", "chat_template": True}},
        "rollout": {"tools": ["add.py:add"], "max_turns": 3, "max_new_tokens": PARAMS.max_new_tokens},
        "learner": {"torch_threads": 1, "lr": 1e-6},
    }
    recipe = validate_recipe(raw, source="test", base_dir=root)
    tokenizer = load_tokenizer(str(smollm2_dir))
    model = load_model(str(smollm2_dir), "float32")
    messages = with_tools_system_message(SHOTS, tool_schemas(recipe.rollout, root))
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt = tuple(tokenizer(text, add_special_tokens=False).input_ids)
    return recipe, root, model, tokenizer, prompt


def backend(setup, tool="add.py:add", max_turns=3, max_total_tokens=None):
    _, root, model, tokenizer, _ = setup
    runner = ToolRunner([tool], root, 10.0, SandboxLimits())
    total = max_total_tokens or PARAMS.max_new_tokens * max_turns
    return HFBackend(model, tokenizer, micro_batch_size=8, tool_turns=ToolTurns(tokenizer, runner, max_turns, total))


def requests(prompt, samples):
    return [GenerationRequest("p", j, prompt, sample_seed(0, 1, "p", j)) for j in samples]


@pytest.fixture(scope="module")
def episodes(setup):
    """Samples 2 and 3, generated together."""
    return backend(setup).generate(requests(setup[4], [2, 3]), PARAMS, version=0)


def spans(mask: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each run of 0s."""
    runs, start = [], None
    for i, m in enumerate(mask + [1]):
        if m == 0 and start is None:
            start = i
        elif m == 1 and start is not None:
            runs.append((start, i))
            start = None
    return runs


def suffix(tokenizer, content: str) -> list[int]:
    return tool_suffix_ids(tokenizer, [{"role": "tool", "name": "add", "content": content}])


def test_the_suffix_is_the_templates_tool_message_and_next_assistant_opening(setup):
    tokenizer = setup[3]
    # SmolLM2's template after an assistant turn's <|im_end|>: newline, the tool message, the assistant opening
    assert tokenizer.decode(suffix(tokenizer, "42")) == "\n<|im_start|>tool\n42<|im_end|>\n<|im_start|>assistant\n"
    check_tool_template(tokenizer, "data.train.chat_template")


def test_a_template_that_cannot_render_a_tool_message_is_a_user_error(setup):
    tokenizer = load_tokenizer(str(setup[0].model.path))
    tokenizer.chat_template = "{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tool role') }}{% endif %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(UserError) as err:
        check_tool_template(tokenizer, "data.train.chat_template")
    assert str(err.value) == "data.train.chat_template: rollout.tools needs a chat template that renders tool messages, and this one fails: no tool role"


def test_a_template_that_ignores_tools_gets_them_in_the_system_message(setup):
    recipe, root, _, tokenizer, _ = setup
    schemas = tool_schemas(recipe.rollout, root)
    text, messages = render_prompt({"prompt": "What is 1 + 2?"}, "jsonl", "prompt", "{prompt}", True, tokenizer, "Be brief.", "x", schemas)
    # SmolLM2's template renders nothing of tools=: the Hermes section follows the system prompt instead
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions")
    assert '{"type": "function", "function": {"name": "add", "description": "Add two integers."' in text
    assert text.endswith("<|im_start|>user\nWhat is 1 + 2?<|im_end|>\n<|im_start|>assistant\n")
    assert messages[0]["role"] == "system" and len(messages) == 2


def test_a_three_turn_episode_is_the_sampled_ids_with_each_tool_suffix_between(setup, episodes):
    tokenizer = setup[3]
    three, two = episodes
    assert (three.turns, three.tool_calls, three.tool_errors, three.tool_timeouts, three.finish_reason) == (3, 2, 0, 0, "length")
    assert (two.turns, two.tool_calls, two.finish_reason) == (2, 1, "stop")
    # the inserted spans are exactly the tool suffixes of the results: 17 + 25 = 42, then 42 + 45 = 87
    runs = spans(three.loss_mask)
    assert [three.completion_tokens[a:b] for a, b in runs] == [suffix(tokenizer, "42"), suffix(tokenizer, "87")]
    assert [two.completion_tokens[a:b] for a, b in spans(two.loss_mask)] == [suffix(tokenizer, "42")]
    # each model turn before a suffix ends at its EOS; the model's calls are what the suffixes answer
    turns = [three.completion_tokens[: runs[0][0]], three.completion_tokens[runs[0][1] : runs[1][0]], three.completion_tokens[runs[1][1] :]]
    assert [t[-1] for t in turns[:2]] == [IM_END, IM_END]
    # turn 3 is cut by the total limit, max_new_tokens x max_turns = 40 x 3 = 120 completion tokens: "length"
    assert len(three.completion_tokens) == 120 and len(turns[2]) < PARAMS.max_new_tokens
    assert tokenizer.decode(turns[0]) == call(17, 25) + "<|im_end|>"
    assert tokenizer.decode(turns[1]) == call(42, 45) + "<|im_end|>"
    # one log-prob per completion token: 0.0 on the tool's, a real (negative or zero) one on the model's
    assert len(three.logprobs) == len(three.completion_tokens) == len(three.loss_mask)
    assert all(lp == 0.0 for lp, m in zip(three.logprobs, three.loss_mask) if m == 0)
    assert all(lp <= 0.0 for lp in three.logprobs) and sum(lp < 0 for lp in three.logprobs) > 10
    assert sum(three.loss_mask) == sum(len(t) for t in turns) == three.model_tokens
    # the text rewards read: everything, special tokens left out
    assert three.text == tokenizer.decode(three.completion_tokens, skip_special_tokens=True)


def test_the_learner_recomputes_the_sampled_logprobs_across_turns(setup, episodes):
    recipe, _, _, _, _ = setup
    learner = Learner(str(recipe.model.path), recipe, total_steps=1)
    learner.start_rl()
    three = episodes[0]  # the 3-turn episode: 2 tool suffixes masked out between its 3 model turns
    samples = [TrainSample(three.prompt_tokens, three.completion_tokens, three.logprobs, advantage=1.0, loss_mask=three.loss_mask)]
    metrics = learner.update(samples, PARAMS.temperature, step=0)
    # fp32 on one CPU, the same ids: rounding only. A masked (tool) position counted with its 0.0 would be nats off.
    assert 0 < metrics["rollout/logprob_diff_max"] < 1e-4, metrics["rollout/logprob_diff_max"]


def test_the_turn_and_token_limits_cut_the_episode_where_the_full_one_in_a_batch_went_on(setup, episodes):
    tokenizer, prompt = setup[3], setup[4]
    three, two = episodes
    first_suffix = spans(three.loss_mask)[0]
    # max_turns 2 (the same 120-token total): turn 2 of sample 2 calls add again, and no turn is left to read it
    [cut] = backend(setup, max_turns=2, max_total_tokens=120).generate(requests(prompt, [2]), PARAMS, version=0)
    end_of_turn_2 = spans(three.loss_mask)[1][0]
    assert (cut.turns, cut.tool_calls, cut.finish_reason) == (2, 1, "length")
    assert cut.completion_tokens == three.completion_tokens[:end_of_turn_2]
    # and alone, sample 2 is the episode it was in a batch with sample 3 (seeded by sample and turn, not by batch):
    # the same ids and mask; other padding, so the log-probs agree to float rounding only
    assert cut.loss_mask == three.loss_mask[:end_of_turn_2]
    assert cut.logprobs == pytest.approx(three.logprobs[:end_of_turn_2], abs=1e-4)
    # a total of turn 1 + its suffix leaves no token for turn 2: the suffix is not inserted
    limit = first_suffix[1]  # = len(turn 1) + len(suffix)
    [short] = backend(setup, max_total_tokens=limit).generate(requests(prompt, [3]), PARAMS, version=0)
    assert (short.turns, short.finish_reason) == (1, "length")
    assert short.completion_tokens == two.completion_tokens[: spans(two.loss_mask)[0][0]]
    assert short.loss_mask == [1] * len(short.completion_tokens)


def test_a_raising_tool_answers_with_its_error_and_the_episode_goes_on(setup):
    tokenizer, prompt = setup[3], setup[4]
    [episode] = backend(setup, tool="broken.py:add", max_turns=2).generate(requests(prompt, [3]), PARAMS, version=0)
    assert (episode.turns, episode.tool_calls, episode.tool_errors) == (2, 1, 1)
    [(a, b)] = spans(episode.loss_mask)
    assert episode.completion_tokens[a:b] == suffix(tokenizer, "Error: ValueError: the adder is broken")
    assert len(episode.completion_tokens) > b  # the model's second turn followed


# -- stateful environments (rollout.environment) ------------------------------------------------------------------------

OBSERVING = '''
class Observing:
    """SumToTarget whose reset adds a line to the prompt."""

    def reset(self, answer, **row):
        self.target = int(answer)
        return " Use the add tool."

    def add(self, a: int, b: int) -> int:
        """Add two integers.

        Args:
            a: the first integer
            b: the second integer
        """
        return a + b
'''


def environment_backend(setup, spec="rlqa.tools.examples:SumToTarget", max_turns=3):
    from rlqa.tools.environment import EnvironmentHost, load_environment, method_schemas, resolve_environment_spec

    _, root, model, tokenizer, _ = setup
    resolved = resolve_environment_spec(spec, root)
    schemas = method_schemas(load_environment(resolved), spec)
    turns = ToolTurns(tokenizer, ToolRunner([], root, 10.0, SandboxLimits()), max_turns, PARAMS.max_new_tokens * max_turns,
                      EnvironmentHost(resolved, 10.0), schemas)
    return HFBackend(model, tokenizer, micro_batch_size=8, tool_turns=turns), schemas


def rows_of(prompt, samples, answer):
    row = {"prompt": SHOTS, "answer": answer}
    return [GenerationRequest("p", j, prompt, sample_seed(0, 1, "p", j), row=row) for j in samples]


def test_a_reset_observation_is_appended_to_the_prompt_which_is_tokenised_again(setup, tmp_path):
    """Observing.reset returns " Use the add tool.": the rollout's prompt is the chat template over the messages with
    that text after the last user message's, tokenised as the driver tokenises prompts; and the episode is the one a
    plain `add` tool gives from that prompt, same seeds."""
    (setup[1] / "observing.py").write_text(OBSERVING)
    tokenizer = setup[3]
    environment, schemas = environment_backend(setup, "observing.py:Observing", max_turns=2)
    messages = with_tools_system_message(SHOTS, schemas)
    row_prompt = tuple(tokenizer(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), add_special_tokens=False).input_ids)
    observed = [dict(m) for m in messages]
    observed[-1]["content"] = "What is 17 + 25 + 3? Use the add tool."
    expected = tokenizer(tokenizer.apply_chat_template(observed, tokenize=False, add_generation_prompt=True), add_special_tokens=False).input_ids
    request = GenerationRequest("p", 3, row_prompt, sample_seed(0, 1, "p", 3), row={"prompt": messages, "answer": "45"})
    [episode] = environment.generate([request], PARAMS, version=0)
    assert episode.prompt_tokens == expected and len(expected) > len(row_prompt)
    [plain] = backend(setup, max_turns=2).generate([GenerationRequest("p", 3, tuple(expected), sample_seed(0, 1, "p", 3))], PARAMS, version=0)
    assert episode.completion_tokens == plain.completion_tokens and episode.loss_mask == plain.loss_mask
    assert episode.tool_calls == plain.tool_calls >= 1 and episode.environment_reward is None  # no get_reward


def test_a_training_step_with_an_environment_resets_it_from_the_rows_and_logs_its_term_and_tool_calls(smollm2_dir, tmp_path):
    """The recipe's path in one process: the environment's methods rendered into the chat dataset's prompts as tools,
    the backend built from the recipe, each request handed its dataset row (reset reads the answer column), the
    episodes scored by get_reward and the `environment` term summed and logged next to accuracy and the step's tool
    metrics, one GRPO step on them. (A recipe's tool files are built into the backend by the same make_backend,
    whose tool path the Ray test runs; the multi-turn log-prob gap is the learner test's.)"""
    import in_process
    from rewards.pipeline import RewardPipeline
    from rlqa import trainer

    rows = [{"prompt": SHOTS, "answer": "42", "id": "sum"}]  # SumToTarget's target: 17 + 25, the first call's sum
    (tmp_path / "sums.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = {"path": "sums.jsonl", "chat_template": True, "id_key": "id", "answer_key": "answer"}
    raw = {
        "model": {"path": str(smollm2_dir)},
        "data": {"train": data, "test": data},
        "rollout": {"workers": 1, "prompts_per_step": 1, "rollouts_per_prompt": 2, "max_new_tokens": 40,
                    "environment": "rlqa.tools.examples:SumToTarget", "max_turns": 3},
        "learner": {"lr": 1e-6, "torch_threads": 1},
        "rewards": {"terms": [{"fn": "accuracy"}, {"fn": "environment", "weight": 0.5}]},
        "temperature": {"mode": "fixed", "initial": 0.7},
        "sampler": {"allocation": "uniform"},
        "trainer": {"steps": 1, "eval_before": False, "eval_after": False},
        "logging": {"progress": False},
    }
    recipe = validate_recipe(raw, source="test", base_dir=tmp_path)
    with RewardPipeline.from_config(recipe.rewards, tmp_path) as rewards:
        c = in_process.components(recipe, tmp_path / "run", rewards)
        assert "# Tools" in c.driver.test[0].prompt and '"name": "add"' in c.driver.test[0].prompt
        generated = []
        generate = c.schedule.generate
        c.schedule.generate = lambda *a, **k: generated.append(generate(*a, **k)) or generated[-1]
        metrics, _ = trainer.rl_step(c, 0)
    [batch] = generated
    values = [r.environment_reward for r in batch.rollouts]
    # the seeds of step 0 make sample 0 call add(17, 25) = 42, the target: done at once, reward 1; sample 1 answers
    # without a call (44): reward 0. One turn each; reward/environment = (1 + 0) / 2, tools/calls = 1 call / 1 step
    calls = [json.dumps({"name": "add", "arguments": {"a": 17, "b": 25}}) in r.text for r in batch.rollouts]
    assert calls == [True, False] and values == [1.0, 0.0], [r.text for r in batch.rollouts]
    assert metrics["reward/environment"] == 0.5 and metrics["tools/environment_errors"] == 0
    assert metrics["tools/calls"] == 1 and metrics["rollout/turns"] == 1.0 and metrics["tools/timeouts"] == 0
    assert 0 < metrics["rollout/logprob_diff_max"] < 1e-4


@pytest.mark.integration
def test_ray_workers_run_the_tool_episode_and_environment_episodes_that_end_when_done_and_are_scored(setup, episodes, tmp_path):
    """Through real RolloutGroups and RolloutWorker actors, both started at once in one Ray session.

    The tool recipe: the tool file found from the recipe's directory, the tool pool started inside the actor, and
    sample 3's episode the same ids as in this process (seeded by sample and turn alone).

    The environment recipe: SumToTarget (the built-in example) with the row's answer 87, handed to each request by
    the group from the recipe's dataset, its zygote and episode processes inside the actor, and the same `add`
    schema as the tool, so the prompt and the first turns are the tool episodes': sample 2 adds 17 + 25 = 42, then
    42 + 45 = 87, the target, so the instance is done and the episode ends there (no suffix, no third turn) with
    reward 1; sample 3 adds 17 + 25 = 42 and answers, never reaching 87: the tool episode exactly, reward 0."""
    import ray

    from rewards.pipeline import RewardPipeline, RewardTermSpec
    from rlqa.rollout.group import RolloutGroup

    tools, root, _, tokenizer, prompt = setup
    three, two = episodes
    tools = tools.model_copy(update={"rollout": tools.rollout.model_copy(update={"workers": 1, "torch_threads": 1})})
    (tmp_path / "sums.jsonl").write_text(json.dumps({"prompt": SHOTS, "answer": "87", "id": "p"}) + "\n")
    data = {"path": "sums.jsonl", "chat_template": True, "id_key": "id", "answer_key": "answer"}
    raw = {
        "model": {"path": str(tools.model.path)},
        "data": {"train": data, "test": data},
        "rollout": {"workers": 1, "torch_threads": 1, "environment": "rlqa.tools.examples:SumToTarget", "max_turns": 3,
                    "max_new_tokens": PARAMS.max_new_tokens},
        "rewards": {"terms": [{"fn": "environment"}], "correctness": None},
    }
    environment = validate_recipe(raw, source="test", base_dir=tmp_path)
    assert tool_schemas(environment.rollout, tmp_path) == tool_schemas(tools.rollout, root)  # the tool episodes' prompt
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:  # both actors load the model side by side; each generate waits for its own
        tool_group = RolloutGroup(str(tools.model.path), tools)
        environment_group = RolloutGroup(str(environment.model.path), environment)
        [by_tool] = tool_group.generate(requests(prompt, [3]), PARAMS, 0)
        done, missed = environment_group.generate(requests(prompt, [2, 3]), PARAMS, 0)
    finally:
        ray.shutdown()
    assert (by_tool.turns, by_tool.tool_calls) == (2, 1)
    assert by_tool.completion_tokens == two.completion_tokens and by_tool.loss_mask == two.loss_mask
    end_of_turn_2 = spans(three.loss_mask)[1][0]
    assert (done.turns, done.tool_calls, done.tool_errors, done.finish_reason) == (2, 2, 0, "stop")
    assert done.completion_tokens == three.completion_tokens[:end_of_turn_2]
    assert done.loss_mask == three.loss_mask[:end_of_turn_2] and [done.completion_tokens[a:b] for a, b in spans(done.loss_mask)] == [suffix(tokenizer, "42")]
    assert done.prompt_tokens == list(prompt) and done.environment_reward == 1.0 and done.environment_error == ""
    assert (missed.turns, missed.tool_calls, missed.finish_reason) == (2, 1, "stop")
    assert missed.completion_tokens == two.completion_tokens and missed.loss_mask == two.loss_mask
    assert missed.environment_reward == 0.0
    # the reward term, weight 0.5: totals 0.5 x 1 = 0.5 and 0.5 x 0 = 0; reward/environment is the mean, (1 + 0) / 2
    with RewardPipeline([RewardTermSpec("environment", "environment", weight=0.5)], correctness=None) as pipeline:
        scored = pipeline(["a", "b"], ["p", "p"], {"environment_reward": [done.environment_reward, missed.environment_reward]})
    assert scored.total == [0.5, 0.0] and scored.metrics["reward/environment"] == 0.5
