"""Whether a completion's final answer equals the gold answer: math-verify's extraction and comparison, in process.

This is the core that each verification task runs. It has no pool, thread, signal or timeout of its own, and calls
math-verify with its timeouts off (they use SIGALRM). Some inputs hang sympy whatever we do (`5^{5^{5^{5}}}`), so run
`judge` in a process the caller can kill at a deadline.

Finding the answer (`extract`):
- `boxed`, for prompts that ask for `\\boxed{}`: the last complete `\\boxed{}` (or `\\fbox{}`), together with the boxes
  just before it that math-verify takes with it (`\\boxed{1}, \\boxed{2}` is the set {1, 2}); else the answer after
  the last "The (final) answer is" (math-verify's anchored extraction over the rest of that paragraph, else the
  sentence as written); else what follows GSM8K's last "####".
- `any`: the same, else math-verify's own fallback extraction from free text (its LaTeX and expression configs with
  their default priorities: "final answer is", "answer:", then the last expression or number), over the last
  `FREE_TEXT_REACH` characters: the answer is stated at the end, and its patterns take minutes on some long texts.
  "The answer is" followed by words with no math in them ("The answer is found by counting the rows.") is no final
  answer when math-verify reads one in the text after that sentence: the solution went on and stated it there.
A gold that is itself a worked solution ("... #### 72", "... \\boxed{72}") is reduced to its final answer the same way.

Comparing (`judge`), cheapest first:
1. the two answers are the same string once math delimiters and repeated spaces are dropped (no sympy);
2. math-verify: `verify(parse("$gold$"), parse("$answer$"))`, gold first (verify is not symmetric);
3. readings math-verify lacks, each applied only where the other reading cannot be the right one:
   - thousands separated by spaces or thin spaces (`1 000`, `1\\,000`) when a number is the whole answer;
   - a decimal comma (`1000,99`) when the gold is a single non-integer number and the comma is not a thousands
     separator (`1,000` and `2,500` stay one thousand and two thousand five hundred, as GSM8K writes them);
   - a gold written with a decimal comma: a bare `1,5` is the list 1, 5 (as the E3 golds write lists) and also,
     read by math-verify's expression parser, the number 1.5 (as datasets from comma locales write it); an answer
     equal to either reading is right. Not with a space (`1, 5` is a list), not before three digits (`1,500` is
     1500), and not where the number would be an integer (`-3,0` is the list -3, 0, so -3 is half of it);
   - a decimal rounded to its own places (at least 2 places and 2 significant digits) as an interval endpoint, an
     element of a tuple or set, or a matrix entry: `(0.6, 2.67]` is `(\\frac35, \\frac83]`. A lone number keeps
     math-verify's rule (equal when rounded to 6 places): when the question asks for one number, 2.67 is not 8/3.
   A few notations are rewritten first: `\\lbrace`/`\\rbrace`, `\\not=`, `⩾`/`⩽`, `Bmatrix`.

>>> judge("1, 2", r"so the roots are \\boxed{2} and \\boxed{1}.")
Verdict(correct=True, parsed=True)
>>> judge(r"(\\frac35, \\frac83]", r"\\boxed{(0.6, 2.67]}").correct, judge("72", "#### 72").correct
(True, True)
>>> judge("7", "so it is 7"), judge("7", "so it is 7", answer_format="any")
(Verdict(correct=False, parsed=False), Verdict(correct=True, parsed=True))
>>> extract(r"\\boxed{(2, 2)} \\text{ and } \\boxed{(6, 2)}"), extract("The final answer is $10,455$. I hope.")
('(2, 2),(6, 2)', '10,455')
"""

import functools
import logging
import re
from dataclasses import dataclass, field
from typing import Literal

AnswerFormat = Literal["boxed", "any"]
ANSWER_FORMATS = ("boxed", "any")

# Characters at the end of a completion that math-verify's free-text extraction reads (answer_format "any").
FREE_TEXT_REACH = 4000
# Parsed answers kept per process: a group's completions share one gold and repeat answers.
PARSE_CACHE_SIZE = 8192

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE_TOKEN = re.compile(r"\\.|[{}]", re.DOTALL)  # an escaped character (\{ is no brace) or a brace
# math-verify's rule for boxes taken together (latex2sympy2_extended's extract_boxed_content, mode "last"): the text
# between two boxes is under 10 characters, or under 70 with a separator and the contents differ.
_BOX_SEPARATOR = re.compile(r"\b(and|or)\b|,|;")
_ANSWER_IS = re.compile(r"[Tt]he (?:final )?answer is")
_GSM8K = "####"
_DELIMITERS = (("\\(", "\\)"), ("\\[", "\\]"))
_ANSWER_IS_REACH = 500  # characters after "The answer is" that math-verify's anchored extraction looks at
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
_SENTENCE_OR_LINE_END = re.compile(r"\.(?:\s|$)|\n")

