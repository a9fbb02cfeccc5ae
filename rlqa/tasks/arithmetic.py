"""Procedurally generated arithmetic: the embedded default task.

Small enough that a ~1M-parameter character-level transformer learns the format in minutes of CPU SFT, with graded
levels so RL still has room to improve and the sampler has difficulties to allocate over.

    prompt:   "23+45-12=?\\n"
    direct:   "23+45=68\\n68-12=56\\n\\boxed{56}"
    worked:   "23+45=(20+40)+(3+5)=60+8=68\\n68-12=(60-10)+(8-2)=50+6=56\\n\\boxed{56}"
    verbose:  "we have 23+45-12\\n23+45=68\\ncheck 68-45=23 ok\\n68-12=56\\ncheck 56+12=68 ok\\n"
              "so the answer is 56\\n\\boxed{56}"
    answer only: "\\boxed{56}"

Every solution does the same left-to-right steps. A worked step splits + and - by place value, so each part is a
one-digit fact; a direct step states its result. The two choices are independent: `worked_fraction` of the
solutions show place-value work, and `verbose_fraction` of them are padded with restating and re-checking.
Worked steps are far easier for a small model to get right, so a policy that samples both styles has something
for RL to find; the padding only adds length, a target for length-aware rewards.

Independently of both, `answer_only_fraction` of the solutions skip the steps and state the answer alone. A model
warmed up on them guesses when it starts that way and works the sum out when it starts with a step, so its pass@k is
far above its pass@1 and RL has the better habit to find: the quickstart's design. Every character is printable
ASCII or a newline.

Splits are disjoint by construction: a problem belongs to "test" when int(sha256(text)[:8], 16) % 5 == 0 (about
20%), whatever the seed. Levels are disjoint too: a problem belongs to the easiest level that can produce it.
"""

import hashlib
import itertools
import math
import operator
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rlqa.data.example import Example
from rlqa.errors import UserError

if TYPE_CHECKING:
    from rlqa.config import DatasetConfig


@dataclass(frozen=True)
class LevelSpec:
    """Problems of one level: operand count, operands drawn uniformly from min_operand..max_operand, operators from
    `operators`. Levels come in families; a recipe draws its levels from one family, and within a family a problem
    belongs to the easiest level that can produce it.

    Solutions evaluate left to right, so a level may only mix '*' with other operators when it comes first.
    """

    operand_count: int
    max_operand: int
    operators: str
    min_operand: int = 0
    family: str = "mixed"


LEVELS: dict[int, LevelSpec] = {
    1: LevelSpec(operand_count=2, max_operand=9, operators="+"),
    2: LevelSpec(operand_count=2, max_operand=99, operators="+-"),
    3: LevelSpec(operand_count=3, max_operand=99, operators="+-"),
    4: LevelSpec(operand_count=4, max_operand=99, operators="+-"),
    5: LevelSpec(operand_count=2, max_operand=12, operators="*"),  # times tables, not in the default levels
    # sums of 2, 3 and 4 small numbers: the quickstart's task, where a warm-up's pass@8 is far above its pass@1
    6: LevelSpec(operand_count=2, min_operand=1, max_operand=30, operators="+", family="sums"),
    7: LevelSpec(operand_count=3, min_operand=1, max_operand=30, operators="+", family="sums"),
    8: LevelSpec(operand_count=4, min_operand=1, max_operand=30, operators="+", family="sums"),
    # sums of 2, 3 and 5 small numbers: recipes/spread.yaml, whose warm-up sees only 2 and 3, so after it the
    # training prompts span mastered, in between and (nearly) never solved
    9: LevelSpec(operand_count=2, min_operand=1, max_operand=30, operators="+", family="spread"),
    10: LevelSpec(operand_count=3, min_operand=1, max_operand=30, operators="+", family="spread"),
    11: LevelSpec(operand_count=5, min_operand=1, max_operand=30, operators="+", family="spread"),
}


def family_levels(level: int) -> list[int]:
    """The levels of `level`'s family, easiest first."""
    return sorted(other for other, spec in LEVELS.items() if spec.family == LEVELS[level].family)


