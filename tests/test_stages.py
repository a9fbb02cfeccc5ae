"""The stages of one step over a StepBatch (hand-made batches), and one whole in-process step per algorithm family in
which no metric key is produced twice."""

import math
from types import SimpleNamespace

import pytest
import torch

import in_process
from rlqa import stages, trainer
from rlqa.yields import YieldTotals, describe_yield
from rlqa.config import SamplerConfig
from rlqa.recipe_files import validate_recipe
from rlqa.data.example import Example
from rlqa.length_history import LengthHistory
from rlqa.metrics import merge
from rlqa.rollout.types import Rollout
from rlqa.sampler import RolloutSampler
from rewards.pipeline import RewardPipeline, RewardTermSpec

from test_integration import DESIGN_METRICS


def rollout(prompt_id: str, index: int, length: int = 2, version: int = 3) -> Rollout:
    return Rollout(prompt_id, index, [5, 6], [7] * length, [-1.0] * length, "stop", version)


def batch() -> stages.StepBatch:
    """Prompts a (2 rollouts), b (1), c (3), in request order; rewards, verdicts and one dropped sample set by hand."""
    rollouts = [rollout("a", 0), rollout("a", 1), rollout("b", 0), rollout("c", 0), rollout("c", 1), rollout("c", 2)]
    b = stages.StepBatch(0, 0.9, [("a", 2), ("b", 1), ("c", 3)], rollouts)
    b.rewards = [1.0, 0.0, 0.3, math.nan, 0.5, 0.25]
    b.correct = [True, False, True, None, True, True]
    b.dropped = [False, False, False, True, False, False]
    return b


def test_groups_are_computed_once_from_the_samplers_order():
    b = batch()
    assert b.group_ids.tolist() == [0, 0, 1, 2, 2, 2]
    assert b.groups == [[0, 1], [2], [3, 4, 5]]
    assert b.kept == [0, 1, 2, 4, 5]