_NOTATION = [  # (pattern, replacement): spellings math-verify's LaTeX parser does not read, or reads wrongly
    (re.compile(r"\\lbrace(?![a-zA-Z])"), r"\\{"),
    (re.compile(r"\\rbrace(?![a-zA-Z])"), r"\\}"),
    (re.compile(r"\\not\s*="), r"\\neq "),
    (re.compile("⩾"), r"\\geq "),
    (re.compile("⩽"), r"\\leq "),
    (re.compile(r"\{Bmatrix\}"), "{bmatrix}"),
]
_THOUSANDS_SEPARATOR = r"(?:\\[,;: ]|~|\s|\{,\}|,)"
_SEPARATED_THOUSANDS = re.compile(rf"-?\d{{1,3}}(?:{_THOUSANDS_SEPARATOR}\d{{3}})+(?:\.\d+)?")
_COMMA_THOUSANDS = re.compile(r"-?\d{1,3}(?:(?:,|\{,\})\d{3})+")
_DECIMAL_COMMA = re.compile(r"-?\d+(?:,|\{,\})\d+")
# A plain number: an integer or decimal (thousands commas allowed), or a single fraction.
_PLAIN_NUMBER = re.compile(r"-?(?:\d+(?:,\d{3})*(?:\.\d+)?|\d+\s*/\s*\d+|\\[dt]?frac\s*\{\d+\}\s*\{\d+\})")
# An arithmetic operator between two numbers (or bracketed terms).
_OPERATION = re.compile(r"[\d)}]\s*(?:[-+*/×÷]|\\times|\\cdot|\\div)\s*[-(\\{]?\s*\d")
# What math-verify's LaTeX parser drops with what follows it: `x = 2/7 \approx 0.29` is read as x = 2/7.
_APPROXIMATION = re.compile(r"\\approx(?![a-zA-Z])|≈")
_ROUNDED_MIN_PLACES = 2
_ROUNDED_MIN_SIGNIFICANT = 2


@dataclass(frozen=True)
class Verdict:
    correct: bool  # the completion's final answer equals the gold
    parsed: bool  # an answer was found in the completion (False: `correct` is False too)
    answer: str | None = field(default=None, compare=False, repr=False)  # that answer as written (maj@k votes on it)


def judge(gold: str, completion: str, answer_format: AnswerFormat = "boxed") -> Verdict:
    """Whether `completion`'s final answer (found as `answer_format` says) equals `gold` (a bare answer or a worked
    solution ending in one)."""
    found = _find_answer(completion, answer_format)
    if found is None:
        return Verdict(correct=False, parsed=False)
    answer, parsed = found
    gold = gold_answer(gold)
    if normalise(answer) and normalise(answer) == normalise(gold):
        return Verdict(correct=True, parsed=True, answer=answer)
    if is_unevaluated(gold, answer):
        return Verdict(correct=False, parsed=True, answer=answer)
    return Verdict(correct=bool(normalise(gold)) and equivalent(gold, answer, parsed), parsed=True, answer=answer)


def is_unevaluated(gold: str, answer: str) -> bool:
    """Whether `answer` restates a computation instead of giving its result, where the gold is a plain number:
    `\\boxed{61+38}` for 99 (math-verify evaluates it and would call it equal; a policy rewarded for it learns to copy
    the question into the box). Its last side (after the last `=`) must be a number: an arithmetic operator between
    two numbers, or nothing at all, is no answer. A single fraction (`3/4`, `\\frac{3}{4}`) is a number. An
    approximation after the value (`x = 2/7 \\approx 0.29`) is left out first, as math-verify leaves it out: the
    value it compares is the one that must be a number.

    >>> is_unevaluated("99", "61+38"), is_unevaluated("99", "61+38=99"), is_unevaluated("0.75", "3/4")
    (True, False, False)
    >>> is_unevaluated("2/7", r"x = 2/7 \\approx 0.29"), is_unevaluated("10", r"(9+1) \\approx 10")
    (False, True)
    """
    if not _PLAIN_NUMBER.fullmatch(normalise(gold)):
        return False
    exact = _APPROXIMATION.split(normalise(answer), 1)[0]
    result = exact.rsplit("=", 1)[-1].strip()
    return not result or (_OPERATION.search(result) is not None and not _PLAIN_NUMBER.fullmatch(result))


