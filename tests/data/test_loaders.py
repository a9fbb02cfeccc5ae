import json
from pathlib import Path

import pyarrow
import pyarrow.parquet
import pytest
import tokenizers
import transformers
from tokenizers import models, pre_tokenizers

from rlqa.config import DatasetConfig
from rlqa.recipe_files import validate_recipe
from rlqa.data import Example, load_examples
from rlqa.errors import UserError

DATA = Path(__file__).resolve().parent / "real"  # copies of ../shared/data files, so a clean clone has them
GSM8K_TEST = DATA / "gsm8k" / "test.jsonl"
E3_TEST = DATA / "e3" / "test.jsonl"
E3_TRAIN = DATA / "e3" / "train.parquet"


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    return path


def load(path: Path, tokenizer=None, **section) -> list[Example]:
    """load_examples with the recipe's dataset section for `path` holding `section`."""
    return load_examples(path, DatasetConfig(path=str(path), **section), tokenizer)


def user_error(call, *args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def tiny_chat_tokenizer() -> transformers.PreTrainedTokenizerFast:
    model = tokenizers.Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    model.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=model)
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    return tokenizer


# --- the real files -------------------------------------------------------------------------------------------------


def test_gsm8k_real_file_is_detected_and_parsed():
    examples = load(GSM8K_TEST)
    assert len(examples) == 1319
    first = examples[0]
    assert first.prompt_id == "test-0"
    assert first.prompt.startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert first.answer == "18"
    assert first.solution == (
        "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n"
        "She makes 9 * 2 = $18 every day at the farmer\u2019s market.\n"
        "The answer is \\boxed{18}"
    )
    assert first.columns == {}
    # line 147 ends in "#### 2,125": the thousands comma is dropped from the gold
    assert examples[146].answer == "2125"
    assert all(e.solution.endswith(f"\\boxed{{{e.answer}}}") for e in examples)
    assert not any("<<" in e.solution or ">>" in e.solution or "####" in e.solution for e in examples)
    assert any(e.answer.startswith("-") for e in examples)  # "#### -10" keeps its sign


def test_e3_test_jsonl():
    examples = load(E3_TEST)
    assert len(examples) == 1288
    assert examples[1].answer == "025"  # a string answer stays as written
    assert examples[0].prompt.startswith("Every morning Aya goes for a $9$-kilometer-long walk")
    assert examples[0].solution is None
    assert {e.columns["source"] for e in examples} == {"aime", "amc", "math", "olympiad_bench"}
    assert all(set(e.columns) == {"source"} for e in examples)


def test_e3_train_parquet_as_verl():
    # 6 of the 10240 rows have an empty ground truth; no reward can be earned on them, so they are skipped
    with pytest.warns(UserWarning, match=r"skipped 6 rows with an empty 'reward_model.ground_truth' \(rows 1449, "):
        examples = load(E3_TRAIN, format="verl")
    assert len(examples) == 10240 - 6
    first = examples[0]
    assert first.prompt_id == "train-0"
    assert first.answer == "843"
    assert first.prompt.startswith("$x$ is a real number with the property that $x+\\tfrac1x = 3$.")
    assert set(first.columns) == {"data_source", "ability", "rank"}
    assert first.columns["data_source"] == "math"
    assert all(0.0 <= e.columns["rank"] < 1.0 for e in examples)
    assert "train-1448" not in {e.prompt_id for e in examples}  # row 1449 skipped, ids keep the row position
    assert examples[-1].prompt_id == "train-10239"


def test_e3_train_parquet_auto_detects_verl_and_limit_keeps_first_rows():
    examples = load(E3_TRAIN, limit=3)
    assert [e.prompt_id for e in examples] == ["train-0", "train-1", "train-2"]
    assert examples[1].answer == "48"


def test_limit_on_jsonl():
    examples = load(GSM8K_TEST, limit=5)
    assert [e.prompt_id for e in examples] == [f"test-{i}" for i in range(5)]


