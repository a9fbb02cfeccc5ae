"""Seeded sampling: draws follow softmax(logits / T), and a sample's tokens depend only on its own seed."""

import torch

from rlqa.rollout.seeding import SeededSampler, filter_logits, sample_seed, seeded_requests, uniform_noise


def test_sample_seed_is_stable_and_distinct():
    # pinned value: the seed must not change across Python versions or processes (no hash())
    assert sample_seed(0, 0, "p", 0) == sample_seed(0, 0, "p", 0)
    seeds = {sample_seed(s, t, p, j) for s in (0, 1) for t in (0, 1) for p in ("a", "b") for j in (0, 1)}
    assert len(seeds) == 16
    assert all(0 <= s < 2**63 for s in seeds)


def test_requests_are_seeded_per_prompt_and_sample_index_and_a_prompt_drawn_again_goes_on_with_its_indices():
    tokens = {"a": (5, 6), "b": (7,)}
    requests = seeded_requests([("a", 2), ("b", 1), ("a", 2)], 3, 11, tokens)
    # a's second group (drawn again in the same step) takes indices 2, 3, not 0, 1 again: new samples
    assert [(r.prompt_id, r.sample_index, r.prompt_tokens) for r in requests] == [
        ("a", 0, (5, 6)), ("a", 1, (5, 6)), ("b", 0, (7,)), ("a", 2, (5, 6)), ("a", 3, (5, 6)),
    ]
    assert [r.seed for r in requests] == [sample_seed(11, 3, pid, j) for pid, j in [("a", 0), ("a", 1), ("b", 0), ("a", 2), ("a", 3)]]
    assert len({r.seed for r in requests}) == 5
    # an extra round after the step's rollouts so far (a three times, b once): a from 3, b from 1, c from 0
    later = seeded_requests([("a", 1), ("b", 2), ("c", 1)], 3, 11, tokens | {"c": (8,)}, earlier=["a", "a", "b", "a"])
    assert [(r.prompt_id, r.sample_index) for r in later] == [("a", 3), ("b", 1), ("b", 2), ("c", 0)]


def test_noise_bits_are_pinned():
    # the top 24 hash bits of (sample_seed(0, 0, "p", 0), position 0, tokens 0-3): a change here changes every
    # seeded run, so old checkpoints would no longer resume exactly
    u = uniform_noise(torch.tensor([sample_seed(0, 0, "p", 0)]), 0, 4)
    assert (u * 2**24 - 0.5).long().tolist() == [[6525376, 8112736, 882028, 9705694]]


def test_uniform_noise_is_in_the_open_unit_interval_and_depends_on_position():
    seeds = torch.tensor([1, 2, 3])
    u0, u1 = uniform_noise(seeds, 0, 50), uniform_noise(seeds, 1, 50)
    assert u0.shape == (3, 50) and bool(((u0 > 0) & (u0 < 1)).all())
    assert not torch.equal(u0, u1)
    assert abs(float(u0.mean()) - 0.5) < 0.05


def sampled(logits: torch.Tensor, seeds: torch.Tensor, positions: int, temperature: float = 1.0, **kw):
    """The tokens (B, N) and log-probs (B, N) SeededSampler picks at `positions` positions for logits (B, V)."""
    sampler = SeededSampler(seeds, prompt_length=0, temperature=temperature, **kw)
    tokens = [sampler(torch.zeros((len(seeds), t), dtype=torch.long), logits.clone()).argmax(-1) for t in range(positions)]
    return torch.stack(tokens, dim=1), sampler.logprobs()


def draw(logits: torch.Tensor, n: int, temperature: float, **kw) -> torch.Tensor:
    seeds = torch.tensor([sample_seed(7, 0, "p", j) for j in range(n)])
    tokens, _ = sampled(logits.expand(n, -1), seeds, 1, temperature, **kw)
    return torch.bincount(tokens[:, 0], minlength=logits.shape[-1]).float() / n


