"""What seeded, batch-independent sampling costs: HF generation on SmolLM2-135M-Instruct (49,152-token vocabulary)
with rlqa's seeded sampler, the sampler it replaced, and HF's own `do_sample=True`, at equal batch and new tokens.

    python benchmarks/seeded_sampling.py MODEL_DIR [--batch 32] [--new-tokens 24] [--repeats 5] [--threads 1]

MODEL_DIR: the stand-in from `rlqa import-gguf --smollm2 DIR` (or the test cache, tests/.cache/smollm2-*). Every
variant runs the same left-padded chat prompts for exactly --new-tokens tokens (EOS off, so no variant stops
early), one after another in each repetition, so machine load hits them alike. Plain temperature sampling (T = 1,
no top-k or top-p) in all of them; HF's run records no log-probs, the seeded ones do (the learner needs them).
Prints one JSON object: the median milliseconds of one sampling step alone (on random logits of the same shape),
the median and the fastest seconds per generate call of each variant, and the ratios to HF's.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import transformers
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from rlqa.models import load_model, load_tokenizer
from rlqa.rollout.seeding import SeededSampler, sample_seed

PROMPTS = ["What is 17 + 25?", "Write one sentence about the sea.", "Name three prime numbers.", "What is 9 times 7?"]
_GOLDEN, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


def _shift_right(x: torch.Tensor, k: int) -> torch.Tensor:
    return (x >> k) & ((1 << (64 - k)) - 1)


class OldSeededSampler(LogitsProcessor):
    """The sampler before issue 19, for comparison: float64 splitmix64 Gumbel noise made on the CPU per (B, V) step,
    with log-probs recomputed afterwards from the stored logits (see `old_seeded`)."""

    def __init__(self, seeds: torch.Tensor, prompt_length: int, temperature: float):
        self.seeds, self.prompt_length, self.temperature = seeds, prompt_length, temperature

    def __call__(self, input_ids, scores):
        position, vocab_size = input_ids.shape[1] - self.prompt_length, scores.shape[-1]
        counters = position * vocab_size + torch.arange(1, vocab_size + 1, dtype=torch.int64)
        z = self.seeds[:, None] + counters[None, :] * _signed(_GOLDEN)
        z = (z ^ _shift_right(z, 30)) * _signed(_MIX1)
        z = (z ^ _shift_right(z, 27)) * _signed(_MIX2)
        z = z ^ _shift_right(z, 31)
        u = (_shift_right(z, 11).to(torch.float64) + 0.5) / float(1 << 53)
        noise = -torch.log(-torch.log(u))
        return scores.float() / self.temperature + noise.to(scores.device, torch.float32)


def config(args, **kw) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=args.new_tokens, min_new_tokens=0, eos_token_id=None, use_cache=True, **kw)


def hf_sample(model, batch, args) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "seeds"}
    return model.generate(**inputs, generation_config=config(args, do_sample=True, temperature=1.0, top_k=0, top_p=1.0))


def new_seeded(model, batch, args) -> torch.Tensor:
    sampler = SeededSampler(batch["seeds"], batch["input_ids"].shape[1], 1.0)
    inputs = {k: v for k, v in batch.items() if k != "seeds"}
    model.generate(**inputs, generation_config=config(args, do_sample=False), logits_processor=LogitsProcessorList([sampler]))
    return sampler.logprobs()  # (B, N)


def old_seeded(model, batch, args) -> torch.Tensor:
    sampler = OldSeededSampler(batch["seeds"], batch["input_ids"].shape[1], 1.0)
    inputs = {k: v for k, v in batch.items() if k != "seeds"}
    out = model.generate(
        **inputs,
        generation_config=config(args, do_sample=False, return_dict_in_generate=True, output_logits=True),
        logits_processor=LogitsProcessorList([sampler]),
    )
    completions = out.sequences[:, inputs["input_ids"].shape[1] :]
    logits = torch.stack(out.logits, dim=1).float()  # (B, N, V)
    return torch.log_softmax(logits, dim=-1).gather(-1, completions[..., None]).squeeze(-1)


def greedy(model, batch, args) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k != "seeds"}
    return model.generate(**inputs, generation_config=config(args, do_sample=False))


VARIANTS = {"hf_do_sample": hf_sample, "seeded_new": new_seeded, "seeded_old": old_seeded, "greedy": greedy}


def hf_step(scores: torch.Tensor, seeds: torch.Tensor, position: int) -> torch.Tensor:
    """What HF's do_sample does to one step's logits (temperature 1 leaves them as they are)."""
    return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)


def new_step(scores: torch.Tensor, seeds: torch.Tensor, position: int) -> torch.Tensor:
    sampler = SeededSampler(seeds, 0, 1.0)  # the log-prob of the pick is recorded inside
    return sampler(torch.zeros((len(seeds), position), dtype=torch.long), scores).argmax(-1)


def old_step(scores: torch.Tensor, seeds: torch.Tensor, position: int) -> torch.Tensor:
    tokens = OldSeededSampler(seeds, 0, 1.0)(torch.zeros((len(seeds), position), dtype=torch.long), scores).argmax(-1)
    torch.log_softmax(scores.float(), -1).gather(-1, tokens[:, None])  # its log-prob, from the stored logits
    return tokens


STEPS = {"hf_do_sample": hf_step, "seeded_new": new_step, "seeded_old": old_step}


def sampling_step_ms(args, seeds: torch.Tensor, vocab_size: int) -> dict[str, float]:
    """Median milliseconds of one sampling step alone, on (batch, vocab) logits like a model's, no model call."""
    scores = torch.randn((len(seeds), vocab_size), generator=torch.Generator().manual_seed(0)) * 3
    timings: dict[str, list[float]] = {name: [] for name in STEPS}
    for repeat in range(args.repeats * args.new_tokens + 1):
        for name, step in STEPS.items():
            started = time.perf_counter()
            step(scores.clone(), seeds, repeat)
            if repeat:  # the first is a warm-up
                timings[name].append((time.perf_counter() - started) * 1000)
    return {name: round(statistics.median(values), 2) for name, values in timings.items()}


