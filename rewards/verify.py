"""Final-answer extraction and math-verify, run where a hung or crashing check costs only its own answer.

math-verify's own timeouts use SIGALRM, which fails outside the main thread (Ray actors, thread pools), and some
inputs hang sympy in C code regardless (`5^{5^{5^{5}}}`). So parsing and comparing always run with math-verify's
timeouts off, in a process that can be killed at a deadline:
- inside a reward worker (`rewards.workers`), which the reward pipeline runs one answer per task: `verify_here`;
- anywhere else (a TRL trainer, a script), in this module's own `VerifierPool`, each item under its own deadline.
Either way there is one level of worker processes, never a pool inside a pool.

An answer verifies against its gold when
    normalise(answer) == normalise(gold)                                      (fast path, no sympy), or
    verify(parse("$gold$"), parse("$answer$"))   with LaTeX and plain-expression extraction (gold first: verify is
                                                 not symmetric).
"""

import contextlib
import functools
import logging
import os
import re
import resource
import threading

from rewards.workers import WorkerPool

logger = logging.getLogger("rlqa.rewards")

DEFAULT_PROCESSES = min(2, os.cpu_count() or 1)
DEFAULT_DEADLINE_S = 5.0
# Parsed expressions kept per worker: a group's completions share one gold and repeat answers.
PARSE_CACHE_SIZE = 8192
# Address space a verifier worker may add to what its imports mapped (about 170 MB): sympy on `2^{2^{100}}` grows by
# hundreds of MB a second, and a MemoryError (scored False) beats the machine's OOM killer picking a process.
MEMORY_HEADROOM_BYTES = 2 * 1024**3

_BOXED = re.compile(r"\\boxed\s*\{")
_BRACE_TOKEN = re.compile(r"\\.|[{}]", re.DOTALL)  # an escaped character (\{ is no brace) or a brace
_ANSWER_IS = re.compile(r"[Tt]he (?:final )?answer is")
_GSM8K = "####"
_DELIMITERS = (("\\(", "\\)"), ("\\[", "\\]"))


def extract_answer(text: str) -> str | None:
    """The final answer in a completion: the content of the last `\\boxed{...}` whose braces balance, else what
    follows the last "The answer is" on its line, else what follows the last GSM8K "####" (commas dropped).
    None when there is none. Linear time: no regex that can backtrack.

    >>> extract_answer(r"so \\boxed{\\frac{1}{2}} and finally \\boxed{x^{2}}")
    'x^{2}'
    >>> extract_answer("The answer is $5$."), extract_answer("#### 1,234"), extract_answer("no idea")
    ('5', '1234', None)
    """
    for extract in (_last_boxed, _after_answer_is, _after_gsm8k_marker):
        answer = extract(text)
        if answer:
            return answer
    return None


def _last_boxed(text: str) -> str | None:
    if "\\boxed" not in text:
        return None
    closing = {}  # index of each "{" -> index of the "}" that closes it, from one pass over the braces
    open_braces = []
    for token in _BRACE_TOKEN.finditer(text):
        if token.group() == "{":
            open_braces.append(token.start())
        elif token.group() == "}" and open_braces:
            closing[open_braces.pop()] = token.start()
    for box in reversed(list(_BOXED.finditer(text))):
        brace = box.end() - 1
        if brace in closing:
            return text[brace + 1 : closing[brace]].strip()
    return None


def _after_answer_is(text: str) -> str | None:
    last = None
    for last in _ANSWER_IS.finditer(text):
        pass
    return None if last is None else _rest_of_line(text, last.end())


def _after_gsm8k_marker(text: str) -> str | None:
    index = text.rfind(_GSM8K)
    return None if index < 0 else _rest_of_line(text, index + len(_GSM8K)).replace(",", "")


def _rest_of_line(text: str, start: int) -> str:
    """The line's rest without a leading colon, the closing full stop, $ delimiters or markdown bold."""
    line = text[start:].split("\n", 1)[0].strip().removeprefix(":")
    return line.strip().rstrip(".").strip("$* ")


