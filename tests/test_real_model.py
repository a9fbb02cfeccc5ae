"""The paths a researcher takes with a real checkpoint, on the stand-in SmolLM2-135M-Instruct (BPE tokenizer, chat
template, tied embeddings, its own generation config): GRPO through Ray on its chat-templated prompts, SIGKILL and
resume to the uninterrupted result, `rlqa export` loaded back by transformers, `rlqa eval`.

Every command runs as a subprocess, as a user runs it, with an environment variable that marks its processes (Ray's
included); after each one, none of them may be left. Sizes are the smallest that still exercise each path: 2 prompts
x 2 rollouts x 12 tokens, 2 steps, one rollout worker, so the file takes a few minutes on 2 cores.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_resume import Train, processes, reproducible, rows
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlqa import checkpoint
from rlqa.config import ModelConfig, RolloutConfig
from rlqa.rollout.backends import make_backend
from rlqa.rollout.types import GenerationRequest, SamplingParams

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]

STEPS = 2
MARKER = "RLQA_TEST_PROCESS_MARK"
SYSTEM = "Give the final answer in \\boxed{}."


def recipe_for(model_dir: Path) -> dict:
    prompts = {"task": "arithmetic", "levels": [1], "chat_template": True, "system_prompt": SYSTEM}
    return {
        "model": {"path": str(model_dir)},
        "data": {"train": {**prompts, "size": 4}, "test": {**prompts, "split": "test", "size": 2}},
        "rollout": {"workers": 1, "prompts_per_step": 2, "rollouts_per_prompt": 2, "max_new_tokens": 12},
        "learner": {"lr": 1.0e-5, "torch_threads": 1},
        # the untrained model is never right in 12 tokens: a term with spread keeps the advantages non-zero
        "rewards": {"terms": [{"fn": "accuracy"}, {"fn": "boxed_format", "weight": 0.5}, {"fn": "digits.py:digit_share"}]},
        "sampler": {"allocation": "uniform"},
        "trainer": {"steps": STEPS, "eval_before": False, "eval_after": True, "eval_k": 1},
        "checkpoint": {"every": 1, "keep_last": 1},
        "logging": {"progress": False, "samples_per_step": 4},
    }


DIGIT_SHARE = '''
def digit_share(completions, prompts, **columns):
    texts = [c[0]["content"] for c in completions]  # chat data: TRL's conversational completions
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]
'''


def marked(token: str) -> list[int]:
    """Live processes whose environment carries this token."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and f"{MARKER}={token}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:  # gone, or not ours
            pass
    return found


@contextmanager
def leaves_nothing_behind():
    """Processes started inside the block carry a fresh token; when it ends, every one of them must be gone."""
    token = uuid.uuid4().hex
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(MARKER, token)
        yield token
    deadline = time.monotonic() + 20  # Ray's shutdown takes a moment
    while marked(token) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {pid: command_line(pid) for pid in marked(token)}
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind: {left}"


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"


