from pathlib import Path

import pytest

from rewards.math import accuracy
from rewards.registry import function_name, load_reward_fn, resolve_spec
from rlqa.errors import UserError

HERE = Path(__file__).parent


def test_builtin_name_and_module_spec_load_the_same_function():
    assert load_reward_fn("accuracy") is accuracy
    assert load_reward_fn("rewards.math:accuracy") is accuracy
    assert resolve_spec("accuracy") == resolve_spec("rewards.math:accuracy") == "rewards.math:accuracy"


def test_file_spec_is_resolved_against_base_dir():
    length = load_reward_fn("fixtures/misbehaving.py:length", base_dir=HERE)
    assert length(["abc"], ["p"]) == [3.0]
    assert load_reward_fn(f"{HERE}/fixtures/misbehaving.py:length") is length  # one module per file
    assert resolve_spec("fixtures/misbehaving.py:length", base_dir=HERE) == f"{HERE}/fixtures/misbehaving.py:length"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("acuracy", "reward 'acuracy': not a built-in reward (built-ins: accuracy"),
        ("fixtures/nope.py:f", f"reward 'fixtures/nope.py:f': no such file {HERE}/fixtures/nope.py"),
        ("no_such_package.rewards:f", "reward 'no_such_package.rewards:f': no module named 'no_such_package'"),
        ("rewards.math:nope", "reward 'rewards.math:nope': rewards.math has no attribute 'nope'"),
        ("fixtures/misbehaving.py:NOT_CALLABLE", "NOT_CALLABLE is not callable (type int)"),
        ("rewards.math:", "expected 'package.module:function' or 'path/to/file.py:function'"),
    ],
)
def test_bad_specs_are_one_line_user_errors(spec, message):
    with pytest.raises(UserError) as error:
        load_reward_fn(spec, base_dir=HERE)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_function_name():
    assert function_name("rewards.math:accuracy") == "accuracy"
    assert function_name("path/to/my_rewards.py:format_reward") == "format_reward"
    assert function_name("accuracy") == "accuracy"