def normalise(answer: str) -> str:
    """The answer without its math delimiters ($...$, \\(...\\), \\[...\\]), inner whitespace runs made one space
    (LaTeX ignores them)."""
    text = answer.strip().strip("$").strip()
    for opening, closing in _DELIMITERS:
        if text.startswith(opening) and text.endswith(closing):
            text = text[len(opening) : -len(closing)]
    return " ".join(text.split())


class VerifierPool:
    """math-verify in worker processes (`rewards.workers`), for callers outside a reward worker: each item has its own
    deadline; `verify` may be called from any thread, several at once."""

    def __init__(self, processes: int = DEFAULT_PROCESSES):
        self._pool = WorkerPool(_verify_item, initializer=_start_verifier, processes=processes, name="rlqa-verify")

    def verify(self, golds: list[str], answers: list[str | None], deadline_s: float = DEFAULT_DEADLINE_S) -> list[bool]:
        """Whether each answer verifies against its gold. A missing answer, or one whose check runs past
        `deadline_s` (its worker is killed and replaced) or fails, is False; the others are still checked."""
        if len(golds) != len(answers):
            raise ValueError(f"{len(golds)} golds but {len(answers)} answers")
        results = [quick_verdict(gold, answer) for gold, answer in zip(golds, answers)]
        pending = [index for index, verdict in enumerate(results) if verdict is None]
        if pending:
            outcomes = self._pool.run([(golds[i], answers[i]) for i in pending], deadline_s)
            for index, outcome in zip(pending, outcomes):
                results[index] = outcome.status == "ok" and outcome.value
                if outcome.status in ("timeout", "crashed"):
                    logger.warning(
                        "math-verify %s on answer %.80r (gold %.80r): %s",
                        outcome.status,
                        answers[index],
                        golds[index],
                        outcome.detail,
                    )
        return [bool(result) for result in results]

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> "VerifierPool":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


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


def quick_verdict(gold: str, answer: str | None) -> bool | None:
    """False for a missing or empty answer, True when the normalised strings are equal, None when sympy must decide."""
    if answer is None or not normalise(answer) or not normalise(gold):
        return False
    return True if normalise(answer) == normalise(gold) else None


def verify_here(gold: str, answer: str | None) -> bool:
    """math-verify in this process, under the memory cap and with its timeouts off: only for a process that can be
    killed at a deadline (a reward worker), since some inputs hang sympy in C code."""
    verdict = quick_verdict(gold, answer)
    if verdict is not None:
        return verdict
    import math_verify

    with memory_cap(MEMORY_HEADROOM_BYTES):
        parse = _parser()
        return bool(math_verify.verify(parse(gold), parse(answer), timeout_seconds=None))


@functools.cache
def _parser():
    """math-verify's parse, memoised per process; imported on first use."""
    import math_verify

    # Timeouts are off on purpose (the caller's process is killed at a deadline); math-verify warns about it once.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    extraction = [math_verify.LatexExtractionConfig(), math_verify.ExprExtractionConfig()]

    @functools.lru_cache(maxsize=PARSE_CACHE_SIZE)
    def parse(answer: str) -> list:
        return math_verify.parse(f"${normalise(answer)}$", extraction_config=extraction, parsing_timeout=None)

    return parse


def prepare_verifier() -> None:
    """Import math-verify now (in a zygote, so that every worker it forks starts with it)."""
    _parser()


def _start_verifier() -> None:
    """Pool initializer: math-verify imported once, in the zygote, so every worker starts with it under the cap."""
    prepare_verifier()
    _limit_address_space(MEMORY_HEADROOM_BYTES)


@contextlib.contextmanager
def memory_cap(headroom: int):
    """Soft RLIMIT_AS = what this process maps now + headroom, restored afterwards (Linux; elsewhere no limit)."""
    previous = resource.getrlimit(resource.RLIMIT_AS)
    _limit_address_space(headroom)
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, previous)


def _limit_address_space(headroom: int) -> None:
    """RLIMIT_AS = what this process maps now + headroom (Linux; elsewhere no limit)."""
    try:
        with open("/proc/self/statm") as statm:
            mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = mapped + headroom if hard == resource.RLIM_INFINITY else min(mapped + headroom, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _verify_item(state, item: tuple[str, str]) -> bool:
    gold, answer = item
    return verify_here(gold, answer)
