import logging
import math
from pathlib import Path

import numpy as np
import pytest

from rewards.pipeline import RewardError, RewardPipeline, RewardTermSpec, _call_reward, judge
from rewards.workers import Outcome
from rlqa.errors import UserError

HERE = Path(__file__).parent
FIXTURES = "fixtures/misbehaving.py"  # relative: resolved against base_dir, as a recipe's own reward file is


def term(name: str, function: str, weight: float = 1.0, **options) -> RewardTermSpec:
    return RewardTermSpec(name=name, fn=f"{FIXTURES}:{function}", weight=weight, **options)


@pytest.fixture(scope="module")
def healthy():
    terms = [
        term("length", "length", 0.5),
        term("digit", "scaled_digit", -2.0, kwargs={"scale": 1.5}),
        term("echo", "echo_correct", 10.0),
        term("async_length", "async_length", 0.0),
    ]
    with RewardPipeline(terms, correctness=f"{FIXTURES}:exact_match", base_dir=HERE) as pipeline:
        yield pipeline


@pytest.fixture(scope="module")
def misbehaving():
    terms = [
        term("length", "length"),
        term("boom", "raise_on_boom"),
        term("nan", "nan_on_nan"),
        term("short", "short_on_short"),
        term("sleep", "sleep_on_sleep", deadline_s=1.0),
        term("exit", "exit_on_exit"),
    ]
    with RewardPipeline(terms, correctness=f"{FIXTURES}:exact_match", base_dir=HERE) as pipeline:
        yield pipeline


def test_weighted_total_none_values_and_the_correct_column(healthy):
    out = healthy(["7", "ab", "x9y"], ["p0", "p1", "p2"], {"answer": ["7", "b", "x9y"], "prompt_id": [0, 1, 2]})
    # length [1, 2, 3]; digit 1.5 · first digit = [10.5, None, 13.5]; exact_match [1, 0, 1] -> echo [1, 0, 1]
    # total_0 = 0.5·1 - 2·10.5 + 10·1 = -10.5
    # total_1 = 0.5·2 + 0 (no opinion) + 10·0 = 1.0
    # total_2 = 0.5·3 - 2·13.5 + 10·1 = -15.5
    assert out.total == [-10.5, 1.0, -15.5]
    assert out.correct == [True, False, True]
    assert out.dropped == [False, False, False]
    assert out.terms["length"] == [1.0, 2.0, 3.0]
    assert out.terms["digit"][0] == 10.5 and math.isnan(out.terms["digit"][1]) and out.terms["digit"][2] == 13.5
    assert out.terms["async_length"] == [1.0, 2.0, 3.0]  # an async def term, awaited in the worker
    assert out.metrics["reward/digit"] == 12.0  # (10.5 + 13.5) / 2: no opinion is left out of the mean
    assert out.metrics["reward/length"] == 2.0
    assert out.metrics["reward/mean"] == pytest.approx((-10.5 + 1.0 - 15.5) / 3)
    assert out.metrics["correct/mean"] == pytest.approx(2 / 3)
    assert all(out.metrics[f"reward/{name}/{kind}"] == 0 for name in out.terms for kind in ("errors", "timeouts"))


# Each trigger breaks one term; the batch is [trigger, "ok"] with answers [trigger, "no"], so correct = [True, False].
# Healthy terms give 1.0 each except length: total = len(completion) + 5 terms - failed ones (0 under "zero").
@pytest.mark.parametrize(
    ("trigger", "name", "function", "kind", "failed", "total", "message"),
    [
        ("boom", "boom", "raise_on_boom", "errors", 2, [4 + 4, 2 + 4], "ZeroDivisionError: boom"),
        ("nan", "nan", "nan_on_nan", "nonfinite", 1, [3 + 4, 2 + 5], "returned nan for sample 0"),
        ("short", "short", "short_on_short", "wrong_length", 2, [5 + 4, 2 + 4], "returned 1 values for a batch of 2"),
        ("sleep", "sleep", "sleep_on_sleep", "timeouts", 2, [5 + 4, 2 + 4], "ran past its deadline of 1 s"),
        ("exit", "exit", "exit_on_exit", "errors", 2, [4 + 4, 2 + 4], "exited with code 1"),
    ],
)
def test_a_failing_term_is_counted_logged_once_and_the_run_goes_on(
    misbehaving, caplog, trigger, name, function, kind, failed, total, message
):
    with caplog.at_level(logging.WARNING, logger="rlqa.rewards"):
        for _ in range(2):  # the second failure is only counted
            out = misbehaving([trigger, "ok"], ["p", "p"], {"answer": [trigger, "no"]})
            assert out.total == total
            assert out.correct == [True, False]
            assert out.terms[name] == [0.0] * failed + [1.0] * (2 - failed)
            assert out.metrics[f"reward/{name}/{kind}"] == failed
            counts = {key: value for key, value in out.metrics.items()
                      if key.count("/") == 2 and value and not key.endswith("_frac")}
            assert counts == {f"reward/{name}/{kind}": failed}
            assert out.metrics[f"reward/{name}/timeout_frac"] == (failed / 2 if kind == "timeouts" else 0.0)
    logged = [record.getMessage() for record in caplog.records if f"'{name}'" in record.getMessage()]
    assert len(logged) == 1
    assert function in logged[0] and message in logged[0]
    assert misbehaving(["ok"], ["p"], {"answer": ["ok"]}).total == [2 + 5]


