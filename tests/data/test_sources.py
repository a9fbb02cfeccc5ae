"""A built-in task honours the dataset keys that shape a prompt (prompt_template, chat_template, system_prompt), as a
file does; a chat template the tokenizer lacks is a user error naming the key."""

import pytest

from rlqa.config import DatasetConfig, Recipe
from rlqa.data.sources import build_examples
from rlqa.errors import UserError
from rlqa.models import build_char_tokenizer


def chat_tokenizer():
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"
    return tokenizer


def built_in(tokenizer, **keys):
    spec = DatasetConfig(task="arithmetic", size=3, levels=[1], **keys)
    return build_examples(spec, Recipe(), tokenizer, "data.train")


def test_a_built_in_task_renders_its_prompts_with_the_chat_template():
    plain = built_in(build_char_tokenizer())
    chat = built_in(
        chat_tokenizer(), chat_template=True, system_prompt="Be brief.", prompt_template="Solve {prompt}(level {level})"
    )
    assert [e.prompt_id for e in chat] == [e.prompt_id for e in plain]
    for p, c in zip(plain, chat):
        assert c.prompt == f"<system>Be brief.\n<user>Solve {p.prompt}(level 1)\n<assistant>"
        assert (c.answer, c.solution, c.columns) == (p.answer, p.solution, p.columns)


def test_a_built_in_task_without_chat_template_keeps_its_prompts_and_applies_the_template():
    plain = built_in(build_char_tokenizer())
    assert all(e.prompt.endswith("=?\n") for e in plain)  # the task's own prompts, unchanged by the default template
    templated = built_in(build_char_tokenizer(), prompt_template="Q: {prompt}")
    assert [e.prompt for e in templated] == [f"Q: {e.prompt}" for e in plain]


def test_chat_template_on_a_tokenizer_without_one_names_the_key():
    with pytest.raises(UserError, match=r"^data\.train\.chat_template: chat_template is on but the tokenizer .* has no chat template$"):
        built_in(build_char_tokenizer(), chat_template=True)
    with pytest.raises(ValueError, match=r"system_prompt"):  # the schema refuses it (pydantic), before any loading
        built_in(build_char_tokenizer(), system_prompt="Be brief.")
