import json
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlqa.config import SamplerConfig
from rlqa.errors import UserError
from rlqa.rollout.seeding import stable_seed
from rlqa.sampler import BetaEstimator, RankEstimator, RolloutSampler, allocate

# ------------------------------------------------------------------------------------------------------------ allocate


def test_allocate_worked_example():
    # B = 4, T = 32, n_min = 4: T - n_min·B = 16, Σr = 1
    # x = 4 + 16·(0.1, 0.2, 0.3, 0.4) = (5.6, 7.2, 8.8, 10.4) → floors (5, 7, 8, 10), Σ = 30
    # shortfall 2 → one each to the hardest: index 3 (→ 11), index 2 (→ 9)
    assert allocate([0.1, 0.2, 0.3, 0.4], budget=32, n_min=4, n_max=12) == [5, 7, 9, 11]


def test_allocate_clips_at_n_max_and_redistributes():
    # Dyadic difficulties, so the hand arithmetic is exact. T - n_min·B = 16, Σr = 1:
    # E3's x = 4 + 16·(1/16, 1/8, 3/16, 5/8) = (5, 6, 7, 14): index 3 would get 14 > n_max = 12.
    # Cap it at 12; the other three share 32 - 12 - 3·4 = 8 over Σr = 3/8:
    # x = 4 + 8·(1/6, 1/3, 1/2) = (5.33, 6.67, 8) → floors (5, 6, 8, 12), Σ = 31
    # → +1 to the hardest prompt with room, index 2
    assert allocate([0.0625, 0.125, 0.1875, 0.625], budget=32, n_min=4, n_max=12) == [5, 6, 9, 12]


def test_allocate_capped_prompts_leave_the_rest_to_zero_difficulty_prompts():
    # T - n_min·B = 12, all on index 0 → 4 + 12 = 16 > 12: cap it at 12.
    # 24 - 12 - 2·4 = 4 left over two prompts with r = 0 → spread evenly: 4 + 2 = 6 each
    assert allocate([1.0, 0.0, 0.0], budget=24, n_min=4, n_max=12) == [12, 6, 6]


def test_allocate_all_equally_easy_spreads_evenly_lower_index_first():
    # Σr = 0: 25 / 3 = 8.33 each → floors 8, 8, 8 → the one left over goes to index 0 (ties by index)
    assert allocate([0.0, 0.0, 0.0], budget=25, n_min=4, n_max=12) == [9, 8, 8]


def test_allocate_equal_bounds_gives_everyone_n():
    assert allocate([0.9, 0.0, 0.5], budget=24, n_min=8, n_max=8) == [8, 8, 8]
    assert allocate([], budget=0, n_min=4, n_max=12) == []


@pytest.mark.parametrize(
    ("difficulty", "budget", "n_min", "n_max"),
    [
        ([0.5, 0.5], 7, 4, 12),  # n_min·B = 8 > 7
        ([0.5, 0.5], 25, 4, 12),  # n_max·B = 24 < 25
        ([0.5, -0.1], 16, 4, 12),
        ([0.5, math.nan], 16, 4, 12),
        ([0.5, 0.5], 16, 9, 8),
    ],
)
def test_allocate_rejects_impossible_requests(difficulty, budget, n_min, n_max):
    with pytest.raises(ValueError):
        allocate(difficulty, budget, n_min, n_max)


def e3_reference(difficulty: list[float], budget: int, n_min: int) -> list[int]:
    """E3's own rule, no upper bound: floor(n_min + extra·r_i/Σr), then +1 to the hardest until Σ = T."""
    weights = [Fraction(r) for r in difficulty]
    extra = budget - n_min * len(difficulty)
    counts = [math.floor(n_min + extra * w / sum(weights)) for w in weights]
    for i in sorted(range(len(weights)), key=lambda i: (-weights[i], i))[: budget - sum(counts)]:
        counts[i] += 1
    return counts


