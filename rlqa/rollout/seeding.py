"""Sampling that depends only on (run seed, step, prompt id, sample index), never on batching or worker identity.

Each sample gets a 63-bit seed. The noise for token position t and vocabulary entry v is a counter-based hash of
(seed, t, v), so a sample's tokens are the same whichever worker generates it, in whatever batch, after whatever
crash. Sampling is an exponential race: with E_v ~ Exp(1) independent, argmax_v p_v / E_v is a draw from p
(the Gumbel-max trick in linear space: -log E_v is Gumbel), and the argmax can run inside Hugging Face's greedy
decoding.

Why it is cheap: the hash of a row's (seed, position) is mixed once per row (64-bit splitmix on B numbers); the
(B, V) part is two rounds of a 32-bit integer finaliser (lowbias32) over row key + token counter, computed in
place on int32 tensors for the whole batch, on the logits' device. int32 arithmetic wraps mod 2^32 on every torch
backend, so the bits are the same on CPU and GPU. Only the top 24 bits become a float32 uniform, which is exact.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import torch
from transformers import LogitsProcessor

from rlqa.algorithms.entropy import filter_logits
from rlqa.rollout.types import GenerationRequest

_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_GOLDEN32 = 0x9E3779B9
_LOWBIAS32 = ((16, 0x7FEB352D), (15, 0x846CA68B), (16, None))  # (shift, multiplier) rounds of lowbias32


def _signed(c: int, bits: int = 64) -> int:
    return c - (1 << bits) if c >= 1 << (bits - 1) else c


def stable_seed(*parts: object) -> int:
    """A 63-bit integer from `parts` joined by "/", stable across processes and Python versions (no `hash()`)."""
    key = "/".join(map(str, parts)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def sample_seed(run_seed: int, step: int, prompt_id: str, sample_index: int) -> int:
    """A 63-bit seed for one sample."""
    return stable_seed(run_seed, step, prompt_id, sample_index)


def turn_seed(seed: int, turn: int) -> int:
    """The seed of a multi-turn rollout's turn `turn` (0-based) from its sample's seed: turn 0 samples with the
    sample's own seed (so a single-turn rollout is unchanged); later turns with a stable hash of (seed, turn), so each
    turn's noise depends on (run seed, step, prompt id, sample index, turn) alone. Positions count from each turn's
    first generated token."""
    return seed if turn == 0 else stable_seed(seed, "turn", turn)


def _shift_right(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic on negatives)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _as_int32(x: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2^32) as the int32 with the same bits."""
    return ((x ^ (1 << 31)) - (1 << 31)).to(torch.int32)


def row_keys(seeds: torch.Tensor, position: int) -> tuple[torch.Tensor, torch.Tensor]:
    """splitmix64 of (seed, position) for each row, split into two int32 halves (low, high), each (B,)."""
    z = seeds.to(torch.int64) + _signed((position + 1) * _GOLDEN % (1 << 64))  # (B,), wraps mod 2^64
    z = (z ^ _shift_right(z, 30)) * _signed(_MIX1)
    z = (z ^ _shift_right(z, 27)) * _signed(_MIX2)
    z = z ^ _shift_right(z, 31)
    return _as_int32(z & 0xFFFFFFFF), _as_int32(_shift_right(z, 32))


_COUNTERS: dict[tuple[int, torch.device], torch.Tensor] = {}


def _token_counters(vocab_size: int, device: torch.device) -> torch.Tensor:
    """(V,) int32: (v + 1) * golden32 mod 2^32, distinct for every token id (the multiplier is odd)."""
    key = (vocab_size, device)
    if key not in _COUNTERS:
        counters = (torch.arange(1, vocab_size + 1, dtype=torch.int64) * _GOLDEN32) & 0xFFFFFFFF
        _COUNTERS[key] = _as_int32(counters).to(device)
    return _COUNTERS[key]


def _lowbias32_(x: torch.Tensor, scratch: torch.Tensor) -> None:
    """x <- lowbias32(x) in place, a bijection of 32-bit integers with full avalanche; x, scratch: int32."""
    for shift, multiplier in _LOWBIAS32:
        torch.bitwise_right_shift(x, shift, out=scratch)
        scratch &= (1 << (32 - shift)) - 1
        x ^= scratch
        if multiplier is not None:
            x.mul_(_signed(multiplier, 32))


