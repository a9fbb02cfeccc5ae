"""Load prompt datasets from the file shapes users bring: JSONL, Parquet, or a Hugging Face `datasets` directory.

Where the rows come from: a `.jsonl` (or .ndjson, ...) file, a `.parquet` file, or a directory written by
`datasets.Dataset.save_to_disk` / `DatasetDict.save_to_disk` (read with `datasets.load_from_disk`; a DatasetDict
gives its `split`). How they are read, the row style (the dataset section's `format`):
- "jsonl" / "parquet": one column holds the prompt text, another the gold answer.
- "verl": verl-style chat rows; `prompt` is a list of `{role, content}` messages and the gold answer sits at
  `reward_model.ground_truth`. Without a chat template the prompt text is the last user message.
- "gsm8k": `{question, answer}` rows whose answer is a worked solution with `<<calc>>` annotations ending in
  `#### <number>`. Gold = the number (thousands commas removed); solution = the worked text without the
  annotations, closed by "The answer is \\boxed{<number>}".
- "auto": chosen from the file suffix and the first row (see `_detect_style`).

Every mistake in a file is a `UserError` naming the file, the row (1-based; the line number for JSONL) and what is
wrong, so the CLI can print it on one line. Rows whose gold answer is blank are skipped with a warning: nothing
can be learned or measured on them.
"""

import json
import re
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow
import pyarrow.parquet

from rlqa.config import DatasetConfig
from rlqa.data.example import Example
from rlqa.errors import UserError
from rlqa.tools.hermes import with_tools_system_message

JSONL_SUFFIXES = (".jsonl", ".json-lines", ".jsonlines", ".ndjson")

# Keys used when the caller leaves prompt_key / answer_key as None.
_DEFAULT_PROMPT_KEY = {"jsonl": "prompt", "parquet": "prompt", "verl": "prompt", "gsm8k": "question"}
_DEFAULT_ANSWER_KEY = {"jsonl": "answer", "parquet": "answer", "verl": "reward_model.ground_truth", "gsm8k": "answer"}

_GSM8K_CALCULATION = re.compile(r"<<.*?>>")


def load_examples(
    path: str | Path, spec: DatasetConfig | None = None, tokenizer: Any = None, tools: list[dict] | None = None
) -> list[Example]:
    """Read a dataset file or directory into `Example`s, in its order, as the recipe's dataset section `spec` says
    (default: every key at its default).

    prompt_key / answer_key default to the format's own columns ("prompt" / "answer"; verl: "prompt" /
    "reward_model.ground_truth"; gsm8k: "question" / "answer"). answer_key, solution_key and id_key may be dotted
    paths into nested dicts. prompt_template is a `str.format` template over the row's columns, where `{prompt}` is
    the prompt text. With chat_template the templated text becomes the user message (after `system_prompt`, if
    given; verl rows keep their own messages) rendered by `tokenizer.apply_chat_template(...,
    add_generation_prompt=True)`. prompt_id is the id_key column if given, else f"{file stem}-{row number - 1}".
    `columns` keeps every top-level column except those holding the prompt, answer and solution. `tools` (JSON
    schemas, `rollout.tools`) are shown in the prompt as `render_prompt` says.
    """
    path = Path(path)
    spec = spec or DatasetConfig(path=str(path))
    check_prompt_options(str(path), spec.chat_template, tokenizer)

    rows = list(_read_rows(path, spec))
    if not rows:
        raise UserError(f"{path}: no rows")
    style = _detect_style(rows[0][1], spec.prompt_key or "prompt") if spec.format == "auto" else spec.format
    prompt_key = spec.prompt_key or _DEFAULT_PROMPT_KEY[style]
    answer_key = spec.answer_key or _DEFAULT_ANSWER_KEY[style]
    solution_key, id_key = spec.solution_key, spec.id_key
    consumed = {key.split(".")[0] for key in (prompt_key, answer_key, solution_key) if key is not None}

    examples = []
    seen_ids: set[str] = set()
    unanswered = []
    for row_number, row in rows:
        where = f"{path}: row {row_number}"
        answer = _optional_text(row, answer_key, where)
        if answer is None:
            # No reward can ever be earned (or measured) on such a row; real datasets have a few (E3 train: 6).
            unanswered.append(row_number)
            continue
        solution = _optional_text(row, solution_key, where) if solution_key else None
        if style == "gsm8k":
            answer, solution = _parse_gsm8k(answer, answer_key, where)
        text, messages = render_prompt(
            row, style, prompt_key, spec.prompt_template, spec.chat_template, tokenizer, spec.system_prompt, where, tools
        )
        prompt_id = _required_text(row, id_key, where) if id_key else f"{path.stem}-{row_number - 1}"
        if prompt_id in seen_ids:
            raise UserError(f"{where}: duplicate id {prompt_id!r} in column {id_key!r}")
        seen_ids.add(prompt_id)
        columns = {key: value for key, value in row.items() if key not in consumed}
        examples.append(Example(prompt_id, text, answer, solution, columns, messages))
    if unanswered:
        shown = ", ".join(map(str, unanswered[:5])) + (", ..." if len(unanswered) > 5 else "")
        message = f"{path}: skipped {len(unanswered)} rows with an empty {answer_key!r} (rows {shown})"
        warnings.warn(message, stacklevel=2)
    if not examples:
        raise UserError(f"{path}: no rows with an answer in column {answer_key!r}")
    return examples


