"""With `chat_template: true` the data is conversational, and reward functions get TRL's conversational shapes: each
prompt its chat messages, each completion `[{"role": "assistant", "content": text}]`. TRL's documented reward
functions score as in TRL, and the built-in rewards work on either shape."""

import pytest

from rlqa import stages
from rlqa.config import DatasetConfig, Recipe, SamplerConfig
from rlqa.data.example import reward_inputs
from rlqa.data.sources import build_examples
from rlqa.length_history import LengthHistory
from rlqa.models import build_char_tokenizer
from rlqa.rollout.types import Rollout
from rlqa.sampler import RolloutSampler
from rewards.format import boxed_format, think_format
from rewards.pipeline import RewardPipeline, RewardTermSpec

# TRL's GRPOTrainer documentation, "Example 3: Reward completions based on a specific format" (conversational) and
# "Example 1: Reward longer completions" (standard), as a user would paste them into a reward file.
TRL_REWARDS = '''
import re


def format_reward_func(completions, **kwargs):
    """Reward function that checks if the completion has a specific format."""
    pattern = r"^<think>.*?</think><answer>.*?</answer>$"
    completion_contents = [completion[0]["content"] for completion in completions]
    matches = [re.match(pattern, content) for content in completion_contents]
    return [1.0 if match else 0.0 for match in matches]


def reward_len(completions, **kwargs):
    return [-abs(20 - len(completion)) for completion in completions]


def system_turns(prompts, **kwargs):
    """How many messages of each prompt are the system's (a TRL user's function reading conversational prompts)."""
    return [float(sum(message["role"] == "system" for message in prompt)) for prompt in prompts]
'''

CHAT = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"


def chat_tokenizer():
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = CHAT
    return tokenizer


def arithmetic(**keys):
    tokenizer = chat_tokenizer() if keys.get("chat_template") else build_char_tokenizer()
    spec = DatasetConfig(task="arithmetic", size=2, levels=[1], **keys)
    return build_examples(spec, Recipe(), tokenizer, "data.train")


def test_conversational_examples_give_trls_message_shapes_and_plain_ones_strings():
    chat = arithmetic(chat_template=True, system_prompt="Be brief.")
    plain = arithmetic()
    prompts, completions = reward_inputs(chat, ["so 4", "so 5"])
    assert prompts == [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": e.prompt}] for e in plain
    ]
    assert completions == [[{"role": "assistant", "content": "so 4"}], [{"role": "assistant", "content": "so 5"}]]
    assert chat[0].prompt == f"<system>Be brief.\n<user>{plain[0].prompt}\n<assistant>"  # what the model sees
    prompts[0].pop()  # TRL's trainer pops a prefilled reply off its prompts; a function may too: the example keeps its own
    assert len(reward_inputs(chat, ["a", "b"])[0][0]) == 2
    assert reward_inputs(plain, ["so 4", "so 5"]) == ([e.prompt for e in plain], ["so 4", "so 5"])


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    directory = tmp_path_factory.mktemp("trl")
    (directory / "trl_rewards.py").write_text(TRL_REWARDS)
    terms = [
        RewardTermSpec("format", "trl_rewards.py:format_reward_func"),
        RewardTermSpec("system", "trl_rewards.py:system_turns", weight=0.0),
        RewardTermSpec("accuracy", "accuracy", weight=0.0),
        RewardTermSpec("boxed_format", "boxed_format", weight=0.0),
        RewardTermSpec("think_format", "think_format", weight=0.0),
        RewardTermSpec("length_penalty", "length_penalty", weight=0.0),
    ]
    with RewardPipeline(terms, base_dir=directory) as pipeline:
        yield pipeline


def scored(examples, texts, pipeline):
    """The training step's reward stage on rollouts with these texts, one per example, each 4 tokens long."""
    rollouts = [Rollout(e.prompt_id, 0, [1], [2, 3, 4, 5], [-1.0] * 4, "stop", 0, text) for e, text in zip(examples, texts)]
    batch = stages.StepBatch(0, 1.0, [(e.prompt_id, 1) for e in examples], rollouts)
    by_id = {e.prompt_id: e for e in examples}
    sampler = RolloutSampler(list(by_id), SamplerConfig(), prompts_per_step=len(by_id), rollouts_per_prompt=1, seed=0)
    metrics = stages.score(batch, pipeline, by_id, LengthHistory(), sampler, max_new_tokens=8)
    return batch, metrics


def test_trls_conversational_format_reward_and_the_built_ins_score_a_chat_step_as_in_trl(pipeline):
    examples = arithmetic(chat_template=True, system_prompt="Be brief.")
    gold = [e.answer for e in examples]
    texts = [
        # TRL's format: <think>, </think><answer> with nothing between, and `.` does not cross a newline
        f"<think>add</think><answer>\\boxed{{{gold[0]}}}</answer>",
        f"<think>add\nthen</think><answer>{gold[1]}</answer>",
    ]
    batch, metrics = scored(examples, texts, pipeline)
    assert metrics["reward/format"] == 0.5 and batch.rewards == [1.0, 0.0]  # only the format term weighs
    assert metrics["reward/system"] == 1.0  # each prompt arrived as its messages: one system message
    # accuracy reads the last \boxed{} of the message's content; boxed_format wants nothing but closers after it
    assert metrics["reward/accuracy"] == 0.5 and batch.correct == [True, False]
    assert metrics["reward/boxed_format"] == 0.0
    assert metrics["reward/think_format"] == 1.0  # both have one think block, then an answer
    assert metrics["reward/length_penalty"] == -0.5  # -4 tokens / 8


def test_trls_length_reward_on_plain_text_scores_as_in_trl(tmp_path):
    (tmp_path / "trl_rewards.py").write_text(TRL_REWARDS)
    examples = arithmetic()
    with RewardPipeline([RewardTermSpec("len", "trl_rewards.py:reward_len")], base_dir=tmp_path) as pipeline:
        batch, _ = scored(examples, ["a" * 5, "a" * 27], pipeline)
    assert batch.rewards == [-15.0, -7.0]  # -|20 - 5|, -|20 - 27|


def test_format_rewards_read_either_shape_and_think_format_the_rendered_prompt():
    as_messages = [[{"role": "assistant", "content": text}] for text in ("\\boxed{4}.", "4", "<think>a</think>4", "a</think>4")]
    assert boxed_format(as_messages) == [1.0, 0.0, 0.0, 0.0]
    chat_prompts = [[{"role": "user", "content": "2+2?"}]] * 4
    # a chat template that opens the think block shows only in the rendered prompt, which the pipeline passes
    opened = ["<user>2+2?\n<assistant><think>\n"] * 4
    assert think_format(as_messages, prompts=chat_prompts) == [0.0, 0.0, 1.0, 0.0]
    assert think_format(as_messages, prompts=chat_prompts, prompt_text=opened) == [0.0, 0.0, 0.0, 1.0]
