"""Reward code that writes to its own result pipe (issue 28 item 9): results cross the process boundary as data
(length-prefixed JSON, never unpickled), under the deadline and a size limit, and a reward that kills its zygote
costs only its own call."""

import time
from pathlib import Path

import pytest

from rewards.pipeline import RewardPipeline, RewardTermSpec, _call_reward, _load_functions
from rewards.workers import MAX_REPLY_BYTES, WorkerPool

HERE = Path(__file__).parent
HOSTILE = "fixtures/hostile.py"
DEADLINE_S = 3.0


def hostile(function: str, **kwargs) -> RewardPipeline:
    terms = [RewardTermSpec("hostile", f"{HOSTILE}:{function}", kwargs=kwargs, deadline_s=DEADLINE_S)]
    return RewardPipeline(terms, correctness=None, base_dir=HERE)


def timed(pipeline, completions):
    started = time.monotonic()
    out = pipeline(completions, ["p"] * len(completions), {})
    return out, time.monotonic() - started


def test_a_pickle_written_to_the_result_pipe_is_never_unpickled(tmp_path):
    marker = tmp_path / "ran_in_the_driver"
    with hostile("pickle_payload", marker=str(marker)) as pipeline:
        out, _ = timed(pipeline, ["a", "b"])
        assert not marker.exists()  # os.system did not run: the bytes were read as a message, not unpickled
        assert out.total == [0.0, 0.0] and out.metrics["reward/hostile/errors"] == 2
        again, _ = timed(pipeline, ["a"])  # the worker that broke the protocol was replaced
        assert again.metrics["reward/hostile/errors"] == 1 and not marker.exists()


def test_a_forged_reply_is_an_error_not_a_crash_or_a_loop():
    with hostile("forged_reply") as pipeline:
        for _ in range(2):  # the pool's first task (sequence number 0, which the forgery names) and a later one
            out, seconds = timed(pipeline, ["a", "b"])
            assert out.total == [0.0, 0.0] and out.metrics["reward/hostile/errors"] == 2
            assert seconds < DEADLINE_S


def test_a_partial_message_times_out_at_the_deadline():
    with hostile("partial_message") as pipeline:
        out, seconds = timed(pipeline, ["a", "b"])
    # the driver read the 18 bytes the pipe held and waited for the rest only until the deadline (before: recv()
    # blocked until the reward's 60 s sleep ended)
    assert out.metrics["reward/hostile/timeouts"] == 2
    assert DEADLINE_S <= seconds < DEADLINE_S + 2.0


def test_a_600_mb_announcement_is_refused_before_it_is_read():
    with hostile("huge_announcement") as pipeline:
        out, seconds = timed(pipeline, ["a"])
    assert out.metrics["reward/hostile/errors"] == 1
    assert seconds < DEADLINE_S  # refused on its 8-byte header, not at the deadline


def test_a_600_mb_return_is_refused_quickly():
    with hostile("huge_return") as pipeline:
        out, seconds = timed(pipeline, ["a", "b"])
    assert out.metrics["reward/hostile/errors"] == 2  # value 0 has type str: refused in the worker, never sent
    assert seconds < DEADLINE_S


def test_a_result_over_the_reply_limit_is_an_error_not_a_transfer():
    spec = str(HERE / HOSTILE) + ":big_answer"
    with WorkerPool(_call_reward, initializer=_load_functions, initargs=([spec], [])) as pool:
        (outcome,) = pool.run([(0, {"prompts": ["p"], "completions": ["c"]}, True)], DEADLINE_S)
    assert outcome.status == "error"
    assert f"over the limit of {MAX_REPLY_BYTES}" in outcome.detail and len(outcome.detail) < 1000


def test_a_reward_that_kills_its_zygote_does_not_slow_later_calls():
    with hostile("kill_parent") as pipeline:
        timed(pipeline, ["ok"])  # warm
        for _ in range(3):
            out, seconds = timed(pipeline, ["kill"])
            assert out.metrics["reward/hostile/errors"] == 1
            assert seconds < DEADLINE_S  # the killing call itself, a new zygote started (before: 5 s for an exit status)
            out, seconds = timed(pipeline, ["ab", "c"])
            assert out.total == [2.0, 1.0]  # len("ab"), len("c")
            assert seconds < DEADLINE_S / 3  # the new zygote is already serving