def test_template_over_columns_on_real_rows():
    examples = load(E3_TEST, prompt_template="[{source}] {prompt}\nAnswer:", limit=1)
    assert examples[0].prompt.startswith("[aime] Every morning Aya")
    assert examples[0].prompt.endswith("spent in the coffee shop.\nAnswer:")


def test_verl_chat_template_on_real_rows():
    examples = load(E3_TRAIN, chat_template=True, tokenizer=tiny_chat_tokenizer(), limit=1)
    content = "$x$ is a real number with the property that $x+\\tfrac1x = 3$. Let $S_m = x^m + \\tfrac{1}{x^m}$. "
    assert examples[0].prompt == f"<user>{content}Determine the value of $S_7$.\n\n<assistant>"


# --- small files ----------------------------------------------------------------------------------------------------


def test_plain_jsonl_with_ids_solution_nested_answer_and_int_answers(tmp_path):
    path = write_jsonl(
        tmp_path / "mine.jsonl",
        [
            {"id": "a", "q": "1+1?", "gold": {"value": 2}, "worked": "1+1=2 \\boxed{2}", "level": 1},
            {"id": "b", "q": "2+3?", "gold": {"value": "5"}, "worked": "2+3=5 \\boxed{5}", "level": 2},
        ],
    )
    examples = load(path, prompt_key="q", answer_key="gold.value", solution_key="worked", id_key="id")
    assert examples == [
        Example("a", "1+1?", "2", "1+1=2 \\boxed{2}", {"id": "a", "level": 1}),
        Example("b", "2+3?", "5", "2+3=5 \\boxed{5}", {"id": "b", "level": 2}),
    ]


def test_blank_lines_are_skipped_and_rows_numbered_by_line(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text('{"prompt": "p", "answer": 1}\n\n{"prompt": "q"}\n')
    assert user_error(load, path) == f"{path}: row 3: missing column 'answer'"
    path.write_text('{"prompt": "p", "answer": 1}\n\n{"prompt": "q", "answer": 2}\n')
    assert [e.prompt_id for e in load(path)] == ["gaps-0", "gaps-2"]


def test_plain_parquet(tmp_path):
    path = write_parquet(tmp_path / "plain.parquet", [{"prompt": "3-5?", "answer": "-2", "level": 3}])
    assert load(path) == [Example("plain-0", "3-5?", "-2", None, {"level": 3})]


def test_gsm8k_format_strips_calculations_and_commas(tmp_path):
    worked = "He has 1,000+250=<<1000+250=1250>>1,250 apples\n#### 1,250"
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "How many?", "answer": worked}])
    (example,) = load(path, format="gsm8k")
    assert example.answer == "1250"
    assert example.solution == "He has 1,000+250=1,250 apples\nThe answer is \\boxed{1250}"
    assert example.prompt == "How many?"


def test_chat_template_with_system_prompt(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "2+2?", "answer": 4}])
    (example,) = load(
        path,
        prompt_template="Q: {prompt}",
        chat_template=True,
        tokenizer=tiny_chat_tokenizer(),
        system_prompt="Be brief.",
    )
    assert example.prompt == "<system>Be brief.\n<user>Q: 2+2?\n<assistant>"


def test_verl_system_prompt_replaces_the_rows_own(tmp_path):
    messages = [{"role": "system", "content": "old"}, {"role": "user", "content": "2+2?"}]
    path = write_parquet(tmp_path / "v.parquet", [{"prompt": messages, "reward_model": {"ground_truth": "4"}}])
    tokenizer = tiny_chat_tokenizer()
    (own,) = load(path, chat_template=True, tokenizer=tokenizer)
    assert own.prompt == "<system>old\n<user>2+2?\n<assistant>"
    (replaced,) = load(path, chat_template=True, tokenizer=tokenizer, system_prompt="new")
    assert replaced.prompt == "<system>new\n<user>2+2?\n<assistant>"
    (plain,) = load(path, prompt_template="Q: {prompt}")
    assert plain.prompt == "Q: 2+2?"


# --- errors: one line naming the file, row and problem --------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    assert user_error(load, path) == f"{path}: no such file"