def test_each_kind_of_failure_is_logged_once_per_term_with_the_first_traceback(caplog):
    with RewardPipeline([term("flaky", "raise_or_nan")], correctness=None, base_dir=HERE) as pipeline:
        with caplog.at_level(logging.WARNING, logger="rlqa.rewards"):
            for batch in (["boom"], ["nan"], ["boom", "x"], ["nan", "nan"]):
                pipeline(batch, ["p"] * len(batch), {})
            counts = pipeline(["boom", "x"], ["p", "p"], {}).metrics
    assert counts["reward/flaky/errors"] == 2 and counts["reward/flaky/nonfinite"] == 0
    logged = [record.getMessage() for record in caplog.records]
    assert len(logged) == 2  # five failing calls, two kinds: one message each
    error, nonfinite = logged
    # The error names the term and the function, and carries the traceback from inside the reward function.
    assert error.startswith("reward term 'flaky', first errors (later ones counted): ")
    assert f"{HERE / FIXTURES}:raise_or_nan raised:\nTraceback (most recent call last):" in error
    assert 'raise ZeroDivisionError("boom")' in error and error.endswith("ZeroDivisionError: boom\n")
    assert nonfinite.endswith(f"first nonfinite (later ones counted): {HERE / FIXTURES}:raise_or_nan returned nan for sample 0")


def test_drop_policy_drops_failed_samples_and_reuses_the_correctness_term():
    counter = f"{FIXTURES}:call_count"
    terms = [RewardTermSpec("calls", counter), term("nan", "nan_on_nan")]
    with RewardPipeline(terms, correctness=counter, failure_value="drop", base_dir=HERE) as pipeline:
        first = pipeline(["nan", "a"], ["p", "p"], {})
        second = pipeline(["a", "a"], ["p", "p"], {})
    assert first.dropped == [True, False]
    assert math.isnan(first.total[0]) and math.isnan(first.terms["calls"][0]) and math.isnan(first.terms["nan"][0])
    assert first.total[1] == first.terms["calls"][1] + 1.0
    assert first.metrics["reward/nan/nonfinite"] == 1
    assert first.correct == [True, True]  # a count is >= 0.5; the dropped sample's correctness is kept
    # One call per step: the correctness function is the "calls" term itself, not run a second time.
    assert second.terms["calls"][0] == first.terms["calls"][1] + 1


def test_strict_raises_on_the_first_failure_and_no_correctness_gives_none():
    terms = [term("length", "length"), term("boom", "raise_on_boom")]
    with RewardPipeline(terms, correctness=None, strict=True, base_dir=HERE) as pipeline:
        out = pipeline(["ok"], ["p"], {})
        assert out.correct == [None] and out.total == [3.0] and "correct/mean" not in out.metrics
        with pytest.raises(RewardError, match="(?s)reward term 'boom' failed with errors: .*ZeroDivisionError: boom"):
            pipeline(["boom"], ["p"], {})


def test_two_workers_run_terms_side_by_side_in_order():
    terms = [term("sleep", "sleep_on_sleep", deadline_s=1.0), term("length", "length"), term("digit", "scaled_digit")]
    with RewardPipeline(terms, correctness=None, workers=2, base_dir=HERE) as pipeline:
        out = pipeline(["sleep", "a1"], ["p", "p"], {})
    # The sleeper times out on one worker while the other runs the rest: length [5, 2], digit [None, 1].
    assert out.terms["sleep"] == [0.0, 0.0] and out.metrics["reward/sleep/timeouts"] == 2
    assert out.total == [5.0, 2.0 + 1.0]


def test_builtin_accuracy_gives_the_term_and_correct():
    with RewardPipeline([RewardTermSpec("accuracy", "accuracy")]) as pipeline:
        out = pipeline(
            ["so \\boxed{4}", "so \\boxed{0.5}", "no idea"], ["p"] * 3, {"answer": ["4", "\\frac{1}{2}", "1"]}
        )
    assert out.terms["accuracy"] == [1.0, 1.0, 0.0]
    assert out.correct == [True, True, False]


