"""GPU figures for the rollout side: HF-backend generation throughput and CUDA IPC weight-sync speed.

    python benchmarks/gpu_rollout.py [--hidden 1024] [--layers 12] [--batch 64] [--new-tokens 128]

A randomly initialised Llama-style model (nothing is downloaded) over the character tokenizer, so the figures are
about the machinery, not a trained model's lengths: a random model rarely emits EOS, so completions run to the
limit. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.multiprocessing as mp

from rlqa.config import TinyModelConfig
from rlqa.models import build_char_tokenizer, build_tiny_model
from rlqa.rollout.hf_backend import HFBackend
from rlqa.rollout.seeding import sample_seed
from rlqa.rollout.types import GenerationRequest, SamplingParams
from rlqa.rollout.weight_sync import ipc_handles


def model(args, seed: int, dtype: torch.dtype):
    shape = TinyModelConfig(
        hidden_size=args.hidden, layers=args.layers, heads=args.hidden // 64, intermediate_size=4 * args.hidden, max_positions=512
    )
    return build_tiny_model(shape, len(build_char_tokenizer()), seed).to("cuda", dtype)


def generation(args, backend: HFBackend, temperature: float) -> dict:
    tokenizer = backend.tokenizer
    prompt = tuple(tokenizer("What is 1234 + 5678? Think step by step.", add_special_tokens=False).input_ids)
    requests = [GenerationRequest("p", j, prompt, sample_seed(0, 0, "p", j)) for j in range(args.batch)]
    params = SamplingParams(temperature, args.new_tokens)
    backend.generate(requests[:2], SamplingParams(temperature, 4), 0)  # warm-up
    torch.cuda.synchronize()
    started = time.perf_counter()
    rollouts = backend.generate(requests, params, 0)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    tokens = sum(len(r.completion_tokens) for r in rollouts)
    return {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1)}


def receiver(args, handles, results):
    backend = HFBackend(model(args, 1, torch.bfloat16), build_char_tokenizer(), 8)
    backend.load_ipc(handles)  # warm-up: maps the handles once
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(args.repeats):
        backend.load_ipc(handles)
    results.put((time.perf_counter() - started) / args.repeats)


def ipc_sync(args) -> dict:
    state = {k: v.contiguous() for k, v in model(args, 0, torch.bfloat16).state_dict().items()}
    size = sum(t.numel() * t.element_size() for t in state.values())
    context = mp.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=receiver, args=(args, ipc_handles(state), results))
    process.start()
    seconds = results.get(timeout=300)
    process.join()
    return {"bytes": size, "seconds": round(seconds, 5), "gb_per_s": round(size / seconds / 1e9, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    policy = model(args, 0, torch.bfloat16)
    backend = HFBackend(policy, build_char_tokenizer(), micro_batch_size=args.batch)
    result = {
        "device": torch.cuda.get_device_name(),
        "parameters": sum(p.numel() for p in policy.parameters()),
        "hf_generate_seeded_t1": generation(args, backend, 1.0),
        "hf_generate_greedy": generation(args, backend, 0.0),
        "ipc_weight_sync": ipc_sync(args),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