def _read_rows(path: Path, spec: DatasetConfig) -> Iterator[tuple[int, dict]]:
    """(1-based row number, row) pairs; JSONL rows are numbered by line, blank lines skipped."""
    format, limit = spec.format, spec.limit
    if path.is_dir():
        return _read_dataset_dir(path, spec.split, limit)
    if not path.is_file():
        raise UserError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES or (suffix != ".parquet" and format in ("jsonl", "gsm8k")):
        return _read_jsonl(path, limit)
    if suffix == ".parquet" or format in ("parquet", "verl"):
        return _read_parquet(path, limit)
    raise UserError(f"{path}: cannot tell the format from the suffix {suffix!r}; set the format to jsonl or parquet")


def _read_jsonl(path: Path, limit: int | None) -> Iterator[tuple[int, dict]]:
    count = 0
    # Binary lines, so a bad byte is reported with its row instead of failing the whole read.
    with path.open("rb") as lines:
        for line_number, line in enumerate(lines, start=1):
            if limit is not None and count == limit:
                return
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8-sig").strip())  # -sig: tolerate a byte-order mark
            except json.JSONDecodeError as error:
                raise UserError(f"{path}: row {line_number}: not valid JSON ({error.msg} at column {error.colno})")
            except UnicodeDecodeError as error:
                raise UserError(f"{path}: row {line_number}: not UTF-8 text ({error.reason})")
            if not isinstance(row, dict):
                raise UserError(f"{path}: row {line_number}: expected a JSON object, got {type(row).__name__}")
            count += 1
            yield line_number, row


def _read_parquet(path: Path, limit: int | None) -> Iterator[tuple[int, dict]]:
    try:
        table = pyarrow.parquet.read_table(path)
    except (pyarrow.ArrowException, OSError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"{path}: not a readable Parquet file ({first_line})")
    if limit is not None:
        table = table.slice(0, limit)
    return enumerate(table.to_pylist(), start=1)


def _read_dataset_dir(path: Path, split: str, limit: int | None) -> Iterator[tuple[int, dict]]:
    """A directory `save_to_disk` wrote: a Dataset, or a DatasetDict whose `split` is taken."""
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"{path}: not a saved Hugging Face dataset ({first_line})") from None
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise UserError(f"{path}: the dataset has no split {split!r} (it has {', '.join(data)}); set split")
        data = data[split]
    if limit is not None:
        data = data.select(range(min(limit, len(data))))
    return enumerate(data.to_list(), start=1)


def _detect_style(first_row: dict, prompt_key: str) -> str:
    """verl if the prompt column holds a message list; gsm8k if question + answer with '####'; else plain."""
    if isinstance(first_row.get(prompt_key), list):
        return "verl"
    if "question" in first_row and "####" in str(first_row.get("answer", "")):
        return "gsm8k"
    return "jsonl"


def _lookup(row: Mapping, key: str, where: str) -> Any:
    """row[key], where a dotted key walks into nested dicts ("reward_model.ground_truth")."""
    value: Any = row
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise UserError(f"{where}: missing column {key!r}")
        value = value[part]
    return value


def _optional_text(row: Mapping, key: str, where: str) -> str | None:
    """The column as text (numbers via str()), or None when it is null or blank. An absent column is an error."""
    value = _lookup(row, key, where)
    if isinstance(value, (list, dict)):
        raise UserError(f"{where}: column {key!r} holds a {type(value).__name__}, expected text")
    text = "" if value is None else str(value)
    return text if text.strip() else None


