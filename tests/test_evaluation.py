import math

import pytest

from rlqa.data.example import Example
from rlqa.evaluation import EVAL_STEP, evaluate, maj_at_k, mean_pass_at_k, pass_at_k
from rlqa.rollout.seeding import sample_seed, seeded_requests
from rlqa.rollout.types import Rollout


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        # 1 - C(3,1)/C(5,1) = 1 - 3/5
        (5, 2, 1, 0.4),
        # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (5, 2, 2, 0.7),
        # no correct sample
        (5, 0, 3, 0.0),
        # n - c = 1 < k = 2: every pair holds a correct sample
        (5, 4, 2, 1.0),
        (5, 5, 1, 1.0),
        # 1 - C(97,10)/C(100,10) = 1 - (90·89·88)/(100·99·98) = 1 - 704880/970200 = 0.273469
        (100, 3, 10, 0.273469),
    ],
)
def test_pass_at_k_known_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-6)


def test_pass_at_k_matches_the_binomial_form():
    for n, c, k in [(16, 5, 4), (64, 1, 8), (30, 12, 30)]:
        assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))


@pytest.mark.parametrize(("n", "c", "k"), [(4, 1, 5), (4, 5, 1), (4, -1, 1), (4, 1, 0)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_mean_pass_at_k():
    # pass@1 = c / n per prompt: (0.4 + 0 + 1) / 3
    assert mean_pass_at_k([(5, 2), (5, 0), (4, 4)], 1) == pytest.approx(1.4 / 3)
    with pytest.raises(ValueError):
        mean_pass_at_k([], 1)


def test_maj_at_k():
    # "4" gets two votes, "5" one, None does not vote
    assert maj_at_k(["4", "5", "4", None], [True, False, True, False]) == 1.0
    assert maj_at_k(["4", "5", "5", None], [True, False, False, False]) == 0.0
    # None is the most frequent entry but does not vote: "3" wins
    assert maj_at_k([None, None, None, "3"], [False, False, False, True]) == 1.0


def test_maj_at_k_tie_goes_to_the_first_answer():
    assert maj_at_k(["5", "4", "4", "5"], [False, True, True, False]) == 0.0
    assert maj_at_k(["4", "5", "5", "4"], [True, False, False, True]) == 1.0


def test_maj_at_k_without_answers():
    assert maj_at_k([None, None], [False, False]) == 0.0
    assert maj_at_k([], []) == 0.0
    with pytest.raises(ValueError):
        maj_at_k(["1"], [True, False])


class ScriptedGenerator:
    """Stands in for the rollout group: the texts a policy would produce, fixed so the metrics can be worked out by
    hand (the real group runs in tests/test_integration.py and tests/test_real_model.py)."""

    def __init__(self, greedy: dict, sampled: dict):
        self.greedy, self.sampled = greedy, sampled

    def generate(self, requests, params, version):
        script = self.greedy if params.temperature == 0 else self.sampled
        out = []
        for r in requests:
            text = script[r.prompt_id] if params.temperature == 0 else script[r.prompt_id][r.sample_index]
            out.append(Rollout(r.prompt_id, r.sample_index, list(r.prompt_tokens), [1] * len(text.split()), [], "stop", version, text))
        return out


def test_evaluate_reports_accuracy_lengths_pass_at_k_and_the_boxed_rate():
    examples = [Example("a", "1+1=?", "2"), Example("b", "2+2=?", "4")]
    greedy = {"a": "so \\boxed{2}", "b": "the answer is 5"}  # a right and boxed; b wrong, not boxed
    sampled = {"a": ["\\boxed{2}", "\\boxed{3}"], "b": ["\\boxed{4}", "\\boxed{4} and \\boxed{4}"]}

    def score(texts, rows):
        answers = [t.split("{")[-1].rstrip("}") if "\\boxed{" in t else t.split()[-1] for t in texts]
        return [a == e.answer for a, e in zip(answers, rows)], answers

    results = evaluate(ScriptedGenerator(greedy, sampled), examples, {"a": (5,), "b": (6,)}, score, seed=0, k=2,
                       temperature=1.0, max_new_tokens=8, version=0)
    assert results["accuracy"] == 0.5
    assert results["boxed_rate"] == 0.5  # "the answer is 5" has no box
    assert results["mean_length"] == (2 + 4) / 2 and results["mean_length_correct"] == 2
    assert results["sampled_accuracy"] == 3 / 4
    assert results["sampled_boxed_rate"] == 3 / 4  # two boxes are not one final answer
    assert results["pass@1"] == (1 / 2 + 2 / 2) / 2 and results["pass@2"] == 1.0
    assert results["maj@2"] == (1 + 1) / 2  # a: a tie, the first answer ("2") wins; b: "4" twice


def test_evaluation_asks_the_generator_through_the_training_seam_at_step_minus_one():
    examples = [Example("a", "1+1=?", "2"), Example("b", "2+2=?", "4")]
    generator = ScriptedGenerator({"a": "\\boxed{2}", "b": "\\boxed{4}"}, {"a": ["\\boxed{2}"] * 3, "b": ["\\boxed{1}"] * 3})
    asked = []
    generate = generator.generate
    generator.generate = lambda requests, params, version: asked.append((requests, params)) or generate(requests, params, version)
    score = lambda texts, rows: ([t == f"\\boxed{{{e.answer}}}" for t, e in zip(texts, rows)], texts)  # noqa: E731
    results = evaluate(generator, examples, {"a": (5,), "b": (6,)}, score, seed=7, k=3, temperature=0.8, max_new_tokens=4, version=2)
    (greedy, greedy_params), (sampled, sampled_params) = asked
    assert greedy_params.temperature == 0.0 and sampled_params.temperature == 0.8
    # the requests training builds (seeding.seeded_requests), at step EVAL_STEP = -1: one greedy sample a prompt, then k
    assert greedy == seeded_requests([("a", 1), ("b", 1)], EVAL_STEP, 7, {"a": (5,), "b": (6,)})
    assert [(r.prompt_id, r.sample_index, r.seed) for r in sampled] == [
        (pid, j, sample_seed(7, -1, pid, j)) for pid in "ab" for j in range(3)
    ]
    assert results["pass@1"] == 0.5 and results["pass@3"] == 0.5  # a 3 of 3 right, b 0 of 3


def test_evaluate_by_a_column_reports_each_value_on_its_own():
    examples = [Example("a", "1+1=?", "2", columns={"level": 1}), Example("b", "2+2=?", "4", columns={"level": 2}),
                Example("c", "3+3=?", "6", columns={"level": 2}), Example("d", "4+4=?", "8")]
    greedy = {"a": "\\boxed{2}", "b": "\\boxed{4}", "c": "\\boxed{7}", "d": "\\boxed{8}"}
    sampled = {"a": ["\\boxed{2}", "\\boxed{2}"], "b": ["\\boxed{4}", "\\boxed{5}"], "c": ["\\boxed{1}", "\\boxed{1}"],
               "d": ["\\boxed{8}", "\\boxed{8}"]}

    def score(texts, rows):
        answers = [t.split("{")[-1].rstrip("}") for t in texts]
        return [a == e.answer for a, e in zip(answers, rows)], answers

    results = evaluate(ScriptedGenerator(greedy, sampled), examples, {p: (1,) for p in "abcd"}, score, seed=0, k=2,
                       temperature=1.0, max_new_tokens=8, version=0, by="level")
    # level 1: a right greedy, 2 of 2 sampled; level 2: b right, c wrong greedy → 1/2; pass@1 (1/2 + 0) / 2 = 1/4,
    # pass@2 (1 + 0) / 2 = 1/2. d has no level: only in the overall figures.
    assert results["level=1/accuracy"] == 1.0 and results["level=1/pass@1"] == 1.0 and results["level=1/pass@2"] == 1.0
    assert results["level=2/accuracy"] == 0.5 and results["level=2/pass@1"] == 0.25 and results["level=2/pass@2"] == 0.5
    assert results["accuracy"] == 0.75 and not any(key.startswith("level=None") for key in results)


def test_the_held_out_line_reads_as_a_person_wants_it():
    from rlqa.evaluation import describe

    results = {"accuracy": 0.345, "mean_length": 32.25, "mean_length_correct": 30.0, "boxed_rate": 0.98,
               "sampled_accuracy": 0.7051, "sampled_boxed_rate": 0.9, "maj@8": 0.9, "num_prompts": 200,
               "temperature": 0.6, "pass@1": 0.70512, "pass@8": 0.97}
    assert describe(results) == (
        "greedy accuracy 0.345 (boxed 0.980, 32.2 tokens) | sampled at T=0.6: pass@1 0.705, pass@8 0.970, "
        "maj@8 0.900, boxed 0.900 | 200 prompts"
    )