def test_a_spec_that_does_not_load_is_a_user_error_at_construction():
    with pytest.raises(UserError, match="misbehaving.py has no attribute 'missing'"):
        RewardPipeline([term("x", "missing")], correctness=None, base_dir=HERE)


def test_call_reward_calls_by_keyword_and_returns_plain_floats():
    def array_reward(completions, prompts, *, offset, **_):
        return np.arange(len(completions)) + offset

    def call(fn, completions, **kwargs):
        arguments = {"prompts": ["p"] * len(completions), "completions": completions, **kwargs}
        return _call_reward([fn], (0, arguments, False))

    assert call(array_reward, ["a", "b"], offset=0.5) == [0.5, 1.5]
    assert call(lambda completions, **kw: (True, None), ["a", "b"]) == [1.0, None]
    assert call(lambda completions, **kw: 1.0, ["a"]) == "float"
    with pytest.raises(TypeError, match="value 1 has type str, not a number or None"):
        call(lambda completions, **kw: [1.0, "2"], ["a", "b"])


def test_call_reward_takes_what_trl_takes():
    """TRL's GRPOTrainer builds `torch.tensor(values, dtype=float32)` from the list it iterates out of the return
    value, so NumPy scalars (np.bool_ included), 0-d arrays and 0-d tensors are rewards there, and must be here."""
    torch = pytest.importorskip("torch")

    def call(values, batch=None):
        batch = len(values) if batch is None else batch
        arguments = {"prompts": ["p"] * batch, "completions": ["c"] * batch}
        return _call_reward([lambda completions, **kw: values], (0, arguments, False))

    scalars = [np.bool_(True), np.bool_(False), np.float32(0.5), np.int64(3), np.array(2.5), torch.tensor(1.5), torch.tensor(True), False]
    assert call(scalars) == [1.0, 0.0, 0.5, 3.0, 2.5, 1.5, 1.0, 0.0]
    assert call(np.array([True, False])) == [1.0, 0.0]  # an array of np.bool_
    assert _call_reward([lambda completions, **kw: (len(c) for c in completions)], (0, {"prompts": ["p"], "completions": ["ab"]}, False)) == [2.0]
    with pytest.raises(TypeError, match="value 0 has type Tensor"):  # a 1-element vector is no scalar, in TRL either
        call([torch.tensor([1.0])])
    with pytest.raises(TypeError, match="value 0 has type complex"):
        call([1j])
    assert call(torch.tensor(1.0), batch=1) == "Tensor"  # a 0-d return is no list of values (TRL cannot iterate it)


def test_judge_flags_a_return_that_is_not_a_list():
    judged = judge(Outcome("ok", value="float"), 2, "f", 30.0)
    assert judged.failures == ["wrong_length", "wrong_length"]
    assert judged.message == "f returned a value of type float, not a list of 2 values"


def test_correctness_follows_the_accuracy_terms_answer_format():
    terms = [RewardTermSpec("accuracy", "accuracy", kwargs={"answer_format": "any"})]
    with RewardPipeline(terms) as pipeline:
        out = pipeline(["so it is 7", "so it is 8"], ["p", "p"], {"answer": ["7", "7"]})
        correct, answers = pipeline.correctness(["so it is 7"], ["p"], {"answer": ["7"]})
    assert out.terms["accuracy"] == [1.0, 0.0] and out.correct == [True, False]
    assert out.metrics["reward/accuracy/unparsed_frac"] == 0.0
    assert correct == [True] and answers == ["7"]


TRL_LENGTH = '''
def reward_len(completions, **kwargs):
    """TRL's documented example: the closer to 20 characters, the better."""
    return [-abs(20 - len(completion)) for completion in completions]
'''


def test_a_trl_reward_function_runs_unchanged(tmp_path):
    (tmp_path / "trl_rewards.py").write_text(TRL_LENGTH)
    terms = [RewardTermSpec("len", "trl_rewards.py:reward_len")]
    with RewardPipeline(terms, correctness=None, base_dir=tmp_path) as pipeline:
        out = pipeline(["a" * 5, "a" * 20, "a" * 27], ["p"] * 3, {"answer": ["1"] * 3})
    assert out.terms["len"] == [-15.0, 0.0, -7.0]


def test_a_function_that_cannot_take_the_keyword_call_is_a_user_error(tmp_path):
    (tmp_path / "bad.py").write_text("def positional(completions, prompts):\n    return [0.0] * len(completions)\n")
    with pytest.raises(UserError, match=r"reward '.*bad.py:positional': positional\(completions, prompts\) has no \*\*kwargs"):
        RewardPipeline([RewardTermSpec("bad", "bad.py:positional")], correctness=None, base_dir=tmp_path)
