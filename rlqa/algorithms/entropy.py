"""Log-probabilities of sampled tokens and the policy's entropy, from logits.

The caller divides the logits by the sampling temperature first: log-probs and entropy must be those of the
distribution the tokens were sampled from.

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


def _entropy(logits: Tensor) -> Tensor:
    probs = logits.softmax(dim=-1)  # (..., T, V)
    return logits.logsumexp(dim=-1) - (probs * logits).sum(dim=-1)


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log softmax(z)[token] = z[token] - logsumexp(z), without materialising the (B, T, V) log-softmax.

    logits: (B, T, V); tokens: (B, T) long. Returns (B, T), float32 or float64.
    """
    return _in_float32(_token_logprobs, logits, tokens)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy per position: H = -Σ_v p_v log p_v = logsumexp(z) - Σ_v softmax(z)_v z_v.

    logits: (B, T, V), already divided by the temperature. Returns (B, T), float32 or float64.
    The two terms are about as large as the logits and cancel, so the absolute error is about one ulp of the
    largest logit (≈ 1e-6 in float32 for logits near 10): negligible for a mean entropy, visible only in the
    relative error of a single near-deterministic position.
    """
    return _in_float32(_entropy, logits)