def make_batch(tokenizer, size: int) -> dict[str, torch.Tensor]:
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], tokenize=False, add_generation_prompt=True)
        for i in range(size)
    ]
    tokenizer.padding_side = "left"
    encoded = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    seeds = torch.tensor([sample_seed(0, 0, f"p{i % len(PROMPTS)}", i) for i in range(size)], dtype=torch.int64)
    return {"input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask, "seeds": seeds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a rollout worker uses rollout.torch_threads: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer, model = load_tokenizer(args.model_dir), load_model(args.model_dir).eval()
    model.generation_config = GenerationConfig(pad_token_id=tokenizer.pad_token_id)  # nothing of the checkpoint's
    batch = make_batch(tokenizer, args.batch)
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with torch.no_grad():
        step_ms = sampling_step_ms(args, batch["seeds"], model.config.vocab_size)
        for fn in VARIANTS.values():  # warm-up
            fn(model, {k: v[:2] for k, v in batch.items()}, argparse.Namespace(new_tokens=2))
        for _ in range(args.repeats):
            for name, fn in VARIANTS.items():
                started = time.perf_counter()
                fn(model, batch, args)
                seconds[name].append(time.perf_counter() - started)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    fastest = {name: min(values) for name, values in seconds.items()}  # least disturbed by other work on the machine
    print(json.dumps({
        "batch": args.batch, "new_tokens": args.new_tokens, "prompt_tokens": batch["input_ids"].shape[1],
        "threads": args.threads, "repeats": args.repeats, "vocab": model.config.vocab_size,
        "sampling_step_ms": step_ms,
        "median_s": {k: round(v, 3) for k, v in median.items()},
        "all_s": {k: [round(x, 3) for x in v] for k, v in seconds.items()},
        "seeded_new_over_hf": round(median["seeded_new"] / median["hf_do_sample"], 3),
        "seeded_old_over_hf": round(median["seeded_old"] / median["hf_do_sample"], 3),
        "seeded_new_over_greedy": round(median["seeded_new"] / median["greedy"], 3),
        "seeded_old_over_new": round(median["seeded_old"] / median["seeded_new"], 3),
        "min_s": {k: round(v, 3) for k, v in fastest.items()},
        "min_seeded_new_over_hf": round(fastest["seeded_new"] / fastest["hf_do_sample"], 3),
        "min_seeded_old_over_hf": round(fastest["seeded_old"] / fastest["hf_do_sample"], 3),
        "torch": torch.__version__, "transformers": transformers.__version__, "machine": platform.processor() or platform.machine(),
    }, indent=1))


if __name__ == "__main__":
    main()
