"""Log-probabilities of sampled tokens and the policy's entropy, from logits.

The caller divides the logits by the sampling temperature first: log-probs must be those of the distribution the
tokens were sampled from. With top-k / top-p that is the filtered distribution, renormalised over the tokens it
keeps (vLLM's `processed_logprobs`, which TRL and verl ask vLLM for): `filter_logits` is the one filter the HF
sampler draws through and the learner evaluates through. The entropy stays that of the whole softmax(logits / T).

Half-precision logits (bf16/fp16) are upcast to float32: in bf16 a log-prob of -10 is only resolved to 1/16,
which is far coarser than the ratio changes the clipped loss measures. Upcasting the whole (B, T, V) tensor
would double its memory, so it is done one sequence at a time, keeping the extra memory to (T, V).
"""

from collections.abc import Callable

import torch
from torch import Tensor


def _in_float32(fn: Callable[..., Tensor], logits: Tensor, *per_row: Tensor) -> Tensor:
    """fn(logits, *per_row) computed in at least float32; row by row when the logits need upcasting."""
    if logits.dtype in (torch.float32, torch.float64):
        return fn(logits, *per_row)
    return torch.stack([fn(row.float(), *(arg[i] for arg in per_row)) for i, row in enumerate(logits)])


def _token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (..., T)
    return picked - logits.logsumexp(dim=-1)


def outside_top_k_top_p(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """True where a token falls outside top-k, then outside the nucleus top-p of the top-k renormalised distribution
    (vLLM's order and rule: a token is kept while the mass strictly above it is < top_p, so the token that crosses
    top_p stays, and ties with the k-th logit stay). logits: (..., V) -> bool (..., V); not differentiable."""
    logits = logits.detach()
    drop = torch.zeros_like(logits, dtype=torch.bool)
    if 0 < top_k < logits.shape[-1]:
        drop = logits < torch.topk(logits, top_k, dim=-1).values[..., -1:]
    if top_p < 1.0:
        kept = logits.masked_fill(drop, float("-inf"))
        ordered, order = torch.sort(kept, dim=-1, descending=True)
        probs = ordered.softmax(-1)
        above = probs.cumsum(-1) - probs  # mass of the tokens ranked above each one
        drop = drop | torch.zeros_like(drop).scatter(-1, order, above >= top_p)
    return drop


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """The logits with the tokens outside top-k / top-p set to -inf. (..., V) -> (..., V)."""
    if top_k <= 0 and top_p >= 1.0:
        return logits
    return logits.masked_fill(outside_top_k_top_p(logits, top_k, top_p), float("-inf"))


def _filtered_token_logprobs(logits: Tensor, tokens: Tensor, top_k: int, top_p: float) -> Tensor:
    """log p(token) under the top-k / top-p distribution; the token itself always counts as kept, so a sampled token
    the learner's numerics place a hair outside the sampler's boundary gets a finite log-prob, not -inf."""
    drop = outside_top_k_top_p(logits, top_k, top_p).scatter_(-1, tokens.unsqueeze(-1), False)
    return _token_logprobs(logits.masked_fill(drop, float("-inf")), tokens)


def _entropy(logits: Tensor) -> Tensor:
    probs = logits.softmax(dim=-1)  # (..., T, V)
    return logits.logsumexp(dim=-1) - (probs * logits).sum(dim=-1)


def token_logprobs(logits: Tensor, tokens: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """log softmax(z)[token] = z[token] - logsumexp(z), without materialising the (B, T, V) log-softmax; with
    top_k > 0 or top_p < 1, the log-prob under the filtered, renormalised distribution the sampler drew from
    (its sort and masks are (T, V) work space, so it runs one sequence at a time).

    logits: (B, T, V); tokens: (B, T) long. Returns (B, T), float32 or float64.
    """
    if top_k <= 0 and top_p >= 1.0:
        return _in_float32(_token_logprobs, logits, tokens)
    return torch.stack([_filtered_token_logprobs(row.float(), row_tokens, top_k, top_p) for row, row_tokens in zip(logits, tokens)])


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy per position: H = -Σ_v p_v log p_v = logsumexp(z) - Σ_v softmax(z)_v z_v.

    logits: (B, T, V), already divided by the temperature. Returns (B, T), float32 or float64.
    The two terms are about as large as the logits and cancel, so the absolute error is about one ulp of the
    largest logit (≈ 1e-6 in float32 for logits near 10): negligible for a mean entropy, visible only in the
    relative error of a single near-deterministic position.
    """
    return _in_float32(_entropy, logits)