def level_rank(level: int) -> float:
    """An offline difficulty prior in [0, 1): the level's position in its family over the family's size."""
    family = family_levels(level)
    return family.index(level) / len(family)

TEST_FRACTION_MODULUS = 5  # 1 in 5 problems is a test problem
_ENUMERATE_UP_TO = 100_000  # levels with at most this many problems are listed whole, so their size is exact
_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul}
_CHECK = {"+": "-", "-": "+"}  # the inverse operation a verbose solution re-checks a step with


@dataclass(frozen=True)
class _Problem:
    operands: tuple[int, ...]
    operators: tuple[str, ...]

    @property
    def text(self) -> str:
        pieces = [str(self.operands[0])]
        for op, operand in zip(self.operators, self.operands[1:]):
            pieces += [op, str(operand)]
        return "".join(pieces)


def make_examples(spec: "DatasetConfig") -> list[Example]:
    """The recipe's dataset section `spec` (task: arithmetic, validated): n = `size` distinct problems of `split`,
    spread evenly over `levels`, in an order seeded by `seed`.

    A level with fewer distinct problems than its even share (level 1 has 100 in all) gives all it has and the
    other levels share the rest. Each solution shows place-value work with probability worked_fraction and is
    verbose with probability verbose_fraction; with probability answer_only_fraction it is the boxed answer alone.
    columns = {"level": level, "rank": level_rank(level)}, an offline difficulty prior in [0, 1).
    Same section -> the same list.
    """
    split, n, seed, levels = spec.split, spec.size, spec.seed, spec.levels
    verbose_fraction, worked_fraction = spec.verbose_fraction, spec.worked_fraction
    rng = random.Random(f"arithmetic-{split}-{seed}")
    answer_only_rng = random.Random(f"arithmetic-{split}-{seed}-answer-only")  # its own stream: other draws unchanged
    pools = {level: _listed_pool(level, split) for level in levels}
    capacities = [math.inf if pools[level] is None else len(pools[level]) for level in levels]
    examples = []
    for level, quota in zip(levels, _spread(n, capacities, split)):
        pool = pools[level]
        problems = rng.sample(pool, quota) if pool is not None else _sampled_problems(level, split, quota, rng)
        for problem in problems:
            verbose = rng.random() < verbose_fraction
            worked = rng.random() < worked_fraction
            answer_only = answer_only_rng.random() < spec.answer_only_fraction
            examples.append(_example(problem, level, split, verbose=verbose, worked=worked, answer_only=answer_only))
    rng.shuffle(examples)
    return examples


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def split_of(text: str) -> str:
    """The split a problem text belongs to, whatever the seed."""
    return "test" if int(_sha(text)[:8], 16) % TEST_FRACTION_MODULUS == 0 else "train"


def _level_of(problem: _Problem, family: str) -> int:
    """The easiest level of `family` whose spec can produce this problem."""
    for level, spec in sorted(LEVELS.items()):
        if (
            spec.family == family
            and len(problem.operands) == spec.operand_count
            and spec.min_operand <= min(problem.operands)
            and max(problem.operands) <= spec.max_operand
            and set(problem.operators) <= set(spec.operators)
        ):
            return level
    raise ValueError(f"no level produces {problem.text}")


def _belongs(problem: _Problem, level: int, split: str) -> bool:
    return _level_of(problem, LEVELS[level].family) == level and split_of(problem.text) == split


def _level_size(spec: LevelSpec) -> int:
    span = spec.max_operand - spec.min_operand + 1
    return span**spec.operand_count * len(spec.operators) ** (spec.operand_count - 1)


def _listed_pool(level: int, split: str) -> list[_Problem] | None:
    """Every problem of the level and split, when the level is small enough to list; else None."""
    spec = LEVELS[level]
    if _level_size(spec) > _ENUMERATE_UP_TO:
        return None
    every = itertools.product(
        itertools.product(range(spec.min_operand, spec.max_operand + 1), repeat=spec.operand_count),
        itertools.product(spec.operators, repeat=spec.operand_count - 1),
    )
    return [problem for problem in itertools.starmap(_Problem, every) if _belongs(problem, level, split)]


