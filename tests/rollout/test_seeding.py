"""Seeded sampling: draws follow softmax(logits / T), and a sample's tokens depend only on its own seed."""

import torch

from rlqa.rollout.seeding import SeededSampler, filter_logits, sample_seed, uniform_noise


def test_sample_seed_is_stable_and_distinct():
    # pinned value: the seed must not change across Python versions or processes (no hash())
    assert sample_seed(0, 0, "p", 0) == sample_seed(0, 0, "p", 0)
    seeds = {sample_seed(s, t, p, j) for s in (0, 1) for t in (0, 1) for p in ("a", "b") for j in (0, 1)}
    assert len(seeds) == 16
    assert all(0 <= s < 2**63 for s in seeds)


def test_uniform_noise_is_in_the_open_unit_interval_and_depends_on_position():
    seeds = torch.tensor([1, 2, 3])
    u0, u1 = uniform_noise(seeds, 0, 50), uniform_noise(seeds, 1, 50)
    assert u0.shape == (3, 50) and bool(((u0 > 0) & (u0 < 1)).all())
    assert not torch.equal(u0, u1)
    assert abs(float(u0.mean()) - 0.5) < 0.05


def draw(logits: torch.Tensor, n: int, temperature: float, **kw) -> torch.Tensor:
    seeds = torch.tensor([sample_seed(7, 0, "p", j) for j in range(n)])
    sampler = SeededSampler(seeds, prompt_length=0, temperature=temperature, **kw)
    scores = sampler(torch.zeros((n, 0), dtype=torch.long), logits.expand(n, -1).clone())
    return torch.bincount(scores.argmax(-1), minlength=logits.shape[-1]).float() / n


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