def _required_text(row: Mapping, key: str, where: str) -> str:
    text = _optional_text(row, key, where)
    if text is None:
        raise UserError(f"{where}: column {key!r} is empty")
    return text


def _parse_gsm8k(worked: str, answer_key: str, where: str) -> tuple[str, str]:
    """(gold number, solution) from a GSM8K worked answer ending in '#### <number>'."""
    body, separator, final = worked.rpartition("####")
    number = final.strip().replace(",", "")
    if not separator or not number:
        raise UserError(f"{where}: column {answer_key!r} does not end in '#### <number>'")
    steps = _GSM8K_CALCULATION.sub("", body).strip()
    return number, f"{steps}\nThe answer is \\boxed{{{number}}}"


def _templated_messages(row: Mapping, style: str, prompt_key: str, template: str, where: str) -> list[dict[str, str]]:
    """The row's chat messages (one user message unless verl), ending with the templated user message."""
    if style != "verl":
        text = _render_template(template, row, _required_text(row, prompt_key, where), where)
        return [{"role": "user", "content": text}]
    messages = _chat_messages(row, prompt_key, where)
    user_index = _last_user_index(messages, prompt_key, where)
    text = _render_template(template, row, messages[user_index]["content"], where)
    # anything after the last user message (a prefilled reply) is not part of a prompt we generate from
    return messages[:user_index] + [{"role": "user", "content": text}]


def _chat_messages(row: Mapping, prompt_key: str, where: str) -> list[dict[str, str]]:
    messages = _lookup(row, prompt_key, where)
    well_formed = isinstance(messages, list) and all(
        isinstance(message, Mapping) and all(isinstance(message.get(key), str) for key in ("role", "content"))
        for message in messages
    )
    if not well_formed:
        raise UserError(f"{where}: column {prompt_key!r} is not a list of {{role, content}} chat messages")
    return [{"role": message["role"], "content": message["content"]} for message in messages]


def _last_user_index(messages: list[dict[str, str]], prompt_key: str, where: str) -> int:
    for index in reversed(range(len(messages))):
        if messages[index]["role"] == "user":
            return index
    raise UserError(f"{where}: column {prompt_key!r} has no user message")


def _render_template(template: str, row: Mapping, prompt_text: str, where: str) -> str:
    """template.format over the row's columns, with {prompt} = the prompt text."""
    try:
        return template.format_map({**row, "prompt": prompt_text})
    except KeyError as error:
        raise UserError(f"{where}: prompt_template names unknown column {error.args[0]!r}")
    except (IndexError, ValueError, AttributeError, TypeError) as error:
        raise UserError(f"{where}: prompt_template {template!r} cannot be rendered ({error})")


def check_prompt_options(where: str, chat_template: bool, tokenizer: Any) -> None:
    """The chat template needs a tokenizer that has one (a system prompt needs the chat template: the schema says so)."""
    if not chat_template:
        return
    if tokenizer is None:
        raise ValueError("chat_template=True needs a tokenizer")
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise UserError(f"{where}: chat_template is on but the tokenizer {name!r} has no chat template")


def render_prompt(
    row: Mapping, style: str, prompt_key: str, template: str, chat_template: bool, tokenizer: Any, system_prompt: str | None,
    where: str, tools: list[dict] | None = None,
) -> tuple[str, tuple[dict[str, str], ...] | None]:
    """What the model sees, and the messages it was rendered from (None without the chat template): the row's
    messages with `template` over the last user message, rendered by the chat template when it is on (after
    `system_prompt`, which replaces any system message of the row), else that message's text.

    `tools` (JSON schemas) go to the template as `tools=`; a template that renders nothing of them (SmolLM2's) gets
    them as the Hermes tools section of the system message instead (rlqa.tools.hermes), so the model always sees
    its tools."""
    messages = _templated_messages(row, style, prompt_key, template, where)
    if not chat_template:
        return messages[-1]["content"], None
    if system_prompt is not None:
        messages = [{"role": "system", "content": system_prompt}] + [m for m in messages if m["role"] != "system"]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if tools:
        with_tools = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
        if with_tools != text:
            return with_tools, tuple(messages)
        messages = with_tools_system_message(messages, tools)
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text, tuple(messages)