def test_malformed_json_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "p", "answer": 1}\n{"prompt": "p", "answer": \n')
    # '{"prompt": "p", "answer":' is 25 characters, so the missing value is expected at column 26
    assert user_error(load, path) == f"{path}: row 2: not valid JSON (Expecting value at column 26)"


def test_non_utf8_line(tmp_path):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(b'{"prompt": "\xff", "answer": 1}\n')
    assert user_error(load, path) == f"{path}: row 1: not UTF-8 text (invalid start byte)"


def test_row_that_is_not_an_object(tmp_path):
    path = write_jsonl(tmp_path / "list.jsonl", [["prompt", "answer"]])
    assert user_error(load, path) == f"{path}: row 1: expected a JSON object, got list"


def test_missing_column(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "p", "answer": 1}] * 16 + [{"prompt": "p"}])
    assert user_error(load, path) == f"{path}: row 17: missing column 'answer'"


def test_missing_nested_column(tmp_path):
    path = write_jsonl(tmp_path / "n.jsonl", [{"prompt": "p", "reward_model": {"style": "rule"}}])
    message = user_error(load, path, answer_key="reward_model.ground_truth")
    assert message == f"{path}: row 1: missing column 'reward_model.ground_truth'"


def test_empty_prompt(tmp_path):
    path = write_jsonl(tmp_path / "e.jsonl", [{"prompt": " ", "answer": 1}])
    assert user_error(load, path) == f"{path}: row 1: column 'prompt' is empty"


def test_prompt_that_is_not_text(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"prompt": [{"role": "user", "content": "hi"}], "answer": 1}])
    message = user_error(load, path, format="jsonl")
    assert message == f"{path}: row 1: column 'prompt' holds a list, expected text"


def test_empty_dataset(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    assert user_error(load, path) == f"{path}: no rows"


def test_every_answer_blank(tmp_path):
    path = write_jsonl(tmp_path / "blank.jsonl", [{"prompt": "p", "answer": ""}, {"prompt": "q", "answer": None}])
    with pytest.warns(UserWarning, match=r"skipped 2 rows with an empty 'answer' \(rows 1, 2\)"):
        message = user_error(load, path)
    assert message == f"{path}: no rows with an answer in column 'answer'"


def test_template_naming_unknown_column(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "p", "answer": 1}])
    message = user_error(load, path, prompt_template="{prompt} ({topic})")
    assert message == f"{path}: row 1: prompt_template names unknown column 'topic'"


def test_malformed_template(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "p", "answer": 1}])
    message = user_error(load, path, prompt_template="{prompt")
    expected = f"{path}: row 1: prompt_template '{{prompt' cannot be rendered (expected '}}' before end of string)"
    assert message == expected


def test_duplicate_ids(tmp_path):
    rows = [{"id": 7, "prompt": "p", "answer": 1}, {"id": 7, "prompt": "q", "answer": 2}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    assert user_error(load, path, id_key="id") == f"{path}: row 2: duplicate id '7' in column 'id'"


def test_gsm8k_answer_without_final_number(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "it is 3"}])
    message = user_error(load, path, format="gsm8k")
    assert message == f"{path}: row 1: column 'answer' does not end in '#### <number>'"


def test_gsm8k_file_read_as_plain_jsonl_lacks_prompt(tmp_path):
    message = user_error(load, GSM8K_TEST, format="jsonl", limit=1)
    assert message == f"{GSM8K_TEST}: row 1: missing column 'prompt'"


def test_verl_rows_with_bad_messages(tmp_path):
    path = write_jsonl(tmp_path / "v.jsonl", [{"prompt": [{"role": "user"}], "reward_model": {"ground_truth": "1"}}])
    message = user_error(load, path, format="verl")
    assert message == f"{path}: row 1: column 'prompt' is not a list of {{role, content}} chat messages"
    path = write_jsonl(
        tmp_path / "v.jsonl", [{"prompt": [{"role": "system", "content": "s"}], "reward_model": {"ground_truth": "1"}}]
    )
    assert user_error(load, path, format="verl") == f"{path}: row 1: column 'prompt' has no user message"