def e3_by_positions(positions: list[int], budget: int, n_min: int) -> list[int]:
    """E3's rule for ranks k_i / N in integers only: n_i = n_min + (extra·k_i) // Σk, then +1 to the hardest.

    Independent of the code: no floats and no Fraction; N cancels out of r_i / Σr = k_i / Σk.
    """
    extra = budget - n_min * len(positions)
    total = sum(positions)
    counts = [n_min + extra * k // total for k in positions]
    for i in sorted(range(len(positions)), key=lambda i: (-positions[i], i))[: budget - sum(counts)]:
        counts[i] += 1
    return counts


def test_allocate_with_rank_estimator_ranks_floors_exact_shares():
    # ranks 1/6, 2/6, 3/6, T = 24, n_min = 6: extra = 6, Σr = 1 → 6 + 6·(1/6, 2/6, 3/6) = (7, 8, 9) exactly.
    # From the floats 1/6, 2/6, 3/6 the shares come out just below 7, 8, 9 and floor to (6, 7, 8) + 3 → (6, 8, 10).
    estimator = RankEstimator(list("uvwxyz"), seed=0)
    for prompt_id, successes in zip("uvwxyz", [6, 5, 4, 3, 2, 1]):  # distinct accuracies: u easiest ... z hardest
        estimator.update(prompt_id, successes, 6)
    estimator.end_epoch(1)
    ranks = [estimator.difficulty(p) for p in "vwx"]
    assert ranks == [Fraction(1, 6), Fraction(2, 6), Fraction(3, 6)]
    assert allocate(ranks, 24, 6, 10) == [7, 8, 9]


@st.composite
def rank_batches(draw):
    """A batch of prompts drawn from N, with the ranks a real RankEstimator gives them, and E3's bounds."""
    n = draw(st.sampled_from([3, 5, 6, 7, 9, 10, 12]))
    size = draw(st.integers(1, n))
    positions = draw(st.lists(st.integers(0, n - 1), min_size=size, max_size=size, unique=True))
    n_min = draw(st.integers(0, 8))
    budget = draw(st.integers(n_min * size, n_min * size + 8 * size))
    return n, positions, budget, n_min


@settings(max_examples=300, deadline=None)
@given(rank_batches())
def test_allocate_matches_e3_in_integers_on_rank_estimator_batches(case):
    n, positions, budget, n_min = case
    ids = [f"p{k}" for k in range(n)]
    estimator = RankEstimator(ids, seed=0)
    for k, prompt_id in enumerate(ids):  # p0 solved most often: position k is p<k>
        estimator.update(prompt_id, n - k, n)
    estimator.end_epoch(1)
    difficulty = [estimator.difficulty(f"p{k}") for k in positions]
    if sum(positions) == 0:
        return  # all-zero ranks: even split, tested above
    reference = e3_by_positions(positions, budget, n_min)
    n_max = max(reference)  # the upper bound never binds: exactly E3
    assert allocate(difficulty, budget, n_min, n_max) == reference


# ---------------------------------------------------------------------------------------------------------- estimators


def test_beta_estimator_update_with_decay_by_hand():
    estimator = BetaEstimator(decay=0.9)
    assert estimator.pass_rate("q") == 0.5  # uniform prior Beta(1, 1)
    # 3 of 4: α = 0.9·1 + 3 = 3.9, β = 0.9·1 + 1 = 1.9 → p = 3.9 / 5.8
    estimator.update("q", successes=3, trials=4)
    assert estimator.pass_rate("q") == pytest.approx(3.9 / 5.8)
    # 0 of 2: α = 0.9·3.9 = 3.51, β = 0.9·1.9 + 2 = 3.71 → p = 3.51 / 7.22 ≈ 0.48615, difficulty ≈ 0.51385
    estimator.update("q", successes=0, trials=2)
    assert estimator.pass_rate("q") == pytest.approx(3.51 / 7.22)
    assert estimator.difficulty("q") == pytest.approx(1 - 3.51 / 7.22)
    assert estimator.pass_rate("other") == 0.5  # untouched


def test_beta_estimator_prior_from_offline_rank():
    # rank 0.25, k = 2 → prior mean 0.75: α = 2·0.75 = 1.5, β = 2·0.25 = 0.5
    estimator = BetaEstimator({"q": 0.25}, decay=0.5, prior_strength=2.0)
    assert estimator.pass_rate("q") == pytest.approx(0.75)
    assert estimator.difficulty("q") == pytest.approx(0.25)
    # 1 of 1 with γ = 0.5: α = 0.75 + 1 = 1.75, β = 0.25 → p = 1.75 / 2 = 0.875
    estimator.update("q", successes=1, trials=1)
    assert estimator.pass_rate("q") == pytest.approx(0.875)


def test_beta_estimator_state_round_trip():
    estimator = BetaEstimator({"a": 0.5}, decay=0.9)
    estimator.update("a", 1, 4)
    estimator.update("b", 4, 4)
    restored = BetaEstimator({"a": 0.5}, decay=0.9)
    restored.load_state_dict(json.loads(json.dumps(estimator.state_dict())))
    for prompt_id in ("a", "b", "c"):
        assert restored.pass_rate(prompt_id) == estimator.pass_rate(prompt_id)
    estimator.update("a", 2, 2)
    restored.update("a", 2, 2)
    assert restored.pass_rate("a") == estimator.pass_rate("a")


def test_beta_estimator_rejects_bad_input():
    with pytest.raises(ValueError):
        BetaEstimator({"a": 1.0})  # a rank is in [0, 1)
    with pytest.raises(ValueError):
        BetaEstimator().update("a", successes=3, trials=2)


def test_rank_estimator_by_hand():
    estimator = RankEstimator(["a", "b", "c", "d"], priors={"a": 0.3}, seed=0)
    # Epoch 0: the offline ranks; prompts without one rank 0 (their estimate: none).
    assert [estimator.difficulty(p) for p in "abcd"] == [0.3, 0.0, 0.0, 0.0]
    assert [estimator.estimate(p) for p in "abcd"] == [0.3, None, None, None]
    estimator.update("a", 1, 3)  # acc 1/3
    estimator.update("b", 2, 2)  # acc 1
    estimator.update("c", 2, 6)  # acc 2/6 = 1/3, tied with a
    assert estimator.difficulty("b") == 0.0  # ranks move only when an epoch begins
    estimator.end_epoch(1)
    # N = 4, easiest first: b (1), then a and c (1/3) in their hash order for (seed 0, epoch 1): c first, then d
    # (never seen). Positions 0..3 → ranks 0, 1/4, 2/4, 3/4: the tied pair gets two distinct positions, as in E3.
    assert stable_seed("rank-tie", 0, 1, "c") < stable_seed("rank-tie", 0, 1, "a")
    assert [estimator.difficulty(p) for p in "abcd"] == [0.5, 0.0, 0.25, 0.75]
    assert [estimator.estimate(p) for p in "abcd"] == [0.5, 0.0, 0.25, 0.75]
    assert estimator.pass_rate("a") == pytest.approx(1 / 3)
    assert estimator.pass_rate("d") == 0.0  # never seen, no offline rank: counted as hardest
    estimator.update("a", 3, 3)  # cumulative 4 of 6 = 2/3
    estimator.end_epoch(2)
    # b 1 → 0; a 2/3 → 1/4; c 1/3 → 2/4; d → 3/4
    assert [estimator.difficulty(p) for p in "abcd"] == [0.25, 0.0, 0.5, 0.75]


def test_rank_estimator_breaks_ties_afresh_each_epoch_by_seed():
    def ranks(seed: int, epoch: int) -> list[float]:
        estimator = RankEstimator(list("abcdef"), seed=seed)
        for prompt_id in "abcdef":
            estimator.update(prompt_id, 1, 2)  # all tied at 1/2
        estimator.end_epoch(epoch)
        return [estimator.difficulty(p) for p in "abcdef"]

    # the order of stable_seed("rank-tie", seed, epoch, id): (0, 1) → c b f a d e; (0, 2) → c e b a d f;
    # (1, 1) → d a e c f b. Ranks are position / 6.
    sixths = [Fraction(k, 6) for k in range(6)]
    assert ranks(0, 1) == [sixths[k] for k in (3, 1, 0, 4, 5, 2)]
    assert ranks(0, 2) == [sixths[k] for k in (3, 2, 0, 4, 1, 5)]
    assert ranks(1, 1) == [sixths[k] for k in (1, 5, 3, 0, 2, 4)]
    assert ranks(0, 1) == ranks(0, 1)


def test_rank_estimator_state_round_trip():
    estimator = RankEstimator(["a", "b", "c"], seed=0)
    estimator.update("a", 1, 2)
    estimator.update("b", 0, 2)
    estimator.end_epoch(1)
    estimator.update("c", 1, 1)
    restored = RankEstimator(["a", "b", "c"], seed=0)
    restored.load_state_dict(json.loads(json.dumps(estimator.state_dict())))
    assert [restored.estimate(p) for p in "abc"] == [estimator.estimate(p) for p in "abc"] == [0.0, 1 / 3, 2 / 3]
    estimator.end_epoch(2)
    restored.end_epoch(2)
    thirds = [Fraction(1, 3), Fraction(2, 3), Fraction(0)]
    assert [restored.difficulty(p) for p in "abc"] == [estimator.difficulty(p) for p in "abc"] == thirds
    # a checkpoint from before the estimator saved its epoch still resumes: counted outcomes mean ranks from outcomes
    old = {key: value for key, value in estimator.state_dict().items() if key != "epoch"}
    restored.load_state_dict(old)
    assert [restored.estimate(p) for p in "abc"] == [1 / 3, 2 / 3, 0.0]


def test_beta_estimate_is_none_only_for_a_prompt_it_knows_nothing_of():
    estimator = BetaEstimator({"ranked": 0.25}, decay=0.9)
    estimator.update("seen", 1, 1)  # Beta(1, 1) → α = 1.9, β = 0.9 → difficulty 0.9 / 2.8
    assert estimator.estimate("ranked") == pytest.approx(0.25)  # the prior: difficulty = offline rank
    assert estimator.estimate("seen") == pytest.approx(0.9 / 2.8)
    assert estimator.estimate("new") is None and estimator.difficulty("new") == 0.5


# ------------------------------------------------------------------------------------------------------------- sampler

IDS = [f"q{i}" for i in range(10)]


def make_sampler(ids=IDS, prompts_per_step=4, seed=7, priors=None, total_steps=None, **section) -> RolloutSampler:
    """A sampler over `ids` with 8 rollouts per prompt; `section` holds the recipe's sampler keys."""
    cfg = SamplerConfig(**section)
    return RolloutSampler(
        ids, cfg, prompts_per_step=prompts_per_step, rollouts_per_prompt=8, seed=seed, priors=priors, total_steps=total_steps
    )


def fake_outcomes(batch: list[tuple[str, int]], step: int) -> dict[str, list[bool]]:
    """Deterministic, prompt-dependent outcomes: q<i> is right on rollout j when (i + j + step) % (i + 2) == 0."""
    outcomes = {}
    for prompt_id, count in batch:
        i = int(prompt_id[1:])
        outcomes[prompt_id] = [(i + j + step) % (i + 2) == 0 for j in range(count)]
    return outcomes


def run(sampler: RolloutSampler, steps: range) -> list[list[tuple[str, int]]]:
    batches = []
    for step in steps:
        batch = sampler.next_batch(step)
        sampler.update(fake_outcomes(batch, step))
        batches.append(batch)
    return batches


def test_batches_are_deterministic_for_a_seed():
    assert run(make_sampler(), range(8)) == run(make_sampler(), range(8))
    assert run(make_sampler(), range(8)) != run(make_sampler(seed=8), range(8))


def test_epoch_order_is_the_permutation_seeded_by_seed_and_epoch():
    sampler = make_sampler(prompts_per_step=5)
    permutation = np.random.default_rng([7, 0]).permutation(10)
    drawn = [prompt_id for step in range(2) for prompt_id, _ in sampler.next_batch(step)]
    assert drawn == [IDS[i] for i in permutation]


def test_every_prompt_once_per_epoch_and_never_twice_in_a_step():
    sampler = make_sampler()  # 10 prompts, 4 per step: epochs end mid-batch
    batches = run(sampler, range(15))  # 60 prompts = 6 epochs
    drawn = [prompt_id for batch in batches for prompt_id, _ in batch]
    for epoch in range(6):
        assert sorted(drawn[10 * epoch : 10 * (epoch + 1)]) == sorted(IDS)
    for batch in batches:
        assert len({prompt_id for prompt_id, _ in batch}) == len(batch) == 4
    assert sampler.epoch == 5


def test_uneven_epoch_boundary_completes_from_the_next_epoch():
    sampler = make_sampler()
    order_0 = [IDS[i] for i in np.random.default_rng([7, 0]).permutation(10)]
    order_1 = [IDS[i] for i in np.random.default_rng([7, 1]).permutation(10)]
    run(sampler, range(2))
    assert sampler.epoch == 0
    third = [prompt_id for prompt_id, _ in sampler.next_batch(2)]
    assert sampler.epoch == 1
    # Last two of epoch 0, then the first two of epoch 1 that are not already in the batch.
    assert third[:2] == order_0[8:]
    assert third[2:] == [p for p in order_1 if p not in order_0[8:]][:2]
    # Epoch 1 continues in its order, with the two prompts the batch took from epoch 0 moved to its end.
    rest = [prompt_id for step in (3, 4) for prompt_id, _ in sampler.next_batch(step)]
    assert third[2:] + rest == [p for p in order_1 if p not in order_0[8:]] + [p for p in order_1 if p in order_0[8:]]


def test_schedule_widens_bounds_each_epoch():
    # E3: n = 8, Δ = 2, n_low = 4, n_high = 12 → (8, 8), (6, 10), (4, 12), then stays
    sampler = make_sampler(IDS[:8], schedule_delta=2, n_low=4, n_high=12)
    bounds = []
    for step in range(8):
        sampler.next_batch(step)
        bounds.append((sampler.n_min, sampler.n_max))
    assert bounds == [(8, 8), (8, 8), (6, 10), (6, 10), (4, 12), (4, 12), (4, 12), (4, 12)]
    metrics = sampler.metrics()
    assert (metrics["sampler/n_min"], metrics["sampler/n_max"], metrics["sampler/epoch"]) == (4.0, 12.0, 3.0)


def test_budget_constant_and_harder_prompts_get_more():
    sampler = make_sampler(n_min=2, n_max=14)
    spreads = []
    for step in range(12):
        batch = sampler.next_batch(step)
        assert sum(count for _, count in batch) == 4 * 8
        for p, n_p in batch:
            for q, n_q in batch:
                if sampler.difficulty(p) > sampler.difficulty(q):
                    assert n_p >= n_q
        metrics = sampler.metrics()
        assert metrics["sampler/alloc_mean"] == 8.0
        spreads.append(metrics["sampler/alloc_max"] - metrics["sampler/alloc_min"])
        sampler.update(fake_outcomes(batch, step))
    assert spreads[0] == 0  # nothing known yet: every prompt at the uniform prior
    assert max(spreads) > 0  # once outcomes differ, so do the counts


def test_offline_ranks_drive_the_first_allocation():
    # Beta prior means 1 - rank: q0 rank 0.9 is the hardest of the batch.
    priors = {prompt_id: 0.1 for prompt_id in IDS} | {"q0": 0.9}
    sampler = make_sampler(prompts_per_step=10, n_min=4, n_max=12, priors=priors)
    batch = sampler.next_batch(0)
    # difficulty = 1 - posterior mean = rank: 0.9 for q0, 0.1 for the rest; T - n_min·B = 80 - 40 = 40, Σr = 1.8
    # q0: 4 + 40·0.9/1.8 = 24 > 12 → cap at 12; the others share 80 - 12 - 9·4 = 32 evenly: 4 + 32/9 = 7.56
    # → floors 7 (Σ = 12 + 63 = 75), the shortfall 5 → +1 to the first 5 of them in batch order
    others = [prompt_id for prompt_id, _ in batch if prompt_id != "q0"]
    expected = {"q0": 12} | {prompt_id: 8 if k < 5 else 7 for k, prompt_id in enumerate(others)}
    assert dict(batch) == expected


def test_uniform_allocation():
    sampler = make_sampler(allocation="uniform")
    for batch in run(sampler, range(5)):
        assert [count for _, count in batch] == [8, 8, 8, 8]
    with pytest.raises(ValueError):
        make_sampler(allocation="uniform", n_max=12)


@pytest.mark.parametrize("estimator", ["beta", "rank"])
@pytest.mark.parametrize(
    ("prompts_per_step", "save_after"),
    [
        (5, 1),  # save at the last step of epoch 0, which ends exactly at a batch boundary
        (4, 2),  # save right after a batch that straddled epochs 0 and 1
        (4, 4),  # the last step of epoch 1 (steps 2..4 hold its prompts)
    ],
)
def test_state_round_trip_reproduces_the_following_batches(estimator, prompts_per_step, save_after):
    options = {"prompts_per_step": prompts_per_step, "estimator": estimator, "n_min": 2, "n_max": 14,
               "schedule_delta": 1, "n_low": 1, "n_high": 16, "skip_mastered": 0.6, "revisit_prob": 0.3}
    original = make_sampler(**options)
    run(original, range(save_after + 1))
    state = json.loads(json.dumps(original.state_dict()))
    resumed = make_sampler(**options)
    resumed.load_state_dict(state)
    assert resumed.metrics() == original.metrics()
    following = range(save_after + 1, save_after + 12)
    assert run(resumed, following) == run(original, following)
    assert resumed.state_dict() == original.state_dict()


def test_load_state_from_other_data_is_a_user_error():
    state = make_sampler().state_dict()
    with pytest.raises(UserError, match="10 training prompts"):
        make_sampler(IDS[:9]).load_state_dict(state)


def mastered(sampler: RolloutSampler, prompt_ids: list[str]) -> None:
    # 20 of 20 right: Beta(1, 1) → α = 0.9 + 20 = 20.9, β = 0.9 → pass rate ≈ 0.96
    sampler.update({prompt_id: [True] * 20 for prompt_id in prompt_ids})


def test_skip_mastered_skips_them_without_revisits():
    sampler = make_sampler(prompts_per_step=2, skip_mastered=0.9, revisit_prob=0.0)
    mastered(sampler, ["q3", "q4"])
    batches, skipped = [], 0
    for step in range(8):  # 8 of the 10 prompts per epoch: exactly 2 epochs
        batches.append(sampler.next_batch(step))
        skipped += sampler.metrics()["sampler/skipped"]
    drawn = [prompt_id for batch in batches for prompt_id, _ in batch]
    assert "q3" not in drawn and "q4" not in drawn
    assert sorted(drawn) == sorted(sorted(set(IDS) - {"q3", "q4"}) * 2)
    assert all(len(batch) == 2 for batch in batches)
    assert skipped == 4  # each of the two, once per epoch


def test_skip_mastered_always_revisits_with_probability_one():
    sampler = make_sampler(prompts_per_step=2, skip_mastered=0.9, revisit_prob=1.0)
    mastered(sampler, ["q3"])
    drawn = [prompt_id for step in range(5) for prompt_id, _ in sampler.next_batch(step)]
    assert sorted(drawn) == sorted(IDS)


def test_skip_mastered_revisits_sometimes_and_deterministically():
    def revisits(seed: int) -> list[int]:
        sampler = make_sampler(prompts_per_step=2, seed=seed, skip_mastered=0.9, revisit_prob=0.5)
        mastered(sampler, ["q3"])
        counts = []
        for step in range(90):
            batch = sampler.next_batch(step)
            counts.append(sum(prompt_id == "q3" for prompt_id, _ in batch))
        return counts

    seen = revisits(seed=1)
    assert seen == revisits(seed=1)
    # 90 steps of 2 over 9 live prompts + revisits of q3: about 19 epochs; q3 comes back in about half of them.
    assert 3 <= sum(seen) <= 16


def test_skip_mastered_falls_back_when_everything_is_mastered():
    sampler = make_sampler(prompts_per_step=4, skip_mastered=0.9, revisit_prob=0.0)
    mastered(sampler, IDS)
    batch = sampler.next_batch(0)
    # A step looks at no more than N = 10 prompts: it passes over 10 - 4 = 6, then takes the next 4 as they come.
    assert len({prompt_id for prompt_id, _ in batch}) == 4
    assert sampler.metrics()["sampler/skipped"] == 6.0
    order_0 = [IDS[i] for i in np.random.default_rng([7, 0]).permutation(10)]
    assert [prompt_id for prompt_id, _ in batch] == order_0[6:]


def test_update_ignores_missing_verdicts_and_rejects_unknown_prompts():
    sampler = make_sampler()
    sampler.update({"q1": [True, None, None]})
    # Beta(1, 1), one right: α = 0.9 + 1, β = 0.9 → 1.9 / 2.8
    assert sampler.pass_rate("q1") == pytest.approx(1.9 / 2.8)
    with pytest.raises(KeyError):
        sampler.update({"nope": [True]})


def test_steps_must_follow_each_other():
    sampler = make_sampler()
    sampler.next_batch(3)
    sampler.next_batch(3, num_prompts=2)  # a refill of the same step
    sampler.next_batch(4)
    with pytest.raises(ValueError, match="step 6 after step 4"):
        sampler.next_batch(6)


def test_prompts_left_in_step_counts_the_refills():
    sampler = make_sampler()  # 10 prompts
    sampler.next_batch(0, num_prompts=3)
    sampler.next_batch(0, num_prompts=2)
    assert sampler.prompts_left_in_step == 5
    restored = make_sampler()
    restored.load_state_dict(sampler.state_dict())
    assert restored.prompts_left_in_step == 5 and restored.next_batch(1) == sampler.next_batch(1)


def test_config_errors():
    with pytest.raises(UserError, match="prompts per step"):
        make_sampler(prompts_per_step=11)
    with pytest.raises(ValueError):
        make_sampler(ids=["a", "a", "b", "c"])
    with pytest.raises(ValueError):
        make_sampler(n_min=9)  # above rollouts_per_prompt: the schema's bounds refuse it


# -------------------------------------------------------------------------------------------------------------- refills


def test_refilled_steps_never_hold_a_prompt_twice():
    sampler = make_sampler(prompts_per_step=3, skip_mastered=0.95, revisit_prob=0.2)
    for step in range(12):
        drawn = []
        for size in (3, 2, 3):  # the first batch, then two refills (dynamic sampling)
            batch = sampler.next_batch(step, num_prompts=size)
            drawn += [prompt_id for prompt_id, _ in batch]
            sampler.update(fake_outcomes(batch, step))
        assert len(set(drawn)) == len(drawn) == 8  # no prompt twice within a step, even across an epoch boundary


def test_a_step_cannot_draw_more_prompts_than_the_data_holds():
    sampler = make_sampler(prompts_per_step=4)
    sampler.next_batch(0)
    sampler.next_batch(0)
    with pytest.raises(UserError, match="more than the 10 training prompts"):
        sampler.next_batch(0)


def test_a_refill_that_crosses_an_epoch_defers_everything_the_step_holds():
    sampler = make_sampler(seed=3)
    order_0 = [IDS[i] for i in np.random.default_rng([3, 0]).permutation(10)]
    order_1 = [IDS[i] for i in np.random.default_rng([3, 1]).permutation(10)]
    sampler.next_batch(0)
    first = [prompt_id for prompt_id, _ in sampler.next_batch(1)]  # positions 4..7 of epoch 0
    refill = [prompt_id for prompt_id, _ in sampler.next_batch(1, num_prompts=4)]
    # Positions 8, 9 of epoch 0, then epoch 1 without any of the six prompts step 1 already holds.
    held = order_0[4:]
    assert first + refill[:2] == held
    assert refill[2:] == [p for p in order_1 if p not in held][:2]
    assert set(order_1[:2]) & set(held)  # with this seed, the plain order would repeat a prompt of the step


def test_sampler_refreshes_rank_difficulty_at_each_epoch():
    sampler = make_sampler(["a", "b", "c", "d"], prompts_per_step=2, estimator="rank")
    right = {"a": lambda j: True, "b": lambda j: j % 2 == 0, "c": lambda j: False, "d": lambda j: j < 2}
    for step in range(2):  # all of epoch 0; 8 rollouts each, as every rank starts at 0
        batch = sampler.next_batch(step)
        sampler.update({p: [right[p](j) for j in range(n)] for p, n in batch})
    assert [sampler.difficulty(p) for p in "abcd"] == [0.0, 0.0, 0.0, 0.0]
    sampler.next_batch(2)  # the first draw of epoch 1 refreshes the ranks
    # accuracies a 1, b 0.5, d 0.25, c 0 → ranks 0, 1/4, 3/4, 2/4
    assert [sampler.difficulty(p) for p in "abcd"] == [0.0, 0.25, 0.75, 0.5]


def test_tied_prompts_get_distinct_ranks_and_so_distinct_allocations():
    sampler = make_sampler(list("abcdef"), prompts_per_step=6, seed=0, estimator="rank", n_min=4, n_max=12)
    assert [n for _, n in sampler.next_batch(0)] == [8] * 6  # epoch 0: every rank 0 → uniform
    sampler.update({"a": [True, True, False, False], "b": [True] * 4, "c": [True, False], "d": [False] * 4, "e": [None]})
    batch = dict(sampler.next_batch(1))  # epoch 1 begins: ranks from the cumulative accuracies
    # easiest first: b 1; a, c 1/2 (tied: hash order for (seed 0, epoch 1) is c, a); d 0; e, f never seen (f, e)
    # → positions b 0, c 1, a 2, d 3, f 4, e 5; r = position / 6, Σr = 15/6.
    assert [sampler.difficulty(p) for p in "abcdef"] == [Fraction(k, 6) for k in (2, 0, 1, 3, 5, 4)]
    # T = 48, n_min·B = 24: x = 4 + 24·(position / 15) = a 7.2, b 4, c 5.6, d 8.8, e 12, f 10.4
    # → floors 7, 4, 5, 8, 12, 10 (Σ 46); +1 each to the hardest with room: e is at n_max, so f → 11, d → 9
    assert batch == {"a": 7, "b": 4, "c": 5, "d": 9, "e": 12, "f": 11}
    # Shared ranks (a, c at 1/6; e, f at 4/6) would have given a and c, and e and f, the same counts.


@pytest.mark.parametrize(
    ("schedule", "total_steps", "expected"),
    [
        # E3's thirds of 30 steps: phases start at ⌈0·30⌉ = 0, ⌈30/3⌉ = 10, ⌈2·30/3⌉ = 20
        ("e3", 30, {0: (8, 8), 9: (8, 8), 10: (6, 10), 19: (6, 10), 20: (4, 12), 29: (4, 12)}),
        # thirds of 10 steps: ⌈3.33⌉ = 4, ⌈6.67⌉ = 7
        ("e3", 10, {0: (8, 8), 3: (8, 8), 4: (6, 10), 6: (6, 10), 7: (4, 12), 9: (4, 12)}),
        # 0.07 of 100 steps is step 7 (the decimal written, not the float product 7.000000000000001 → 8)
        ([{"from_fraction": 0, "n_min": 8, "n_max": 8}, {"from_fraction": 0.07, "n_min": 2, "n_max": 14}], 100,
         {6: (8, 8), 7: (2, 14), 99: (2, 14)}),
    ],
)
def test_bounds_schedule_by_share_of_the_run(schedule, total_steps, expected):
    sampler = make_sampler(bounds_schedule=schedule, total_steps=total_steps)
    assert {step: sampler.bounds_at(step) for step in expected} == expected


def test_allocation_follows_the_bounds_schedule():
    # Beta priors: an unseen prompt's difficulty is its offline rank. 3 steps of E3's schedule: one per phase.
    priors = {"q0": 0.1, "q1": 0.2, "q2": 0.3, "q3": 0.4}
    sampler = make_sampler(IDS[:4], priors=priors, bounds_schedule="e3", total_steps=3)
    # (8, 8): everyone 8.
    # (6, 10): x = 6 + 8·(0.1, 0.2, 0.3, 0.4) = 6.8, 7.6, 8.4, 9.2 → floors 6, 7, 8, 9 (Σ 30) → q3 10, q2 9
    # (4, 12): x = 4 + 16·(0.1, ...) = 5.6, 7.2, 8.8, 10.4 → floors 5, 7, 8, 10 (Σ 30) → q3 11, q2 9
    expected = [[8, 8, 8, 8], [6, 7, 9, 10], [5, 7, 9, 11]]
    for step, (n_min, n_max) in enumerate([(8, 8), (6, 10), (4, 12)]):
        batch = dict(sampler.next_batch(step))
        assert [batch[p] for p in priors] == expected[step]
        metrics = sampler.metrics()
        assert (metrics["sampler/n_min"], metrics["sampler/n_max"]) == (n_min, n_max)
    assert sampler.epoch == 2  # every step began an epoch (4 prompts, 4 a step); the schedule alone set the bounds


def test_bounds_schedule_resumes_from_the_step_alone():
    options = {"bounds_schedule": "e3", "total_steps": 9, "estimator": "rank"}
    original = make_sampler(**options)
    run(original, range(4))  # steps 0-3: the (6, 10) phase began at step 3
    resumed = make_sampler(**options)
    resumed.load_state_dict(json.loads(json.dumps(original.state_dict())))
    assert resumed.metrics() == original.metrics() and resumed.metrics()["sampler/n_max"] == 10.0
    assert run(resumed, range(4, 9)) == run(original, range(4, 9))
    assert (resumed.n_min, resumed.n_max) == (4, 12)


def test_refills_share_the_steps_skip_budget():
    sampler = make_sampler(prompts_per_step=4, skip_mastered=0.9, revisit_prob=0.0)
    mastered(sampler, IDS)
    order_0 = [IDS[i] for i in np.random.default_rng([7, 0]).permutation(10)]
    order_1 = [IDS[i] for i in np.random.default_rng([7, 1]).permutation(10)]
    sampler.next_batch(0)  # passes over 6, takes order_0[6:]: the step has looked at all 10 prompts
    refill = [prompt_id for prompt_id, _ in sampler.next_batch(0, num_prompts=2)]
    assert refill == [p for p in order_1 if p not in order_0[6:]][:2]  # no more skipping in this step
    assert sampler.metrics()["sampler/skipped"] == 6.0


def test_state_round_trip_in_the_middle_of_a_step():
    original = make_sampler(skip_mastered=0.9, revisit_prob=0.0)
    mastered(original, IDS[:8])
    original.next_batch(0)
    resumed = make_sampler(skip_mastered=0.9, revisit_prob=0.0)
    resumed.load_state_dict(json.loads(json.dumps(original.state_dict())))
    # The refill must see what the step already drew (to defer it) and how much it already skipped.
    assert resumed.next_batch(0, num_prompts=4) == original.next_batch(0, num_prompts=4)
    assert resumed.metrics() == original.metrics()


# ---------------------------------------------------------------------------------------------------------- curriculum


def test_signal_weight_by_hand():
    from rlqa.sampler import signal_weight

    assert signal_weight(0.5, 4, 0.05) == pytest.approx(1 - 2 / 16)  # 1 - 0.5⁴ - 0.5⁴ = 0.875
    assert signal_weight(0.9, 8, 0.05) == pytest.approx(1 - 0.43046721 - 1e-8)  # 0.9⁸ = 0.43046721
    assert signal_weight(1.0, 8, 0.05) == 0.05 and signal_weight(0.0, 8, 0.05) == 0.05  # never informative: the floor


def curriculum_sampler(**section) -> RolloutSampler:
    """Three prompts, one drawn a step, 4 rollouts each; decay 1: the pass rate is (1 + successes) / (2 + trials)."""
    cfg = SamplerConfig(curriculum="signal", allocation="uniform", decay=1.0, **section)
    sampler = RolloutSampler(["easy", "half", "hard"], cfg, prompts_per_step=1, rollouts_per_prompt=4, seed=3)
    sampler.update({"easy": [True] * 20, "half": [True, False] * 10, "hard": [False] * 60})
    return sampler


def test_curriculum_draws_in_proportion_to_expected_signal_and_brings_mastered_prompts_back_rarely():
    sampler = curriculum_sampler(curriculum_floor=0.05)
    # easy: p = 21/22 → w = 1 - (21/22)⁴ - (1/22)⁴ = 0.169789; half: p = 11/22 = 0.5 → w = 0.875;
    # hard: p = 1/62 → w = 1 - (1/62)⁴ - (61/62)⁴ = 0.063003 (above the floor 0.05)
    weights = {"easy": 0.169789, "half": 0.875, "hard": 0.063003}
    draws = 6000
    counts = {p: 0 for p in weights}
    for step in range(draws):
        [(prompt_id, n)] = sampler.next_batch(step)
        counts[prompt_id] += 1
        assert n == 4
    total = sum(weights.values())
    for prompt_id, w in weights.items():
        share = w / total  # easy 0.1536, half 0.7894, hard 0.0570
        assert abs(counts[prompt_id] / draws - share) < 4 * math.sqrt(share * (1 - share) / draws)
    assert counts["easy"] > 0 and counts["hard"] > 0  # rarely, not never


def test_curriculum_floor_sets_how_often_a_hopeless_prompt_comes_back():
    def share_of_hard(floor: float) -> float:
        sampler = curriculum_sampler(curriculum_floor=floor)
        return sum(sampler.next_batch(step)[0][0] == "hard" for step in range(3000)) / 3000

    # floor 0.5 lifts easy and hard to 0.5 each: hard's share 0.5 / 1.875 = 0.267; floor 0.05 leaves it at 0.057
    assert share_of_hard(0.5) == pytest.approx(0.5 / 1.875, abs=0.03)
    assert share_of_hard(0.05) == pytest.approx(0.063003 / 1.107792, abs=0.015)


def test_curriculum_draws_are_seeded_hold_no_prompt_twice_and_resume_exactly():
    cfg = SamplerConfig(curriculum="signal")
    first = RolloutSampler(IDS, cfg, prompts_per_step=4, rollouts_per_prompt=8, seed=7)
    batch = first.next_batch(0)
    refill = first.next_batch(0, 3)  # dynamic sampling's extra round: 3 more, none of the 4 again
    assert len({p for p, _ in batch + refill}) == 7
    first.update(fake_outcomes(batch + refill, 0))
    saved = json.loads(json.dumps(first.state_dict()))
    resumed = RolloutSampler(IDS, cfg, prompts_per_step=4, rollouts_per_prompt=8, seed=7)
    resumed.load_state_dict(saved)
    assert [resumed.next_batch(s) for s in (1, 2)] == [first.next_batch(s) for s in (1, 2)]
    other_seed = RolloutSampler(IDS, cfg, prompts_per_step=4, rollouts_per_prompt=8, seed=8)
    assert other_seed.next_batch(0) != batch


@pytest.mark.parametrize("section", [{"estimator": "rank"}, {"schedule_delta": 2}, {"skip_mastered": 0.9}])
def test_curriculum_refuses_epoch_keys(section):
    with pytest.raises(ValueError, match="curriculum"):
        SamplerConfig(curriculum="signal", **section)