def extract(completion: str, answer_format: AnswerFormat = "boxed") -> str | None:
    """The final answer in `completion` as written (boxes taken together joined by commas), or None: what maj@k
    votes on. The very answer `judge` scores. A box or "####" is found in linear time; after "The answer is", and
    in free text (`any`), math-verify's parse runs (sympy, about a second at worst on hostile text seen so far), so
    the worker task that judges is the safest place to call it."""
    found = _find_answer(completion, answer_format)
    return None if found is None else found[0]


def prepare() -> None:
    """Import math-verify and warm its parsers: a zygote calls it, so every worker it forks starts ready."""
    _quiet_math_verify()
    equivalent("1", "1.0")
    _parse_anchored("The final answer is $1$.")


def gold_answer(gold: str) -> str:
    """A worked solution's final answer ("... #### 72" -> "72"); a bare answer as it is."""
    gold = str(gold)
    anchored = _anchored_answer(gold)
    return anchored[0] if anchored else gold.strip()


def normalise(answer: str) -> str:
    """The answer without its math delimiters ($...$, \\(...\\), \\[...\\]), inner whitespace runs made one space
    (LaTeX ignores them)."""
    text = answer.strip().strip("$").strip()
    for opening, closing in _DELIMITERS:
        if text.startswith(opening) and text.endswith(closing):
            text = text[len(opening) : -len(closing)]
    return " ".join(text.split())


def equivalent(gold: str, answer: str, parsed: tuple | None = None) -> bool:
    """Whether `answer` equals the bare answer `gold` in math-verify, or in one of the readings it lacks (module
    docstring). `parsed`: the answer as math-verify's `parse` already read it in its context, if it did."""
    from math_verify import verify

    def matches(reading) -> bool:
        return bool(reading) and verify(list(gold_parsed), list(reading), timeout_seconds=None)

    gold_text = _rewritten(gold)
    gold_parsed = _parse(gold_text)
    if not gold_parsed:
        return False
    answer_text = _rewritten(answer)
    answer_parsed = parsed if parsed is not None else _parse(answer_text)
    if matches(answer_parsed):
        return True
    if parsed is not None:  # the string it found, read again with our rewrites
        answer_parsed = _parse(answer_text)
        if matches(answer_parsed):
            return True
    if _DECIMAL_COMMA.fullmatch(answer_text) and not _COMMA_THOUSANDS.fullmatch(answer_text):
        if _is_single_fraction(gold_parsed[0]):
            return matches(_parse(answer_text.replace("{,}", ".").replace(",", ".")))
    gold_number = _decimal_comma_number(gold_text)
    if gold_number and answer_parsed and verify(list(gold_number), list(answer_parsed), timeout_seconds=None):
        return True
    if answer_parsed:
        snapped = _snap_rounded_elements(gold_parsed[0], answer_parsed[0])
        if snapped is not None:
            return matches((snapped,))
    return False


def _find_answer(completion: str, answer_format: AnswerFormat) -> tuple[str, tuple | None] | None:
    """(the answer as written, math-verify's parse of it when that is what found it) or None."""
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format {answer_format!r}: expected one of {', '.join(ANSWER_FORMATS)}")
    anchored = _anchored_answer(completion, answer_format)
    if anchored is not None:
        return anchored
    if answer_format == "boxed":
        return None
    parsed = _parse_free_text(completion)
    if not parsed:
        return None
    text = next((item for item in parsed if isinstance(item, str)), None) or str(parsed[0])
    return text, parsed


def _anchored_answer(text: str, answer_format: AnswerFormat = "boxed") -> tuple[str, tuple | None] | None:
    """The answer in a box, else after "The (final) answer is", else after "####"; with math-verify's parse of it
    when that is what found it."""
    boxed = _boxed_answer(text)
    if boxed:
        return boxed, None
    stated = _after_answer_is(text, answer_format)
    if stated:
        return stated
    gsm8k = _after_gsm8k_marker(text)
    return (gsm8k, None) if gsm8k else None