def twice() -> stages.StepBatch:
    """Prompt a twice in one step (drawn again in an extra round): groups a (2 rollouts), b (2), a again (3)."""
    rollouts = [rollout("a", 0), rollout("a", 1), rollout("b", 0), rollout("b", 1), rollout("a", 2), rollout("a", 3), rollout("a", 4)]
    b = stages.StepBatch(0, 0.9, [("a", 2), ("b", 2), ("a", 3)], rollouts)
    b.rewards = [1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    b.correct = [x == 1.0 for x in b.rewards]
    b.dropped = [False] * 7
    return b


def test_the_same_prompt_twice_in_a_step_makes_two_groups_with_their_own_advantages():
    b = twice()
    assert b.group_ids.tolist() == [0, 0, 1, 1, 2, 2, 2] and b.groups == [[0, 1], [2, 3], [4, 5, 6]]
    stages.estimate_advantages(b, "grpo")
    # group 0, a: rewards 1, 0 → mean 1/2, unbiased std √((1/4 + 1/4) / 1) = √0.5 → ±0.5 / √0.5 = ±0.707107
    # group 1, b: 1, 1 → 0, 0
    # group 2, a again: 1, 1, 0 → mean 2/3, deviations 1/3, 1/3, -2/3, unbiased std √((1/9 + 1/9 + 4/9) / 2) = √(1/3)
    #   = 0.577350 → (1/3) / 0.577350 = 0.577350 twice, (-2/3) / 0.577350 = -1.154701
    # (one merged group a of 1, 0, 1, 1, 0 would give mean 0.6, std √0.3: 0.730297, -1.095445, ...)
    expected = torch.tensor([0.707107, -0.707107, 0.0, 0.0, 0.577350, 0.577350, -1.154701])
    assert torch.allclose(b.advantages, expected, atol=1e-5)
    assert b.informative() == [True, False, True]
    assert stages.informative_rollouts(b) == [0, 1, 4, 5, 6]
    # the sampler: each group one visit of a, in order. Beta(1, 1); 1 of 2 → α = 0.9 + 1 = 1.9, β = 0.9 + 1 = 1.9;
    # then 2 of 3 → α = 0.9 · 1.9 + 2 = 3.71, β = 0.9 · 1.9 + 1 = 2.71 → pass rate 3.71 / 6.42
    sampler = RolloutSampler(["a", "b"], SamplerConfig(), prompts_per_step=2, rollouts_per_prompt=2, seed=0)
    sampler.next_batch(0)
    metrics = stages.advance_sampler(b, sampler, LengthHistory())
    assert sampler.pass_rate("a") == pytest.approx(3.71 / 6.42)
    assert metrics["sampler/all_correct_frac"] == pytest.approx(1 / 3)  # b only, of 3 groups


def test_dynamic_sampling_keeps_one_occurrence_of_a_prompt_and_filters_the_other():
    # target 1: the first informative group trains (group 0, a); a's second group is surplus, b constant
    b, metrics = stages.dynamic_sampling(twice(), None, SimpleNamespace(prompts_left_in_step=0), target=1, max_extra_rounds=0)
    assert b.filtered == [False, True, True] and b.kept == [0, 1]
    assert metrics["sampler/filtered_groups"] == 1.0 and metrics["sampler/prompts_generated"] == 3.0


def test_rollouts_that_do_not_follow_the_groups_are_refused():
    b = stages.StepBatch(0, 1.0, [("a", 1), ("b", 1)], [rollout("b", 0), rollout("a", 0)])
    with pytest.raises(ValueError, match=r"step 0: the rollouts do not follow the groups"):
        b.group_ids


def test_advantages_over_the_kept_rollouts_of_each_group():
    b = batch()
    # a: rewards 1, 0 → mean 0.5, std √0.5 → ±0.5/√0.5 = ±0.707107; b alone → 0; c (kept 0.5, 0.25) → ±0.707107
    metrics = stages.estimate_advantages(b, "grpo")
    assert torch.allclose(b.advantages, torch.tensor([0.707107, -0.707107, 0.0, 0.707107, -0.707107]), atol=1e-5)
    assert metrics == {"advantage/nonzero_frac": pytest.approx(0.8)}
    samples = b.train_samples()
    assert [s.reward for s in samples] == [1.0, 0.0, pytest.approx(0.3), 0.5, 0.25]
    assert [s.advantage for s in samples] == b.advantages.tolist()
    # GAE is the learner's (it needs the critic): the driver leaves advantages to it and reports nothing
    assert stages.estimate_advantages(b, "gae") == {} and b.advantages is None
    assert [s.advantage for s in b.train_samples()] == [0.0] * 5


def test_sampler_stage_counts_groups_and_leaves_out_missing_verdicts():
    b = batch()
    sampler = RolloutSampler(["a", "b", "c"], SamplerConfig(), prompts_per_step=3, rollouts_per_prompt=2, seed=0)
    sampler.next_batch(0)
    history = LengthHistory()
    metrics = stages.advance_sampler(b, sampler, history)
    # a: one right, one wrong; b: right; c: no verdict, right, right → all right only for b (no verdict counts as
    # wrong for the fractions), all wrong for none
    assert metrics["sampler/all_correct_frac"] == pytest.approx(1 / 3) and metrics["sampler/all_wrong_frac"] == 0.0
    assert metrics["sampler/prompts"] == 3.0 and metrics["sampler/alloc_mean"] == 2.0
    # c's estimate counts its two verdicts only: Beta(1, 1) → α = 0.9 + 2, β = 0.9
    assert sampler.pass_rate("c") == pytest.approx(2.9 / 3.8)
    assert history.lengths_for(["a", "c"]) == [2, 2]


def test_rollout_metrics_and_staleness():
    b = batch()
    b.rollouts[5] = Rollout("c", 2, [5], [7] * 5, [-1.0] * 5, "length", 2)
    metrics = stages.rollout_metrics(b, version=4, worker_restarts=1)
    assert metrics["rollout/count"] == 6 and metrics["rollout/tokens"] == 15 and metrics["rollout/dropped"] == 1
    assert metrics["rollout/generated"] == 6  # no group filtered: everything generated trains
    assert metrics["rollout/length_correct_mean"] == pytest.approx((2 + 2 + 2 + 5) / 4)
    assert metrics["rollout/truncated_frac"] == pytest.approx(1 / 6)
    # the update started from version 3; five rollouts came from 3, one from 2
    assert metrics["rollout/staleness"] == pytest.approx(3 - 17 / 6)
    assert metrics["rollout/temperature"] == 0.9


def scored(step: int, rewards: dict[str, list[float]]) -> stages.StepBatch:
    """A scored batch with one group per prompt, holding `rewards`; verdict: reward 1."""
    b = stages.StepBatch(
        step, 0.9, [(pid, len(r)) for pid, r in rewards.items()], [rollout(pid, j) for pid, r in rewards.items() for j in range(len(r))]
    )
    b.rewards = [x for r in rewards.values() for x in r]
    b.correct = [x == 1.0 for x in b.rewards]
    b.dropped = [False] * len(b.rewards)
    return b


def test_dynamic_sampling_drops_constant_groups_and_refills_up_to_the_target():
    # a, c informative; b, d constant → shortfall 2 at an informative share 2/4 → one round of ⌈2 · 4 / 2⌉ = 4 prompts
    first = scored(0, {"a": [1.0, 0.0], "b": [1.0, 1.0], "c": [0.0, 0.5], "d": [0.0, 0.0]})
    more = scored(0, {"e": [1.0, 0.0], "f": [0.0, 0.0], "g": [0.2, 0.1], "h": [1.0, 0.5]})
    asked = []
    batch, metrics = stages.dynamic_sampling(
        first, lambda so_far, k: asked.append((len(so_far.prompts), k)) or more, SimpleNamespace(prompts_left_in_step=4), target=4, max_extra_rounds=3,
        signal="reward",  # c (0, 0.5) and g (0.2, 0.1) are all wrong: they have signal in their rewards only
    )
    assert asked == [(4, 4)]  # after the first round's 4 groups, 4 more
    assert metrics == {"sampler/filtered_groups": 3.0, "sampler/extra_rounds": 1.0, "sampler/prompts_generated": 8.0}
    # the first 4 informative groups train: a, c, e, g; h is surplus; b, d, f constant
    assert batch.filtered == [False, True, False, True, False, True, False, True]
    assert [batch.rollouts[i].prompt_id for i in batch.kept] == ["a", "a", "c", "c", "e", "e", "g", "g"]
    stages.estimate_advantages(batch, "grpo")
    assert [s.reward for s in batch.train_samples()] == pytest.approx([1.0, 0.0, 0.0, 0.5, 1.0, 0.0, 0.2, 0.1])
    assert torch.allclose(batch.advantages, torch.tensor([1.0, -1, -1, 1, 1, -1, 1, -1]) * 0.707107, atol=1e-5)
    # the rollout metrics count what trains; the sampler learns from every group, and counts the trained prompts
    rollout_metrics = stages.rollout_metrics(batch, version=4, worker_restarts=0)
    assert rollout_metrics["rollout/count"] == 8 and rollout_metrics["rollout/generated"] == 16  # what was generated
    sampler = RolloutSampler(list("abcdefgh"), SamplerConfig(), prompts_per_step=4, rollouts_per_prompt=2, seed=0)
    sampler.next_batch(0)
    sampler_metrics = stages.advance_sampler(batch, sampler, LengthHistory())
    assert sampler_metrics["sampler/prompts"] == 4.0 and sampler_metrics["sampler/all_wrong_frac"] == 4 / 8  # c, d, f, g
    assert sampler.pass_rate("f") == pytest.approx(0.9 / 3.8)  # f trained on nothing, yet its two wrongs count


def test_dynamic_sampling_filters_on_accuracy_by_default_and_on_the_total_reward_as_asked():
    # a: right and wrong (1, 0) → signal either way. o: both wrong, one of them penalised for running over the
    # length (0, -0.5): accuracy constant (DAPO filters it), reward not (kept under `reward`)
    first = scored(0, {"a": [1.0, 0.0], "o": [0.0, -0.5]})
    assert first.correct == [True, False, False, False]
    assert first.informative() == [True, False] and first.informative("accuracy") == [True, False]
    assert first.informative("reward") == [True, True]
    left = SimpleNamespace(prompts_left_in_step=0)  # no extra round: only the filter acts
    batch, metrics = stages.dynamic_sampling(first, None, left, target=2, max_extra_rounds=1)
    assert metrics["sampler/filtered_groups"] == 1.0 and batch.filtered == [False, True] and batch.kept == [0, 1]
    batch, metrics = stages.dynamic_sampling(scored(0, {"a": [1.0, 0.0], "o": [0.0, -0.5]}), None, left, target=2, max_extra_rounds=1, signal="reward")
    assert metrics["sampler/filtered_groups"] == 0.0 and batch.kept == [0, 1, 2, 3]


def test_dynamic_sampling_stops_at_the_round_cap_and_at_the_end_of_the_data():
    first = scored(0, {"a": [1.0, 0.0], "b": [1.0, 1.0]})
    rounds = iter(range(10))
    constant = lambda so_far, k: scored(0, {f"x{next(rounds)}": [0.0, 0.0] for _ in range(k)})  # noqa: E731
    batch, metrics = stages.dynamic_sampling(first, constant, SimpleNamespace(prompts_left_in_step=9), target=2, max_extra_rounds=2)
    # each round: shortfall 1 over a share 1/G → ⌈1 · 2 / 1⌉ = 2, then ⌈1 · 4 / 1⌉ = 4, at most the target: 2; the cap
    assert metrics == {"sampler/filtered_groups": 5.0, "sampler/extra_rounds": 2.0, "sampler/prompts_generated": 6.0}
    assert [batch.rollouts[i].prompt_id for i in batch.kept] == ["a", "a"]
    # no prompt left to draw this step: no round
    _, metrics = stages.dynamic_sampling(first, constant, SimpleNamespace(prompts_left_in_step=0), target=2, max_extra_rounds=2)
    assert metrics["sampler/extra_rounds"] == 0.0


def test_a_step_with_no_informative_group_trains_on_all_of_them():
    first = scored(0, {"a": [1.0, 1.0], "b": [0.0, 0.0]})
    batch, metrics = stages.dynamic_sampling(first, None, SimpleNamespace(prompts_left_in_step=6), target=2, max_extra_rounds=0)
    assert metrics["sampler/filtered_groups"] == 2.0 and batch.kept == [0, 1, 2, 3]


def test_the_easy_prompt_length_bias_reads_the_samplers_live_difficulty():
    # Offline ranks a 0.5, b 0, c 0; the sampler (beta, no offline ranks: sampler.rank_column null) has seen a 20 of 20
    # right → Beta(0.9 + 20, 0.9), difficulty 0.9 / 21.8 ≈ 0.04, and b 0 of 2 → Beta(0.9, 0.9 + 2), 2.9 / 3.8 ≈ 0.76;
    # c never: no estimate, so its rank column decides.
    examples = {pid: Example(pid, f"{pid}?", "7", columns={"rank": rank}) for pid, rank in [("a", 0.5), ("b", 0.0), ("c", 0.0)]}
    sampler = RolloutSampler(list("abc"), SamplerConfig(), prompts_per_step=3, rollouts_per_prompt=2, seed=0)
    sampler.update({"a": [True] * 20, "b": [False] * 2})
    rollouts = [Rollout(pid, 0, [5], [7, 8], [-1.0, -1.0], "stop", 0, text="\\boxed{7}") for pid in "abc"]
    b = stages.StepBatch(0, 1.0, [("a", 1), ("b", 1), ("c", 1)], rollouts)
    terms = [RewardTermSpec("accuracy", "accuracy"), RewardTermSpec("easy", "easy_prompt_length_bias", kwargs={"mu": 0.5})]
    with RewardPipeline(terms) as pipeline:
        stages.score(b, pipeline, examples, LengthHistory(), sampler, max_new_tokens=8)
    # all three right; L = 2, μ = 0.5 → bias -μL / (1 + μL) = -0.5 where easy (difficulty ≤ 0.1): a (live 0.04,
    # although ranked 0.5) and c (rank 0); not b (live 0.76, although ranked 0)
    assert b.correct == [True, True, True]
    assert b.rewards == [0.5, 1.0, 0.5]


def test_merge_refuses_a_key_produced_twice():
    assert merge({"a/x": 1.0}, {"b/y": 2.0}) == {"a/x": 1.0, "b/y": 2.0}
    with pytest.raises(ValueError, match="produced twice in one step: reward/mean"):
        merge({"reward/mean": 1.0}, {"reward/mean": 0.5})


TINY = {"hidden_size": 16, "layers": 1, "heads": 2, "intermediate_size": 32, "max_positions": 64}
FAMILIES = {  # recipe's algorithm (and learner) sections, and a key only that family's learner reports
    "grpo with a reference": ({"algorithm": {"kl_coef": 0.02}}, "policy/kl_sampled"),
    "gspo": (
        {"algorithm": {"policy_loss": "gspo", "loss_aggregation": "seq-mean-token-mean", "kl_coef": 0.02, "kl_ratio_weighted": True}},
        "policy/kl_sampled",
    ),
    "cispo with TIS": (
        {"algorithm": {"policy_loss": "cispo", "old_logprobs": "recompute", "tis_cap": 2.0}, "learner": {"mini_batches": 2}},
        "policy/tis_weight_mean",
    ),
    "ppo": (
        {"algorithm": {"name": "ppo", "advantage": "gae", "kl_coef": 0.05, "kl_in_reward": True, "critic": {}}},
        "critic/value_loss",
    ),
    "dapo dynamic sampling": ({"sampler": {"dynamic_sampling": True, "max_extra_rounds": 2}}, "sampler/prompts_generated"),
}
DYNAMIC_SAMPLING = ["sampler/filtered_groups", "sampler/extra_rounds", "sampler/prompts_generated"]


@pytest.fixture(scope="module")
def rewards():
    with RewardPipeline([RewardTermSpec("accuracy", "accuracy"), RewardTermSpec("length_penalty", "length_penalty")]) as pipeline:
        yield pipeline


def tiny_step(run_dir, rewards, sections: dict):
    """In-process components of a two-step run on the tiny model, 2 prompts × 2 rollouts a step."""
    raw = {
        "model": {"tiny": TINY},
        "data": {"train": {"task": "arithmetic", "size": 8, "levels": [1]}},
        "rollout": {"prompts_per_step": 2, "rollouts_per_prompt": 2, "max_new_tokens": 6},
        "trainer": {"steps": 2},
        **sections,
    }
    return in_process.components(validate_recipe(raw, source="test", base_dir=run_dir), run_dir, rewards)


@pytest.mark.parametrize("family", FAMILIES)
def test_no_metric_key_is_produced_twice_in_a_step(family, tmp_path, rewards, monkeypatch):
    c = tiny_step(tmp_path, rewards, FAMILIES[family][0])
    produced = []
    monkeypatch.setattr(trainer, "merge", lambda *parts: produced.append(parts) or merge(*parts))
    for step in range(2):
        metrics, samples = trainer.rl_step(c, step)
        (parts,) = produced[-1:]
        keys = [key for part in parts for key in part]
        assert len(keys) == len(set(keys))  # the union of the stages' metrics has no collisions
        assert not [name for name in DESIGN_METRICS if name not in metrics]
        assert metrics["policy/version"] == step + 1 and len(samples) == 4
    own = FAMILIES[family][1]
    assert own is None or own in metrics
    on = FAMILIES[family][0].get("sampler", {}).get("dynamic_sampling", False)
    assert [key in metrics for key in DYNAMIC_SAMPLING] == [on] * 3  # dynamic sampling off: nothing of it


def test_dynamic_sampling_in_a_real_step_is_seeded_and_its_draws_are_in_the_samplers_state(tmp_path, rewards):
    runs = []
    for name in ("first", "again"):
        c = tiny_step(tmp_path / name, rewards, FAMILIES["dapo dynamic sampling"][0])
        metrics, _ = trainer.rl_step(c, 0)
        runs.append(({k: v for k, v in metrics.items() if k.startswith(("sampler/", "reward/", "rollout/count"))}, c.driver.sampler.state_dict()))
    (metrics, state), (again, state_again) = runs
    assert metrics == again and state == state_again  # extra rounds are seeded like the first one
    # the untrained tiny model gets every group wrong and truncated: constant, so it draws to the cap, then trains on all
    assert metrics["sampler/extra_rounds"] == 2 and metrics["sampler/prompts_generated"] == 6
    # every prompt the rounds drew is in the checkpointed state, so a resumed run draws what follows them
    assert len(state["step_prompts"]) == metrics["sampler/prompts_generated"]
    assert metrics["rollout/count"] == 2 * metrics["sampler/prompts"]  # what trains: 2 rollouts per kept prompt


def test_yield_counts_the_rollouts_and_tokens_of_groups_with_signal_step_by_step_and_in_total():
    # batch(): a (lengths 2, 2) rewards 1, 0 → advantages ±0.71: informative; b alone → 0; c: rollout 3 dropped,
    # kept 0.5, 0.25 → ±0.71: informative. Every rollout has 2 completion tokens.
    b = batch()
    b.rollouts[4] = rollout("c", 1, length=5)
    stages.estimate_advantages(b, "grpo")
    totals = YieldTotals()
    metrics = stages.account_yield(b, totals)
    # informative: a0, a1, c1 (5 tokens), c2 → 4 rollouts of 6, 2 + 2 + 5 + 2 = 11 tokens of 2·5 + 5 = 15
    assert stages.informative_rollouts(b) == [0, 1, 4, 5]
    assert metrics["yield/informative_rollouts"] == 4 and metrics["yield/informative_tokens"] == 11
    assert metrics["yield/informative_rollout_frac"] == pytest.approx(4 / 6)
    assert metrics["yield/informative_token_frac"] == pytest.approx(11 / 15)
    # step 2, dynamic sampling: of a, b, c, d only a and c trained; their advantages are ±0.71; b, d constant, filtered
    second = scored(1, {"a": [1.0, 0.0], "b": [1.0, 1.0], "c": [0.0, 0.5], "d": [0.0, 0.0]})
    second.filtered = [False, True, False, True]
    stages.estimate_advantages(second, "grpo")
    metrics = stages.account_yield(second, totals)
    assert metrics["yield/informative_rollouts"] == 4 and metrics["yield/informative_tokens"] == 8
    assert metrics["yield/informative_rollout_frac"] == 0.5  # 4 of the 8 generated
    # totals over both steps: 14 rollouts, 15 + 16 = 31 tokens; 8 informative rollouts, 11 + 8 = 19 tokens
    assert (metrics["yield/total_rollouts"], metrics["yield/total_tokens"]) == (14, 31)
    assert (metrics["yield/total_informative_rollouts"], metrics["yield/total_informative_tokens"]) == (8, 19)
    assert metrics["yield/total_informative_token_frac"] == pytest.approx(19 / 31)
    restored = YieldTotals()
    restored.load_state_dict(totals.state_dict())
    assert restored == totals
    assert describe_yield(totals.summary()) == (
        "yield: 8 of 14 rollouts (57.1%) and 19 of 31 generated tokens (61.3%) carried learning signal"
    )


def test_yield_of_a_token_level_estimator_counts_groups_whose_rewards_differ():
    b = scored(0, {"a": [1.0, 0.0], "b": [0.5, 0.5]})
    stages.estimate_advantages(b, "gae")  # the learner's: no outcome advantages here
    assert stages.informative_rollouts(b) == [0, 1]


def test_the_yield_line_example_holds():
    import doctest

    import rlqa.yields

    result = doctest.testmod(rlqa.yields)
    assert result.attempted == 1 and result.failed == 0


def test_a_real_step_with_hints_generates_and_scores_the_hinted_prompts_as_their_own_groups(tmp_path, rewards):
    raw = {
        "model": {"tiny": TINY},
        "data": {"train": {"task": "arithmetic", "size": 8, "levels": [3]}},  # 3 operands: 2 step lines, then the box
        "rollout": {"prompts_per_step": 2, "rollouts_per_prompt": 2, "max_new_tokens": 6},
        # below 1: every prompt the sampler has an estimate for (here: its offline rank) is hinted
        "sampler": {"hints": {"column": "steps", "below": 1.0, "fraction": 0.5}},
        "trainer": {"steps": 2},
    }
    c = in_process.components(validate_recipe(raw, source="test", base_dir=tmp_path), tmp_path, rewards)
    metrics, samples = trainer.rl_step(c, 0)
    # k = floor(0.5 · 1 · 2) = 1 line at step 0
    assert metrics["sampler/hinted_prompts"] == 2.0
    assert {s["prompt_id"].rpartition("#")[2] for s in samples} == {"hint1"}
    for s in samples:
        plain = c.driver.train[s["prompt_id"].rpartition("#")[0]]
        first_line = plain.columns["steps"].splitlines()[0]
        assert s["prompt"] == plain.prompt + first_line + "\n"
        assert c.driver.prompt_tokens[s["prompt_id"]][: len(c.driver.prompt_tokens[plain.prompt_id])] == c.driver.prompt_tokens[plain.prompt_id]
    assert metrics["rollout/count"] == 4 and "reward/accuracy" in metrics