def test_draws_follow_softmax_at_the_temperature():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    # softmax([2, 1, 0, -1]) = [0.6439, 0.2369, 0.0871, 0.0321]; at T = 0.5: [0.8650, 0.1171, 0.0158, 0.0021]
    n = 20000  # standard error of a frequency near 0.64: sqrt(0.64 * 0.36 / 20000) = 0.0034
    assert torch.allclose(draw(logits, n, 1.0), torch.tensor([0.6439, 0.2369, 0.0871, 0.0321]), atol=0.015)
    assert torch.allclose(draw(logits, n, 0.5), torch.tensor([0.8650, 0.1171, 0.0158, 0.0021]), atol=0.015)


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    freq = draw(logits, 4000, 1.0, top_k=2)
    assert freq[2] == 0 and freq[3] == 0
    # top_p = 0.7: 0.6439 < 0.7, so the second token (cumulative 0.8808) is kept and the rest dropped
    kept = filter_logits(logits, top_p=0.7)
    assert torch.isfinite(kept).tolist() == [[True, True, False, False]]


def test_a_samples_noise_does_not_depend_on_its_batch():
    seeds = torch.tensor([sample_seed(0, 3, "q", j) for j in range(4)])
    alone = uniform_noise(seeds[2:3], 5, 20)
    together = uniform_noise(seeds, 5, 20)[2:3]
    assert torch.equal(alone, together)


def test_a_row_samples_the_same_tokens_alone_and_inside_a_batch_of_other_rows():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn((6, 1000), generator=generator) * 3  # six different rows
    seeds = torch.tensor([sample_seed(1, 2, f"p{i}", i % 2) for i in range(6)])
    together, together_logprobs = sampled(logits, seeds, positions=16)
    for row in (0, 3, 5):
        alone, alone_logprobs = sampled(logits[row : row + 1], seeds[row : row + 1], positions=16)
        assert torch.equal(alone[0], together[row])
        assert torch.equal(alone_logprobs[0], together_logprobs[row])
    assert len({tuple(r) for r in together.tolist()}) == 6


def test_recorded_logprobs_are_those_of_the_filtered_distribution_at_the_temperature():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).expand(3, -1)
    tokens, logprobs = sampled(logits, torch.tensor([5, 6, 7]), positions=4, temperature=0.5, top_k=2)
    # the distribution drawn from (vLLM's processed_logprobs): logits / T = (4, 2, 0, -2), top-2 keeps (4, 2),
    # renormalised: log p0 = -ln(1 + e^-2) = -0.126928, log p1 = -2 - ln(1 + e^-2) = -2.126928
    assert set(tokens.flatten().tolist()) == {0, 1}
    expected = torch.where(tokens == 0, -0.126928, -2.126928)
    assert torch.allclose(logprobs, expected, atol=1e-6)


def test_sampling_frequencies_and_pairs_match_softmax_within_four_standard_errors():
    """40,000 samples over a 5-token vocabulary, 2 positions each. Each frequency f_v is a binomial mean, standard
    error s_v = sqrt(p_v (1 - p_v) / n); a correct sampler lands outside 4 s_v with probability 6.3e-5 per token,
    so 2 positions x 5 tokens false-alarm with probability < 7e-4 for a random seed (this one is fixed, so the test
    is deterministic). The pairs (token at position 0, token at position 1) must be independent: Pearson's
    chi-square over the 25 cells (24 degrees of freedom) stays under 51.2, its 0.999 quantile."""
    n = 40000
    logits = torch.tensor([[1.5, 0.5, 0.0, -0.5, -2.0]])
    p = torch.softmax(logits[0], -1)  # [0.5449, 0.2005, 0.1216, 0.0738, 0.0165]
    seeds = torch.tensor([sample_seed(11, 3, "stat", j) for j in range(n)])
    tokens, _ = sampled(logits.expand(n, -1), seeds, positions=2)
    standard_error = (p * (1 - p) / n).sqrt()
    for position in range(2):
        frequency = torch.bincount(tokens[:, position], minlength=5).double() / n
        assert ((frequency - p).abs() < 4 * standard_error).all(), (position, frequency, p)
    cells = torch.bincount(tokens[:, 0] * 5 + tokens[:, 1], minlength=25).double()
    expected = n * torch.outer(p, p).flatten().double()
    assert float(((cells - expected) ** 2 / expected).sum()) < 51.2


def test_each_turn_of_a_multi_turn_rollout_has_its_own_seed():
    from rlqa.rollout.seeding import stable_seed, turn_seed

    seed = sample_seed(0, 1, "p", 2)
    assert turn_seed(seed, 0) == seed  # the first turn samples as a single-turn rollout does
    later = [turn_seed(seed, turn) for turn in (1, 2, 3)]
    assert later == [stable_seed(seed, "turn", turn) for turn in (1, 2, 3)] and len({seed, *later}) == 4
    assert all(0 <= s < 2**63 for s in later)
