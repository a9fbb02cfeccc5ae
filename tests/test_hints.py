"""QuestA hints (rlqa/hints.py): which prompts, how many solution lines, how they fade, their own groups, and state."""

import json

import pytest

from rlqa.config import HintsConfig, SamplerConfig
from rlqa.data.example import Example
from rlqa.errors import UserError
from rlqa.hints import (
    HintedExamples, HintedTokens, HintSchedule, hint_lines, hint_text, hinted_id, schedule_lines, split_hinted,
)
from rlqa.models import build_char_tokenizer
from rlqa.sampler import RolloutSampler
from rlqa.tasks.arithmetic import make_examples

SOLUTION = "12+7=19\n19+30=49\n49+5=54\n54+1=55\n\\boxed{55}"  # 5 lines: a hint shows at most the first 4


def test_ids_and_lines():
    assert hinted_id("q7", 2) == "q7#hint2" and split_hinted("q7#hint2") == ("q7", 2)
    assert split_hinted("q7") == ("q7", 0) and split_hinted("a#hintx") == ("a#hintx", 0)
    assert hint_lines(SOLUTION) == 4 and hint_lines("\\boxed{55}") == 0 and hint_lines(None) == 0
    assert hint_text(SOLUTION, 2) == "12+7=19\n19+30=49\n"


def test_hint_length_fades_over_the_run_and_per_prompt_as_it_is_solved():
    cfg = HintsConfig(fraction=0.5, until=0.8, solved_at=0.5, fade=0.5)
    schedule = HintSchedule(cfg, {"q": 4}, total_steps=10)
    # k = floor(f · ramp · 4), ramp = max(0, 1 - step / 8)
    assert schedule.lines("q", 0) == 2  # 0.5 · 1 · 4 = 2
    assert schedule.lines("q", 4) == 1  # 0.5 · 0.5 · 4 = 1
    assert schedule.lines("q", 6) == 0  # 0.5 · 0.25 · 4 = 0.5
    assert schedule.lines("q", 9) == 0  # past until: the ramp is 0
    schedule.record("q", [True, False, False, False])  # 1/4 < solved_at: no fade
    assert schedule.lines("q", 0) == 2
    schedule.record("q", [True, True, False, False])  # 2/4 reaches 0.5: f = 0.5 · 0.5 = 0.25
    assert schedule.lines("q", 0) == 1  # 0.25 · 4
    restored = HintSchedule(cfg, {"q": 4}, total_steps=10)
    restored.load_state_dict(json.loads(json.dumps(schedule.state_dict())))
    assert restored.lines("q", 0) == 1


def test_only_prompts_estimated_as_never_solved_get_a_hint():
    schedule = HintSchedule(HintsConfig(below=0.1, fraction=0.5), {"q": 4, "one_line": 0}, total_steps=10)
    assert schedule.choose("q", 0, pass_rate=0.05, known=True) == "q#hint2"
    assert schedule.choose("q", 0, pass_rate=0.1, known=True) == "q"  # not below 0.1
    assert schedule.choose("q", 0, pass_rate=0.0, known=False) == "q"  # the sampler knows nothing yet
    assert schedule.choose("one_line", 0, pass_rate=0.0, known=True) == "one_line"  # nothing to show


def hinted_sampler() -> RolloutSampler:
    """Two prompts a step of three; decay 1 so the pass rate is (1 + successes) / (2 + trials)."""
    cfg = SamplerConfig(allocation="uniform", decay=1.0, hints=HintsConfig(below=0.1, fraction=0.5, until=1.0))
    sampler = RolloutSampler(["easy", "hard", "mid"], cfg, prompts_per_step=3, rollouts_per_prompt=4, seed=0,
                             total_steps=10, hint_lines={"easy": 4, "hard": 4, "mid": 4})
    sampler.update({"easy": [True] * 8, "hard": [False] * 30, "mid": [True, False] * 4})
    return sampler


def test_a_hinted_prompt_is_its_own_group_and_its_outcomes_fade_the_hint_not_the_pass_rate():
    sampler = hinted_sampler()
    # hard: p = 1/32 < 0.1 → hinted with floor(0.5 · (1 - 1/10) · 4) = 1 line at step 1; easy 9/10, mid 5/10 plain
    assert sampler.pass_rate("hard") == pytest.approx(1 / 32)
    sampler.next_batch(0)
    batch = dict(sampler.next_batch(1))
    assert batch == {"easy": 4, "hard#hint1": 4, "mid": 4}
    assert sampler.metrics()["sampler/hinted_prompts"] == 1.0
    assert sampler.difficulty("hard#hint1") == sampler.difficulty("hard")
    saved = json.loads(json.dumps(sampler.state_dict()))
    sampler.update({"hard#hint1": [True, True, True, False]})  # solved 3/4 with the hint
    assert sampler.pass_rate("hard") == pytest.approx(1 / 32)  # the plain prompt's estimate is untouched
    after = sampler.next_batch(2)
    assert dict(after)["hard"] == 4  # f: 0.5 → 0.25; floor(0.25 · 0.8 · 4) = 0 lines: plain
    resumed = hinted_sampler()
    resumed.load_state_dict(saved)
    resumed.update({"hard#hint1": [True, True, True, False]})
    assert resumed.next_batch(2) == after


def test_hinted_examples_show_the_prompt_then_the_first_lines_and_keep_the_gold():
    plain = Example("q", "12+7+30+5+1=?\n", "55", "\\boxed{55}", {"steps": SOLUTION})
    examples = HintedExamples({"q": plain}, column="steps")
    hinted = examples["q#hint2"]
    assert hinted.prompt == "12+7+30+5+1=?\n12+7=19\n19+30=49\n" and hinted.answer == "55" and hinted.prompt_id == "q#hint2"
    assert "q#hint2" in examples and examples["q"] is plain
    with pytest.raises(KeyError):
        examples["unknown"]
    tokenizer = build_char_tokenizer()
    base = tuple(tokenizer(plain.prompt, add_special_tokens=False).input_ids)
    tokens = HintedTokens({"q": base}, examples, tokenizer)
    assert tokens["q#hint2"] == base + tuple(tokenizer("12+7=19\n19+30=49\n", add_special_tokens=False).input_ids)
    assert len(tokens["q#hint2"]) == len(hinted.prompt)  # one token per character


def test_the_built_in_task_has_step_solutions_to_hint_with_whatever_the_sft_style():
    from rlqa.config import DatasetConfig

    examples = make_examples(DatasetConfig(task="arithmetic", size=4, levels=[8], answer_only_fraction=1.0))
    assert all(e.solution.startswith("\\boxed{") for e in examples)  # the SFT solution states the answer alone
    assert schedule_lines(examples, HintsConfig(column="steps")) == {e.prompt_id: 3 for e in examples}  # 4 operands
    with pytest.raises(UserError, match="sampler.hints.column"):
        schedule_lines(examples, HintsConfig(column="solution"))