def uniform_noise_(out: torch.Tensor, bits: torch.Tensor, scratch: torch.Tensor, seeds: torch.Tensor, position: int) -> torch.Tensor:
    """Fill `out` (B, V) float32 with uniform (0, 1) noise for token `position` of each row, using `bits` and
    `scratch` ((B, V) int32) as work space: u = (top 24 bits of hash(seed, position, v) + 1/2) / 2^24."""
    low, high = row_keys(seeds, position)
    low, high = low.to(out.device), high.to(out.device)
    torch.add(low[:, None], _token_counters(out.shape[-1], out.device)[None, :], out=bits)  # (B, V)
    _lowbias32_(bits, scratch)
    bits ^= high[:, None]
    _lowbias32_(bits, scratch)
    torch.bitwise_right_shift(bits, 8, out=scratch)
    scratch &= 0xFFFFFF
    out.copy_(scratch)
    return out.add_(0.5).mul_(2.0**-24)


def uniform_noise(seeds: torch.Tensor, position: int, vocab_size: int) -> torch.Tensor:
    """(B, V) float32 uniform (0, 1) noise for token `position` of each sample."""
    shape = (len(seeds), vocab_size)
    work = torch.empty(shape, dtype=torch.int32), torch.empty(shape, dtype=torch.int32)
    return uniform_noise_(torch.empty(shape), *work, seeds, position)


def gumbel_noise(seeds: torch.Tensor, position: int, vocab_size: int) -> torch.Tensor:
    """The same draw in log space: argmax(logits / T + g) picks what SeededSampler picks. (B, V) float32."""
    return -torch.log(-torch.log(uniform_noise(seeds, position, vocab_size)))


class SeededSampler(LogitsProcessor):
    """Turns greedy decoding into seeded sampling at `temperature`: each row gets its own noise stream.

    It also records, per step, the log-prob of the token it picks under the distribution it drew from: softmax of
    logits / T, with top-k / top-p that of the filtered logits renormalised over the tokens kept (vLLM's
    `processed_logprobs`; the learner evaluates the same, rlqa.algorithms.entropy), so generation needs no stored
    logits: `logprobs()` is (B, N) after `generate`. The scores it
    hands back are p_v / E_v, whose argmax is the sampled token; a token whose probability underflows float32
    (more than 87 nats below the best) scores 0 and is never drawn.
    """

    def __init__(self, seeds: torch.Tensor, prompt_length: int, temperature: float, top_k: int = 0, top_p: float = 1.0):
        self.seeds = seeds  # (B,) int64
        self.prompt_length = prompt_length
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p
        self._logprobs: list[torch.Tensor] = []  # one (B,) per generated position
        self._work: tuple[torch.Tensor, ...] = ()

    def _buffers(self, scores: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, V) work space reused at every position: float32 noise, int32 hash bits and scratch."""
        if not self._work or self._work[0].shape != scores.shape or self._work[0].device != scores.device:
            empty = lambda dtype: torch.empty(scores.shape, dtype=dtype, device=scores.device)  # noqa: E731
            self._work = (empty(torch.float32), empty(torch.int32), empty(torch.int32))
        return self._work

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        position = input_ids.shape[1] - self.prompt_length
        logits = scores.float() / self.temperature  # (B, V)
        top = logits.max(-1, keepdim=True).values  # (B, 1)
        logits -= top
        weights = filter_logits(logits, self.top_k, self.top_p).exp()  # (B, V) unnormalised, 0 outside top-k/top-p
        log_total = weights.sum(-1).log_()  # (B,) over the tokens that can be drawn
        noise, bits, scratch = self._buffers(scores)
        exponential = uniform_noise_(noise, bits, scratch, self.seeds, position).log_().neg_()  # (B, V) Exp(1)
        race = weights.div_(exponential)  # (B, V)
        chosen = race.argmax(-1, keepdim=True)  # (B, 1)
        self._logprobs.append(logits.gather(-1, chosen).squeeze(-1) - log_total)
        return race

    def logprobs(self) -> torch.Tensor:
        """(B, N) log-probs of the tokens picked at the N positions generated so far."""
        return torch.stack(self._logprobs, dim=1)


def seeded_requests(
    prompts: Iterable[tuple[str, int]], step: int, run_seed: int, prompt_tokens: Mapping[str, Sequence[int]],
    earlier: Iterable[str] = (),
) -> list[GenerationRequest]:
    """One request per sample of each (prompt id, rollout count), group by group, seeded by (run seed, step, prompt
    id, sample index). A prompt's sample indices go on from where its earlier groups of the step left off (`earlier`:
    the prompt ids of the step's rollouts so far), so a prompt drawn twice in one step gets new samples, not the
    same ones again: indices 0..n-1 for its first group of n, n..n+m-1 for a second of m."""
    taken = Counter(earlier)
    requests = []
    for prompt_id, count in prompts:
        first = taken[prompt_id]
        tokens = tuple(prompt_tokens[prompt_id])
        for j in range(first, first + count):
            requests.append(GenerationRequest(prompt_id, j, tokens, sample_seed(run_seed, step, prompt_id, j)))
        taken[prompt_id] += count
    return requests