def test_unreadable_parquet(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_text("not parquet")
    assert user_error(load, path).startswith(f"{path}: not a readable Parquet file (")


def schema_error(dataset: dict) -> str:
    """What `rlqa check` says about a recipe whose data.train is `dataset`: the schema owns these constraints."""
    return user_error(validate_recipe, {"data": {"train": dataset}}, source="r.yaml", base_dir=Path("."))


def test_unknown_format_and_unknown_suffix(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "answer": 1}])
    message = schema_error({"path": "d.jsonl", "format": "csv"})
    assert message == "r.yaml: data.train.format: Input should be 'auto', 'jsonl', 'parquet', 'verl' or 'gsm8k'"
    text = tmp_path / "d.txt"
    text.write_text(path.read_text())
    message = user_error(load, text)
    assert message == f"{text}: cannot tell the format from the suffix '.txt'; set the format to jsonl or parquet"
    assert load(text, format="jsonl")[0].answer == "1"


def test_chat_template_missing_from_tokenizer(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "p", "answer": 1}])
    tokenizer = tiny_chat_tokenizer()
    tokenizer.chat_template = None
    tokenizer.name_or_path = "models/tiny"
    message = user_error(load, path, chat_template=True, tokenizer=tokenizer)
    assert message == f"{path}: chat_template is on but the tokenizer 'models/tiny' has no chat template"


def test_system_prompt_without_chat_template():
    message = schema_error({"path": "c.jsonl", "system_prompt": "Be brief."})
    assert message == "r.yaml: data.train: system_prompt needs chat_template: true (it is only sent as a chat message)"


def test_limit_must_be_positive():
    assert schema_error({"path": "c.jsonl", "limit": 0}) == "r.yaml: data.train.limit: Input should be greater than 0"


# --- Hugging Face `datasets` directories ----------------------------------------------------------------------------


def test_saved_dataset_directory(tmp_path):
    import datasets

    rows = {"question": ["1+1?", "2+3?", "4-1?"], "answer": ["2", "5", "3"], "level": [1, 2, 1]}
    datasets.Dataset.from_dict(rows).save_to_disk(tmp_path / "arith")
    examples = load(tmp_path / "arith", prompt_key="question", limit=2)
    assert examples == [
        Example("arith-0", "1+1?", "2", None, {"level": 1}),
        Example("arith-1", "2+3?", "5", None, {"level": 2}),
    ]


def test_saved_dataset_dict_directory_takes_the_split(tmp_path):
    import datasets

    split = lambda q, a: datasets.Dataset.from_dict({"prompt": [q], "answer": [a]})  # noqa: E731
    datasets.DatasetDict({"train": split("1+1?", "2"), "test": split("3+3?", "6")}).save_to_disk(tmp_path / "dd")
    assert [e.answer for e in load(tmp_path / "dd")] == ["2"]
    assert [e.answer for e in load(tmp_path / "dd", split="test")] == ["6"]
    # GSM8K-style rows in a directory are recognised as such, as in a file
    gsm8k = {"question": ["How many?"], "answer": ["2+2=<<2+2=4>>4\n#### 4"]}
    datasets.Dataset.from_dict(gsm8k).save_to_disk(tmp_path / "g")
    assert load(tmp_path / "g")[0].answer == "4"


def test_a_directory_that_is_not_a_dataset(tmp_path):
    (tmp_path / "plain").mkdir()
    message = user_error(load, tmp_path / "plain")
    assert message.startswith(f"{tmp_path / 'plain'}: not a saved Hugging Face dataset (")


def test_a_recipe_trains_on_a_dataset_directory(tmp_path):
    import datasets

    from rlqa.data.sources import build_examples

    datasets.Dataset.from_dict({"prompt": ["1+1?"], "answer": ["2"]}).save_to_disk(tmp_path / "data")
    recipe = validate_recipe({"data": {"train": {"path": "data"}}}, source="r.yaml", base_dir=tmp_path)
    (example,) = build_examples(recipe.data.train, recipe, None, "data.train")
    assert (example.prompt, example.answer) == ("1+1?", "2")
