"""Format rewards: 1.0 when a completion has the expected shape, else 0.0. They check shape only, never correctness.

- `boxed_format`: one final answer in `\\boxed{...}`, at the end.
- `think_format`: reasoning in one `<think>...</think>` block, then a non-empty answer.

Completions are strings or TRL's conversational `[{"role": "assistant", "content": ...}]` lists.
"""

import re

from rewards.text import completion_text

BOXED = "\\boxed{"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
# What may follow the boxed answer: whitespace, a full stop, and the math delimiters that close it ($, \], \)).
_BOXED_TAIL = re.compile(r"(?:\s|\.|\$|\\\]|\\\))*")


def _closing_brace(text: str, open_index: int) -> int | None:
    """Index of the brace that closes the one at text[open_index], or None when the braces never balance.

    A backslash escapes the next character, so `\\{` and `\\}` are literal braces that do not nest.
    """
    depth = 0
    index = open_index
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    return None


def _is_boxed_at_end(completion: str) -> bool:
    if completion.count(BOXED) != 1:
        return False
    open_index = completion.index(BOXED) + len(BOXED) - 1
    close_index = _closing_brace(completion, open_index)
    return close_index is not None and _BOXED_TAIL.fullmatch(completion, close_index + 1) is not None


def boxed_format(completions: list, prompts: list | None = None, **_) -> list[float]:
    """r = 1 if the completion holds exactly one `\\boxed{...}`, its braces balance, and nothing but whitespace,
    full stops and closing math delimiters (`$`, `\\]`, `\\)`) follows it; else 0.

    >>> boxed_format(["so $\\\\boxed{\\\\frac{1}{2}}$.", "\\\\boxed{1} or \\\\boxed{2}", "\\\\boxed{3} because"])
    [1.0, 0.0, 0.0]
    """
    return [1.0 if _is_boxed_at_end(completion_text(completion)) else 0.0 for completion in completions]


def _is_think_then_answer(completion: str, think_opened_by_prompt: bool) -> bool:
    if completion.count(THINK_CLOSE) != 1:
        return False
    if think_opened_by_prompt:
        # The chat template already wrote "<think>": the completion starts inside the block and must not reopen it.
        if THINK_OPEN in completion:
            return False
    elif completion.count(THINK_OPEN) != 1 or not completion.lstrip().startswith(THINK_OPEN):
        return False
    answer = completion.split(THINK_CLOSE)[1]
    return answer.strip() != ""


def think_format(
    completions: list, prompts: list | None = None, *, prompt_text: list[str] | None = None, **_
) -> list[float]:
    """r = 1 if the completion is `<think>...</think>` then a non-empty answer, else 0.

    One think block, nothing but whitespace before `<think>`. When the prompt ends with `<think>` (templates that
    open the block for the model), the completion starts inside it: exactly one `</think>` and no `<think>`. The
    prompt read is `prompt_text` (the rendered prompt, which the pipeline passes: conversational prompts are message
    lists, and the chat template is what opens the block), else `prompts`.

    >>> think_format(["<think>2+2</think> 4", "4 <think>2+2</think>", "<think>2+2</think>  "])
    [1.0, 0.0, 0.0]
    >>> think_format(["2+2</think> 4"], prompts=["What is 2+2?<think>\\n"])
    [1.0]
    """
    prompts = prompt_text or prompts or [""] * len(completions)
    pairs = zip(completions, prompts, strict=True)
    return [
        1.0 if _is_think_then_answer(completion_text(completion), _opens_think(prompt)) else 0.0
        for completion, prompt in pairs
    ]


def _opens_think(prompt: str | list) -> bool:
    return isinstance(prompt, str) and prompt.rstrip().endswith(THINK_OPEN)
