import pytest

from rewards.format import boxed_format, think_format


@pytest.mark.parametrize(
    "completion",
    [
        r"The answer is \boxed{42}",
        r"The answer is \boxed{42}.",
        r"So $\boxed{\frac{1}{2}}$.  ",
        r"\[ \boxed{x^{2}+1} \]",
        r"Sets: \boxed{\{1, 2\}}",
        "<think>work</think>\n\\boxed{7}\n",
    ],
)
def test_boxed_format_accepts_one_final_boxed_answer(completion):
    assert boxed_format([completion]) == [1.0]


@pytest.mark.parametrize(
    "completion",
    [
        "The answer is 42.",
        r"\boxed{1} or maybe \boxed{2}",
        r"\boxed{3} because 3 is prime",
        r"\boxed{\frac{1}{2}",  # never closed
        r"\boxed{1\}",  # the escaped brace does not close the box
        r"\boxed 5",
        "",
    ],
)
def test_boxed_format_rejects(completion):
    assert boxed_format([completion]) == [0.0]


@pytest.mark.parametrize(
    "completion",
    [
        "<think>2 + 2 = 4</think>The answer is 4.",
        "  \n<think>\nhmm\n</think>\n\n4",
        "<think></think>4",  # an empty think block still has the shape
    ],
)
def test_think_format_accepts(completion):
    assert think_format([completion]) == [1.0]


@pytest.mark.parametrize(
    "completion",
    [
        "The answer is 4.",
        "4 <think>2 + 2</think> 4",  # text before <think>
        "<think>2 + 2</think>",  # no answer
        "<think>2 + 2</think>  \n",  # only whitespace after
        "<think>a</think><think>b</think>4",  # two blocks
        "<think>a<think>b</think>4",  # nested open
        "</think>4<think>",  # out of order
        "<think>a</think>4</think>",  # stray close
        "2 + 2</think> 4",  # starts inside the block, but the prompt did not open it
    ],
)
def test_think_format_rejects(completion):
    assert think_format([completion]) == [0.0]


def test_think_format_when_the_prompt_opens_the_block():
    prompt = "<|im_start|>assistant\n<think>\n"
    completions = [
        "2 + 2 = 4\n</think>\n4",  # starts inside the block
        "2 + 2 = 4\n</think>\n",  # no answer
        "<think>2 + 2</think>4",  # reopens a block the template already opened
        "2 + 2 = 4",  # never closes
    ]
    assert think_format(completions, prompts=[prompt] * 4) == [1.0, 0.0, 0.0, 0.0]


def test_think_format_reads_each_completion_against_its_own_prompt():
    completions = ["a</think>b", "a</think>b", "<think>a</think>b"]
    prompts = ["Q<think>", "Q", "Q"]
    assert think_format(completions, prompts) == [1.0, 0.0, 1.0]


def test_format_rewards_return_one_value_per_completion_and_ignore_columns():
    completions = [r"\boxed{1}", "<think>a</think>b", "neither"]
    columns = {"completion_length": [3, 5, 1], "answer": ["1", "b", "c"], "prompt_id": [0, 1, 2]}
    assert boxed_format(completions, ["q"] * 3, **columns) == [1.0, 0.0, 0.0]
    assert think_format(completions, ["q"] * 3, **columns) == [0.0, 1.0, 0.0]