def _sampled_problems(level: int, split: str, count: int, rng: random.Random) -> list[_Problem]:
    """count distinct problems drawn uniformly from a level too large to list (millions of problems)."""
    spec = LEVELS[level]
    problems: dict[str, _Problem] = {}
    while len(problems) < count:
        problem = _Problem(
            operands=tuple(rng.randint(spec.min_operand, spec.max_operand) for _ in range(spec.operand_count)),
            operators=tuple(rng.choice(spec.operators) for _ in range(spec.operand_count - 1)),
        )
        if _belongs(problem, level, split):
            problems.setdefault(problem.text, problem)
    return list(problems.values())


def _spread(n: int, capacities: Sequence[float], split: str) -> list[int]:
    """Deal n examples round-robin over the levels, skipping levels that have no problems left."""
    if n > sum(capacities):
        raise UserError(f"arithmetic task: asked for {n} {split} examples but these levels have {sum(capacities)}")
    quotas = [0] * len(capacities)
    level_index = 0
    for _ in range(n):
        while quotas[level_index] >= capacities[level_index]:
            level_index = (level_index + 1) % len(capacities)
        quotas[level_index] += 1
        level_index = (level_index + 1) % len(capacities)
    return quotas


def _steps(problem: _Problem) -> Iterator[tuple[int, str, int, int]]:
    """(left, operator, right, result) for each left-to-right step."""
    value = problem.operands[0]
    for op, operand in zip(problem.operators, problem.operands[1:]):
        result = _APPLY[op](value, operand)
        yield value, op, operand, result
        value = result


def _signed_term(value: int) -> str:
    return f"+{value}" if value >= 0 else str(value)


def _place_parts(value: int, places: int) -> list[int]:
    """value split by place value, most significant first, each part carrying value's sign: -35 -> [-30, -5]."""
    sign, magnitude = (-1 if value < 0 else 1), abs(value)
    return [sign * (magnitude // 10**p % 10) * 10**p for p in reversed(range(places))]


def _worked_step(left: int, op: str, right: int, result: int) -> str:
    """`94-65=(90-60)+(4-5)=30-1=29`: one-digit facts per place, then their sum. One-digit steps stay direct."""
    places = max(len(str(abs(left))), len(str(abs(right))))
    if op == "*" or places == 1:
        return f"{left}{op}{right}={result}"
    signed_right = right if op == "+" else -right
    pairs = list(zip(_place_parts(left, places), _place_parts(signed_right, places)))
    split = "+".join(f"({x}{_signed_term(y)})" for x, y in pairs)
    partial = [x + y for x, y in pairs]
    summed = str(partial[0]) + "".join(_signed_term(v) for v in partial[1:])
    return f"{left}{op}{right}={split}={summed}={result}"


def _solution(problem: _Problem, verbose: bool, worked: bool = False) -> tuple[str, int]:
    """(solution text, final value)."""
    steps = list(_steps(problem))
    final = steps[-1][3]
    lines = [f"we have {problem.text}"] if verbose else []
    for left, op, right, result in steps:
        lines.append(_worked_step(left, op, right, result) if worked else f"{left}{op}{right}={result}")
        if verbose:
            # '*' is re-checked by commuting, which needs no division (right may be 0)
            check = f"{right}*{left}={result}" if op == "*" else f"{result}{_CHECK[op]}{right}={left}"
            lines.append(f"check {check} ok")
    if verbose:
        lines.append(f"so the answer is {final}")
    lines.append(f"\\boxed{{{final}}}")
    return "\n".join(lines), final


def _example(problem: _Problem, level: int, split: str, *, verbose: bool, worked: bool, answer_only: bool = False) -> Example:
    solution, value = _solution(problem, verbose, worked)
    if answer_only:
        solution = f"\\boxed{{{value}}}"
    # "steps": the direct step-by-step solution whatever the SFT style, for hints (sampler.hints.column: steps)
    return Example(
        prompt_id=f"arith-{split}-{_sha(problem.text)[:12]}",
        prompt=f"{problem.text}=?\n",
        answer=str(value),
        solution=solution,
        columns={"level": level, "rank": level_rank(level), "steps": _solution(problem, verbose=False)[0]},
    )