def rlqa(*args: str) -> subprocess.CompletedProcess:
    with leaves_nothing_behind():
        done = subprocess.run([sys.executable, "-m", "rlqa.cli", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def train(recipe: Path, run_dir: Path, *args: str) -> Train:
    with leaves_nothing_behind():
        run = Train(recipe, run_dir, *args)
        assert run.finish(timeout=600) == 0, run.err[-3000:]
    return run


@pytest.fixture(scope="module")
def recipe(smollm2_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("real")
    (root / "digits.py").write_text(DIGIT_SHARE)
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe_for(smollm2_dir)))
    return path


@pytest.fixture(scope="module")
def reference(recipe, tmp_path_factory) -> Path:
    """One uninterrupted run."""
    return train(recipe, tmp_path_factory.mktemp("reference") / "run").run_dir


def test_grpo_trains_the_real_model_through_ray_on_its_chat_template(reference, smollm2_dir):
    metrics = rows(reference / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(STEPS))
    for m in metrics:
        assert m["rollout/count"] == 4 and m["policy/grad_norm"] > 0
        assert abs(m["policy/approx_kl_old"]) < 1e-4  # the learner's log-probs reproduce the sampler's
    samples = rows(reference / "samples.jsonl")
    system = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
    assert all(s["prompt"].startswith(system) and s["prompt"].endswith("<|im_start|>assistant\n") for s in samples)
    assert not any("<|im_end|>" in s["completion"] for s in samples)  # special tokens are not part of the text
    before, after = load_file(smollm2_dir / "model.safetensors"), load_file(reference / "final" / "model.safetensors")
    assert any(not after[name].equal(before[name]) for name in before)


def test_sigkill_then_resume_ends_exactly_where_the_uninterrupted_run_ends(recipe, reference, tmp_path):
    run_dir = tmp_path / "run"
    with leaves_nothing_behind() as token:
        run = Train(recipe, run_dir)
        run.wait_for(checkpoint.step_dir(run_dir, 1).exists, timeout=600)
        pids = processes(run_dir)
        assert {pids["driver"], *pids["learners"], *pids["rollout_workers"]} <= set(marked(token))  # the mark reaches them
        run.kill_tree()  # the whole process tree, as when the node goes away
    resumed = train(run_dir / "recipe.yaml", run_dir, "--resume")
    assert f"resumed from {checkpoint.step_dir(run_dir, 1)} (step 1)" in resumed.out

    got, want = rows(run_dir / "metrics.jsonl"), rows(reference / "metrics.jsonl")
    assert [reproducible(m) for m in got] == [reproducible(m) for m in want]
    assert rows(run_dir / "samples.jsonl") == rows(reference / "samples.jsonl")
    summary, expected = (json.loads((d / "summary.json").read_text()) for d in (run_dir, reference))
    assert summary["eval"] == expected["eval"]
    weights, expected = final_weights(run_dir), final_weights(reference)
    assert weights.keys() == expected.keys() and all(weights[k].equal(expected[k]) for k in expected)


def final_weights(run_dir):
    return load_file(run_dir / "final" / "model.safetensors")


def test_export_loads_in_transformers_and_generates_what_the_policy_generates(reference, tmp_path):
    out = tmp_path / "exported"
    rlqa("export", str(reference), str(out))
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template and model.config.tie_word_embeddings
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "3+4=?\n"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    plain = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12)[0, ids.shape[1] :]

    final = str(reference / "final")
    policy = make_backend(final, ModelConfig(path=final), RolloutConfig(backend="hf", micro_batch_size=1))
    (greedy,) = policy.generate([GenerationRequest("p", 0, tuple(ids[0].tolist()), 0)], SamplingParams(0.0, 12), version=0)
    assert plain.tolist()[: len(greedy.completion_tokens)] == greedy.completion_tokens


def test_rlqa_eval_on_the_run_gives_the_runs_own_held_out_numbers(reference):
    results = json.loads(rlqa("eval", str(reference)).stdout)
    assert results["model"] == str(reference / "final")
    after = json.loads((reference / "summary.json").read_text())["eval"]["after"]
    assert {k: results[k] for k in after} == after


@pytest.mark.slow  # two in-process steps of a 135M model: about 15-30 s on 2 cores
def test_top_k_top_p_logprobs_are_those_the_learner_computes(smollm2_dir, tmp_path):
    # With top_k 20 and top_p 0.9 the sampler draws from the filtered, renormalised softmax(logits / T) and records
    # that log-prob; the learner recomputes the same quantity (fp32 on one CPU: rounding only, far below 1e-4). A
    # full-softmax log-prob on either side differs by log of the kept mass, about 0.1 nats at top_p 0.9. In process
    # (no Ray): two steps, so the second samples with the weights the first update sent.
    import in_process
    from rewards.pipeline import RewardPipeline, RewardTermSpec
    from rlqa import trainer
    from rlqa.recipe_files import validate_recipe

    (tmp_path / "digits.py").write_text(DIGIT_SHARE)
    raw = recipe_for(smollm2_dir)
    raw["rollout"] |= {"top_k": 20, "top_p": 0.9}
    raw["rewards"]["terms"] = [{"fn": "accuracy"}, {"fn": "digits.py:digit_share"}]
    raw["trainer"] |= {"eval_after": False}
    recipe = validate_recipe(raw, source="test", base_dir=tmp_path)
    specs = [RewardTermSpec("accuracy", "accuracy"), RewardTermSpec("digit_share", "digits.py:digit_share")]
    with RewardPipeline(specs, correctness="accuracy", base_dir=tmp_path) as rewards:
        c = in_process.components(recipe, tmp_path / "run", rewards)
        steps = [trainer.rl_step(c, step)[0] for step in range(STEPS)]
    for metrics in steps:
        assert 0 < metrics["rollout/logprob_diff_max"] < 1e-4
        assert metrics["policy/grad_norm"] > 0
