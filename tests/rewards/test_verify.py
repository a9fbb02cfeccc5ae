import os
import signal
import threading
import time

import pytest

from rewards.verify import MEMORY_HEADROOM_BYTES, VerifierPool

DEADLINE_S = 2.0
# A replacement worker is forked from a zygote that has math-verify imported already: well under a second.
RESTART_SLACK_S = 2.0


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(processes=2) as pool:
        yield pool


def test_judge_in_the_pool_gives_the_verdict_and_the_answer(pool):
    verdicts = pool.judge(["4", "4", "1, 2"], ["so \\boxed{4.0}", "no idea", "\\boxed{2} and \\boxed{1}"])
    assert [(v.correct, v.parsed, v.answer) for v in verdicts] == [
        (True, True, "4.0"), (False, False, None), (True, True, "2,1"),
    ]


def test_verify_equal_values_in_other_forms(pool):
    golds = ["\\frac{1}{2}", "0.5", "-3", "-3", "1,234", "(-\\infty, 0]", "2+\\pi", "5", "4"]
    answers = ["0.5", "1/2", "-3.0", "3", "1234", "(-\\infty,0]", "\\pi+2", "\\[5.0\\]", "5"]
    assert pool.verify(golds, answers) == [True, True, True, False, True, True, True, True, False]


def test_verify_missing_or_empty_answers_are_false_without_a_worker(pool):
    assert pool.verify(["4", "4", ""], [None, "  ", ""]) == [False, False, False]


def test_hostile_inputs_from_a_thread_score_false_within_their_deadlines(pool):
    hostile = [
        "5^{5^{5^{5^{5^{5}}}}}",  # sympy hangs evaluating the tower
        "\\frac{1}{2",  # unbalanced
        "{" * 1000,
        "x" * 200_000 + "}",  # a 200 kB answer
        "1\x00\x07\x1b2\x7f",  # control characters
    ]
    golds = ["5"] * len(hostile) + ["2", "\\frac{1}{2}"]
    answers = hostile + ["2.0", "0.5"]  # healthy items in the same batch are still verified
    results, elapsed = [], []

    def call() -> None:
        start = time.monotonic()
        results.append(pool.verify(golds, answers, deadline_s=DEADLINE_S))
        elapsed.append(time.monotonic() - start)

    thread = threading.Thread(target=call)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert results == [[False] * len(hostile) + [True, True]]
    # Two workers share 7 items; at most 3 rounds of (deadline + a restart) on either worker.
    assert elapsed[0] < 3 * (DEADLINE_S + RESTART_SLACK_S)


def test_several_threads_verify_at_once(pool):
    results = {}

    def call(name: str, golds: list[str], answers: list[str]) -> None:
        results[name] = pool.verify(golds, answers, deadline_s=DEADLINE_S)

    threads = [
        threading.Thread(target=call, args=("hang", ["5"], ["5^{5^{5^{5^{5^{5}}}}}"])),
        threading.Thread(target=call, args=("plain", ["\\frac{1}{3}", "7"] * 3, ["2/6", "8"] * 3)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results == {"hang": [False], "plain": [True, False] * 3}


def test_pool_survives_workers_killed_from_outside(pool):
    assert pool.verify(["\\frac{1}{2}"], ["0.5"]) == [True]  # both workers started
    workers = list(pool._pool._workers)
    for worker in workers:
        os.kill(worker.pid, signal.SIGKILL)
    for worker in workers:  # dead and reaped by the zygote
        while os.path.exists(f"/proc/{worker.pid}"):
            time.sleep(0.01)
    assert pool.verify(["\\frac{1}{2}", "3"], ["0.5", "3.0"], deadline_s=DEADLINE_S) == [True, True]


def test_workers_run_under_a_memory_cap(pool):
    pool.verify(["1"], ["2"])  # the workers have started
    for worker in pool._pool._workers:
        with open(f"/proc/{worker.pid}/limits") as limits:
            line = next(line for line in limits if line.startswith("Max address space"))
        # What the imports mapped (a few hundred MB) plus the headroom.
        assert MEMORY_HEADROOM_BYTES < int(line.split()[3]) < MEMORY_HEADROOM_BYTES + 2 * 1024**3