def _boxed_answer(text: str) -> str | None:
    """The last complete box's content, joined (with ",") to the boxes before it that math-verify takes with it.
    Linear time: one pass over the braces."""
    if "\\boxed" not in text and "\\fbox" not in text:
        return None
    closing = {}  # index of each "{" -> index of the "}" that closes it
    open_braces = []
    for token in _BRACE_TOKEN.finditer(text):
        if token.group() == "{":
            open_braces.append(token.start())
        elif token.group() == "}" and open_braces:
            closing[open_braces.pop()] = token.start()
    contents: list[str] = []
    next_start = len(text)  # where the box taken last (the one after this one) starts
    for box in reversed(list(_BOX.finditer(text))):
        end = closing.get(box.end() - 1)
        if end is None or end >= next_start:
            if contents:
                break
            continue  # a box that never closes, or one around the boxes already taken: look further back
        content = text[box.end() : end].strip()
        if contents and not _taken_together(text[end + 1 : next_start], content, contents[-1]):
            break
        if not contents or contents[-1] != content:
            contents.append(content)
        next_start = box.start()
    return ",".join(reversed(contents)) or None


def _taken_together(between: str, content: str, later_content: str) -> bool:
    if len(between) < 10:
        return True
    return content != later_content and len(between) < 70 and bool(_BOX_SEPARATOR.search(between))


def _after_answer_is(text: str, answer_format: AnswerFormat = "boxed") -> tuple[str, tuple | None] | None:
    """What follows the last "The (final) answer is": math-verify's anchored extraction over the rest of that
    paragraph (so "$10,455$. I hope it is correct." and "3, not 4." read right), else the sentence as written
    ("Tuesday"). For `any`, words that are no answer ("The answer is found by counting the rows.") give way to
    math-verify's free-text reading of what follows that sentence, when it reads one there."""
    last = None
    for last in _ANSWER_IS.finditer(text):
        pass
    if last is None:
        return None
    # markdown bold dropped: math-verify's expression pattern reads "**120**." as a power
    paragraph = text[last.start() : last.start() + _ANSWER_IS_REACH].split("\n\n", 1)[0].replace("**", "")
    parsed = _parse_anchored(paragraph)
    if parsed:
        return next((item for item in parsed if isinstance(item, str)), None) or str(parsed[0]), parsed
    if answer_format == "any":
        sentence_end = _SENTENCE_OR_LINE_END.search(text, last.end())
        later = _parse_free_text(text[sentence_end.end() :]) if sentence_end else ()
        if later:
            return next((item for item in later if isinstance(item, str)), None) or str(later[0]), later
    line = paragraph[last.end() - last.start() :].lstrip(" \t").removeprefix(":").split("\n", 1)[0]
    sentence_end = _SENTENCE_END.search(line)
    answer = (line[: sentence_end.start()] if sentence_end else line).strip().strip("$* ").rstrip(".")
    return (answer, None) if answer else None


def _after_gsm8k_marker(text: str) -> str | None:
    index = text.rfind(_GSM8K)
    if index < 0:
        return None
    line = text[index + len(_GSM8K) :].split("\n", 1)[0]
    return line.strip().rstrip(".").strip("$* ").replace(",", "") or None


def _rewritten(answer: str) -> str:
    """The bare answer with the notation math-verify misreads rewritten, and a lone number's thousands separators
    dropped."""
    text = normalise(answer)
    for pattern, replacement in _NOTATION:
        text = pattern.sub(replacement, text)
    if _SEPARATED_THOUSANDS.fullmatch(text):
        text = re.sub(_THOUSANDS_SEPARATOR, "", text)
    return text


@functools.lru_cache(maxsize=PARSE_CACHE_SIZE)
def _parse(answer: str) -> tuple:
    """math-verify's reading of a bare answer: LaTeX first, then a plain expression (e.g. `3/4`)."""
    import math_verify

    _quiet_math_verify()
    extraction = [math_verify.LatexExtractionConfig(), math_verify.ExprExtractionConfig()]
    return tuple(math_verify.parse(f"${answer}$", extraction_config=extraction, parsing_timeout=None))


def _parse_anchored(paragraph: str) -> tuple:
    """math-verify's extraction after an answer phrase only ("final answer is", "answer"), no box, no bare number."""
    import math_verify

    _quiet_math_verify()
    extraction = [
        math_verify.LatexExtractionConfig(try_extract_without_anchor=False, boxed_match_priority=-1),
        math_verify.ExprExtractionConfig(try_extract_without_anchor=False),
    ]
    return tuple(math_verify.parse(paragraph, extraction_config=extraction, parsing_timeout=None))


