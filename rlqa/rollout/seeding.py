"""Sampling that depends only on (run seed, step, prompt id, sample index), never on batching or worker identity.

Each sample gets a 63-bit seed. The noise for token position t and vocabulary entry v is a counter-based hash
(splitmix64) of (seed, t, v), so a sample's tokens are the same whichever worker generates it, in whatever batch,
after whatever crash. Sampling uses the Gumbel-max trick: argmax(logits / T + g) with g = -log(-log u) draws
exactly from softmax(logits / T), and the argmax can run inside Hugging Face's greedy decoding.
"""

from __future__ import annotations

import hashlib

import torch
from transformers import LogitsProcessor

_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


def stable_seed(*parts: object) -> int:
    """A 63-bit integer from `parts` joined by "/", stable across processes and Python versions (no `hash()`)."""
    key = "/".join(map(str, parts)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def sample_seed(run_seed: int, step: int, prompt_id: str, sample_index: int) -> int:
    """A 63-bit seed for one sample."""
    return stable_seed(run_seed, step, prompt_id, sample_index)


def _shift_right(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic on negatives)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def uniform_noise(seeds: torch.Tensor, position: int, vocab_size: int) -> torch.Tensor:
    """Uniform (0, 1) noise of shape (B, V) for token `position` of each sample: splitmix64 of seed + counter."""
    counters = position * vocab_size + torch.arange(1, vocab_size + 1, dtype=torch.int64)  # (V,)
    z = seeds.to(torch.int64)[:, None] + counters[None, :] * _signed(_GOLDEN)  # (B, V), wraps mod 2^64
    z = (z ^ _shift_right(z, 30)) * _signed(_MIX1)
    z = (z ^ _shift_right(z, 27)) * _signed(_MIX2)
    z = z ^ _shift_right(z, 31)
    top53 = _shift_right(z, 11).to(torch.float64)
    return (top53 + 0.5) / float(1 << 53)


def gumbel_noise(seeds: torch.Tensor, position: int, vocab_size: int) -> torch.Tensor:
    u = uniform_noise(seeds, position, vocab_size)
    return -torch.log(-torch.log(u))  # (B, V) float64


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask (set to -inf) the tokens outside top-k and the nucleus top-p. logits: (B, V)."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


class SeededSampler(LogitsProcessor):
    """Turns greedy decoding into seeded sampling at `temperature`: each row gets its own noise stream."""

    def __init__(self, seeds: torch.Tensor, prompt_length: int, temperature: float, top_k: int = 0, top_p: float = 1.0):
        self.seeds = seeds  # (B,) int64
        self.prompt_length = prompt_length
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        position = input_ids.shape[1] - self.prompt_length
        logits = filter_logits(scores.float() / self.temperature, self.top_k, self.top_p)
        noise = gumbel_noise(self.seeds, position, scores.shape[-1]).to(logits.device, logits.dtype)
        return logits + noise
