"""math-verify where a hung or crashing check costs only its own answer.

math-verify's own timeouts use SIGALRM, which fails outside the main thread (Ray actors, thread pools), and some
inputs hang sympy in C code regardless (`5^{5^{5^{5}}}`). So `rewards.answers` always runs with math-verify's
timeouts off, in a process that can be killed at a deadline:
- inside a reward worker (`rewards.workers`), which the reward pipeline runs one completion per task: `judge_here`;
- anywhere else (a TRL trainer, a script), in this module's `VerifierPool`, each item under its own deadline.
Either way there is one level of worker processes, never a pool inside a pool. Both run under a memory cap: sympy on
`2^{2^{100}}` grows by hundreds of MB a second, and a MemoryError (scored False) beats the machine's OOM killer
picking a process.
"""

import contextlib
import logging
import os
import resource
import threading

from rewards.answers import AnswerFormat, Verdict, equivalent, judge, normalise, prepare
from rewards.workers import WorkerPool

logger = logging.getLogger("rlqa.rewards")

DEFAULT_PROCESSES = min(2, os.cpu_count() or 1)
DEFAULT_DEADLINE_S = 5.0
# Address space a check may add to what the process maps when it starts (math-verify imported: about 170 MB).
MEMORY_HEADROOM_BYTES = 2 * 1024**3
NOT_JUDGED = Verdict(correct=False, parsed=False)


class VerifierPool:
    """`rewards.answers` in worker processes, for callers outside a reward worker: each item has its own deadline;
    `judge` and `verify` may be called from any thread, several at once."""

    def __init__(self, processes: int = DEFAULT_PROCESSES):
        self._pool = WorkerPool(_check_item, initializer=_start_verifier, processes=processes, name="rlqa-verify")

    def judge(
        self, golds: list, completions: list[str], answer_format: AnswerFormat = "boxed", deadline_s: float = DEFAULT_DEADLINE_S
    ) -> list[Verdict]:
        """`answers.judge` for each (gold, completion); one past `deadline_s` (its worker is killed and replaced) or
        failing is incorrect, with `parsed` False; the others are still judged."""
        if len(golds) != len(completions):
            raise ValueError(f"{len(golds)} golds but {len(completions)} completions")
        tasks = [("judge", str(gold), completion, answer_format) for gold, completion in zip(golds, completions)]
        return [self._settle(outcome, task, NOT_JUDGED) for outcome, task in zip(self._pool.run(tasks, deadline_s), tasks)]

    def verify(self, golds: list[str], answers: list[str | None], deadline_s: float = DEFAULT_DEADLINE_S) -> list[bool]:
        """Whether each bare answer equals its gold (`answers.equivalent`). A missing answer, or one whose check runs
        past `deadline_s` or fails, is False; equal strings never reach a worker."""
        if len(golds) != len(answers):
            raise ValueError(f"{len(golds)} golds but {len(answers)} answers")
        results: list[bool | None] = [_quick_verdict(gold, answer) for gold, answer in zip(golds, answers)]
        pending = [index for index, verdict in enumerate(results) if verdict is None]
        tasks = [("verify", golds[i], answers[i], None) for i in pending]
        for index, outcome, task in zip(pending, self._pool.run(tasks, deadline_s), tasks):
            results[index] = self._settle(outcome, task, False)
        return [bool(result) for result in results]

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> "VerifierPool":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @staticmethod
    def _settle(outcome, task, failed):
        if outcome.status == "ok":  # data from the worker: [correct, parsed, answer] for judge, a bool for verify
            value = outcome.value
            if task[0] == "verify" and isinstance(value, bool):
                return value
            if (
                task[0] == "judge" and isinstance(value, list) and len(value) == 3
                and isinstance(value[0], bool) and isinstance(value[1], bool) and (value[2] is None or isinstance(value[2], str))
            ):
                return Verdict(correct=value[0], parsed=value[1], answer=value[2])
            logger.warning("math-verify returned malformed data on %.80r (gold %.80r)", task[2], task[1])
            return failed
        if outcome.status in ("timeout", "crashed"):
            logger.warning("math-verify %s on %.80r (gold %.80r): %s", outcome.status, task[2], task[1], outcome.detail)
        return failed


_shared_pool: VerifierPool | None = None
_shared_pool_pid: int | None = None
_shared_pool_lock = threading.Lock()


def get_pool() -> VerifierPool:
    """The process's shared pool, started on first use (a forked child gets its own, not its parent's pipes)."""
    global _shared_pool, _shared_pool_pid
    with _shared_pool_lock:
        if _shared_pool is None or _shared_pool_pid != os.getpid():
            _shared_pool, _shared_pool_pid = VerifierPool(), os.getpid()
        return _shared_pool


def judge_here(gold, completion: str, answer_format: AnswerFormat = "boxed") -> Verdict:
    """`answers.judge` in this process, under the memory cap: only for a process that is killed at a deadline (a
    reward worker), since some inputs hang sympy in C code. A MemoryError is a wrong answer, not a failure."""
    try:
        with memory_cap(MEMORY_HEADROOM_BYTES):
            return judge(str(gold), completion, answer_format)
    except MemoryError:
        return NOT_JUDGED


def prepare_verifier() -> None:
    """Import math-verify now (in a zygote, so that every worker it forks starts with it)."""
    prepare()


@contextlib.contextmanager
def memory_cap(headroom: int):
    """Soft RLIMIT_AS = what this process maps now + headroom, restored afterwards (Linux; elsewhere no limit)."""
    previous = resource.getrlimit(resource.RLIMIT_AS)
    _limit_address_space(headroom)
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, previous)


def _quick_verdict(gold: str, answer: str | None) -> bool | None:
    """False for a missing or empty answer, True for equal strings, None when math-verify must decide."""
    if answer is None or not normalise(answer) or not normalise(gold):
        return False
    return True if normalise(answer) == normalise(gold) else None


def _start_verifier() -> None:
    """Pool initializer: math-verify imported once, in the zygote, so every worker starts with it under the cap."""
    prepare_verifier()
    _limit_address_space(MEMORY_HEADROOM_BYTES)


def _limit_address_space(headroom: int) -> None:
    """Soft RLIMIT_AS = what this process maps now + headroom (Linux; elsewhere no limit)."""
    try:
        with open("/proc/self/statm") as statm:
            mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = mapped + headroom if hard == resource.RLIM_INFINITY else min(mapped + headroom, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _check_item(state, task: tuple):
    """A worker's check, returned as data: [correct, parsed, answer] of a Verdict, or a bool."""
    kind, gold, text, answer_format = task
    if kind == "judge":
        verdict = judge(gold, text, answer_format)
        return [bool(verdict.correct), bool(verdict.parsed), verdict.answer]
    return bool(equivalent(gold, text))