def _parse_free_text(completion: str) -> tuple:
    """math-verify's fallback extraction from free text, with its default configs and priorities, over the last
    `FREE_TEXT_REACH` characters from a line start: its patterns take quadratic time on some texts (200 kB of
    "1 1 1 ..." takes minutes), and the final answer is stated at the end."""
    import math_verify

    _quiet_math_verify()
    tail = completion[-FREE_TEXT_REACH:]
    if len(tail) < len(completion) and "\n" in tail:
        tail = tail.split("\n", 1)[1]
    return tuple(math_verify.parse(tail, parsing_timeout=None))


@functools.cache
def _quiet_math_verify() -> None:
    # Timeouts are off on purpose (the caller's process has the deadline); math-verify warns about that once.
    logging.getLogger("math_verify").setLevel(logging.ERROR)


def _decimal_comma_number(text: str) -> tuple:
    """A gold written `1,5` (no space, not before three digits) as the number math-verify's expression parser reads
    in it (1.5; its number pattern takes a comma before other than three digits as a decimal comma), when that
    number is not an integer; else (). `1,5` is also the list 1, 5: that reading is the gold's LaTeX parse."""
    if not _DECIMAL_COMMA.fullmatch(text) or _COMMA_THOUSANDS.fullmatch(text):
        return ()
    number = _parse_expression(text.replace("{,}", ","))
    return number if number and _is_non_integer(number[0]) else ()


@functools.lru_cache(maxsize=PARSE_CACHE_SIZE)
def _parse_expression(text: str) -> tuple:
    """math-verify's reading of `text` as a plain expression or number (no LaTeX)."""
    import math_verify

    _quiet_math_verify()
    return tuple(math_verify.parse(text, extraction_config=[math_verify.ExprExtractionConfig()], parsing_timeout=None))


def _is_non_integer(value) -> bool:
    """A real number with a fractional part (a Float of -3.0 is an integer here)."""
    import sympy

    return isinstance(value, (sympy.Rational, sympy.Float)) and value % 1 != 0


def _is_single_fraction(value) -> bool:
    """A single real number that is not an integer (so `1000,99` cannot be a thousands-separated integer's match)."""
    import sympy

    return isinstance(value, (sympy.Rational, sympy.Float)) and not isinstance(value, sympy.Integer)


def _snap_rounded_elements(gold, answer):
    """`answer` (an interval, tuple, set or union of them, or a matrix) with each decimal element replaced by the one
    exact gold element it is a rounding of, at the decimal's own places; None when nothing is replaced. Where each
    element stands is left to math-verify's comparison: a tuple or matrix in another order is still unequal."""
    import sympy

    exact = {e for e in _elements(gold) if isinstance(e, sympy.Expr) and e.is_number and not e.has(sympy.Float)}
    replacements = {}
    for element in _elements(answer):
        places = _places(element) if isinstance(element, sympy.Float) else None
        if places is None:
            continue
        half_unit = 0.5 * 10.0**-places * (1 + 1e-9)
        matches = {e for e in exact if _within(e, float(element), half_unit)}
        if len(matches) == 1:
            replacements[element] = matches.pop()
    return answer.xreplace(replacements) if replacements else None


def _within(exact, decimal: float, half_unit: float) -> bool:
    try:
        return bool(exact.is_real) and abs(float(exact) - decimal) <= half_unit
    except (OverflowError, TypeError, ValueError):  # e.g. 10^{400}, past float range
        return False


def _elements(value) -> list:
    """Interval endpoints, tuple and set elements, and matrix entries, recursively; [] for anything else."""
    import sympy

    if isinstance(value, sympy.Interval):
        return [value.start, value.end]
    if isinstance(value, sympy.MatrixBase):
        return list(value)
    if isinstance(value, (sympy.Union, sympy.Tuple, sympy.FiniteSet)):
        return [leaf for item in value.args for leaf in (_elements(item) or [item])]
    return []


def _places(number) -> int | None:
    """Decimal places of a written decimal (`2.6670` -> 3, trailing zeros drop), None when too coarse to be read as a
    rounding: under 2 places or 2 significant digits."""
    written = repr(float(number))
    if "e" in written or "." not in written:
        return None
    places = len(written.split(".")[1])
    significant = len(written.replace("-", "").replace(".", "").lstrip("0"))
    if places < _ROUNDED_MIN_PLACES or significant < _ROUNDED_MIN_SIGNIFICANT:
        return None
    return places
