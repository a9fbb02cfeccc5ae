"""LoRA RL (`model.lora`): only the adapters train, the base stays as loaded and serves as the reference with the
adapters switched off, rollout workers get the adapters merged into plain base weights, and checkpoints hold the
adapters, resume exactly and export merged or as adapters.

In-process steps (every real stage, no Ray) show what happens inside the learner; one `rlqa train` through Ray, then
a resume from its first checkpoint, show the trainer, the checkpoints and `rlqa export` end to end.
"""

import json
import shutil

import pytest
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import in_process
from rlqa import trainer
from rlqa.cli import main
from rlqa.recipe_files import validate_recipe
from rlqa.errors import UserError
from rlqa.learner import lora
from rlqa.learner.batch import TrainSample, collate
from rlqa.learner.learner import Learner
from rlqa.models import load_model, load_tokenizer
from rlqa.rollout.types import GenerationRequest, SamplingParams
from rewards.pipeline import RewardPipeline, RewardTermSpec

TINY = {"hidden_size": 32, "layers": 2, "heads": 2, "intermediate_size": 64, "max_positions": 128}
LORA = {"r": 4, "alpha": 8, "dropout": 0.1}
# r (in + out) per targeted linear layer of a block: q, k, v, o (32 -> 32), gate and up (32 -> 64), down (64 -> 32)
ADAPTER_PARAMETERS = 2 * (4 * 4 * (32 + 32) + 3 * 4 * (32 + 64))  # 2 blocks: 4352

DIGIT_SHARE = '''
def digit_share(completions, **kwargs):
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]
'''


def recipe_dict(steps: int = 2, **sections) -> dict:
    return {
        "model": {"tiny": TINY, "lora": LORA},
        "data": {
            "train": {"task": "arithmetic", "size": 8, "levels": [1, 2]},
            "test": {"task": "arithmetic", "split": "test", "size": 2, "levels": [1]},
        },
        "rollout": {"workers": 1, "prompts_per_step": 2, "rollouts_per_prompt": 4, "max_new_tokens": 12},
        "learner": {"lr": 1.0e-2},
        "algorithm": {"kl_coef": 0.1},  # a reference: the base with the adapters off
        # a random tiny model is never right: a reward with spread keeps the advantages non-zero
        "rewards": {"terms": [{"fn": "digits.py:digit_share"}]},
        "trainer": {"steps": steps, "eval_before": False, "eval_after": False},
        "checkpoint": {"every": 1, "keep_last": 4},
        "logging": {"progress": False},
        **sections,
    }


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("lora")
    (path / "digits.py").write_text(DIGIT_SHARE)
    return path


@pytest.fixture(scope="module")
def stepped(root):
    """Two in-process LoRA steps; the components and each step's metrics."""
    recipe = validate_recipe(recipe_dict(), source="test", base_dir=root)
    with RewardPipeline([RewardTermSpec("digits", "digits.py:digit_share")], correctness=None, base_dir=root) as rewards:
        c = in_process.components(recipe, root / "in_process", rewards)
        metrics = [trainer.rl_step(c, step)[0] for step in range(2)]
    return c, metrics


def test_only_the_adapters_train(stepped):
    c, _ = stepped
    learner = c.schedule.learner
    trained = [p for group in learner.optimizer.param_groups for p in group["params"]]
    named = {id(p): name for name, p in learner.policy.model.named_parameters()}
    assert all(".lora_A." in named[id(p)] or ".lora_B." in named[id(p)] for p in trained)
    assert sum(p.numel() for p in trained) == ADAPTER_PARAMETERS
    assert len(learner.optimizer.state) == len(trained)  # AdamW moments for the adapters, nothing else


def test_the_base_stays_as_loaded_and_is_the_reference(stepped):
    c, _ = stepped
    learner = c.schedule.learner
    untouched = load_model(c.driver.model_dir)
    base = learner.policy.model.get_base_model().state_dict()
    for name, tensor in untouched.state_dict().items():
        key = name if name in base else name.replace(".weight", ".base_layer.weight")
        assert torch.equal(base[key], tensor), name
    assert learner.reference.model is learner.policy.model  # no second copy

    batch = collate(_samples(c), learner.policy.pad_token_id)
    reference = learner.reference.logprobs(batch, temperature=1.0)
    with torch.no_grad():
        logits = untouched(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    expected = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(reference, expected, atol=1e-6, rtol=0)
    learner.policy.model.eval()
    policy = learner.policy.forward(batch, 1.0).logprobs
    assert (policy - reference).abs().max() > 1e-3  # two steps at lr 1e-2 moved the adapters


def test_workers_get_the_adapters_merged_and_sample_what_the_learner_scores(stepped):
    c, metrics = stepped
    learner = c.schedule.learner
    merged = learner.weights()
    base = load_model(c.driver.model_dir).state_dict()
    assert merged.keys() == base.keys()  # the base architecture's own names
    assert torch.equal(merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"])  # no adapter there
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])
    # step 1 sampled with the merged weights of step 0's update; the learner scores the same tokens with the adapters
    assert metrics[1]["rollout/logprob_diff_max"] < 1e-4
    engine = c.rollout_workers.backend.model
    assert all(torch.equal(engine.state_dict()[k], merged[k]) for k in merged)


def test_a_target_that_matches_nothing_is_a_user_error(root):
    recipe = validate_recipe(recipe_dict(model={"tiny": TINY, "lora": {"target_modules": ["c_attn"]}}), source="test", base_dir=root)
    with pytest.raises(UserError, match=r"^model\.lora\.target_modules: \['c_attn'\] does not fit the model"):
        trainer.build_driver(recipe, root / "bad_target")  # the driver checks, before any actor starts
    model_dir = str(root / "bad_target" / "init_model")
    with pytest.raises(UserError, match=r"^model\.lora\.target_modules: \['c_attn'\] does not fit the model"):
        Learner(model_dir, recipe, 1)


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"learner": {"workers": 2}}, "model.lora trains on one learner"),
        ({"sft": {"max_steps": 1}}, "the SFT warm-up does not run with LoRA"),
        ({"algorithm": {"name": "ppo", "advantage": "gae", "critic": {}}}, "PPO's critic does not train with LoRA"),
    ],
)
def test_the_schema_refuses_what_lora_does_not_do(root, sections, message):
    with pytest.raises(UserError, match=message):
        validate_recipe(recipe_dict(**sections), source="test", base_dir=root)


def _samples(c):
    """Train samples of a fresh batch from the in-process engine (the first prompt, 2 rollouts)."""
    prompt_id = next(iter(c.driver.train))
    requests = [GenerationRequest(prompt_id, i, c.driver.prompt_tokens[prompt_id], seed=i) for i in range(2)]
    rollouts = c.rollout_workers.backend.generate(requests, SamplingParams(1.0, 8), 0)
    return [TrainSample(r.prompt_tokens, r.completion_tokens, r.logprobs, 0.0) for r in rollouts]


# -- through Ray: `rlqa train`, resume, export ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(root):
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict(steps=3)))
    assert main(["train", str(recipe), "--run-dir", str(root / "run")]) == 0
    return root / "run"


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.integration
def test_a_checkpoint_holds_the_adapters_and_resumes_exactly(run, root):
    ckpt = run / "checkpoints" / "step_00000003"
    names = {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()}
    assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json", "optimizer.pt"} <= names
    assert not {"policy.safetensors", "reference.safetensors"} & names  # the base is read again from the model dir
    saved = torch.load(ckpt / "optimizer.pt", weights_only=True)["optimizer"]
    assert sum(s["exp_avg"].numel() for s in saved["state"].values()) == ADAPTER_PARAMETERS

    resumed = root / "resumed"
    shutil.copytree(run, resumed)
    first = resumed / "checkpoints" / "step_00000001"
    assert main(["train", str(resumed / "recipe.yaml"), "--run-dir", str(resumed), "--resume-from", str(first)]) == 0
    strip = lambda m: {k: v for k, v in m.items() if not k.startswith(("time/", "throughput/"))}
    assert [strip(m) for m in rows(resumed / "metrics.jsonl")] == [strip(m) for m in rows(run / "metrics.jsonl")]
    adapters = load_file(ckpt / "adapter" / "adapter_model.safetensors")
    again = load_file(resumed / "checkpoints" / "step_00000003" / "adapter" / "adapter_model.safetensors")
    assert adapters.keys() == again.keys() and all(torch.equal(adapters[k], again[k]) for k in adapters)


def greedy(model, prompt_ids):
    with torch.no_grad():
        return model.generate(torch.tensor([prompt_ids]), max_new_tokens=12, do_sample=False)[0].tolist()


@pytest.mark.integration
def test_export_writes_the_merged_model_or_the_adapters(run, root):
    assert main(["export", str(run), str(root / "merged")]) == 0
    assert main(["export", str(run), str(root / "adapters"), "--adapters"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(root / "merged").eval()
    final = AutoModelForCausalLM.from_pretrained(run / "final").eval()  # the run's own final policy: merged too
    peft_model = PeftModel.from_pretrained(load_model(run / "init_model"), str(root / "adapters")).eval()
    assert all(torch.equal(final.state_dict()[k], v) for k, v in merged.state_dict().items())
    prompt = load_tokenizer(run / "final")("12+34=?\n", add_special_tokens=False).input_ids
    assert greedy(merged, prompt) == greedy(peft_model, prompt)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, peft_model(ids).logits, atol=1e-5)
    assert lora.base_model_dir(root / "adapters") == (run / "init_model").resolve()



@pytest.mark.integration
@pytest.mark.usefixtures("one_torch_thread")
def test_lora_grpo_steps_on_the_real_model(smollm2_dir, root):
    """Two in-process LoRA GRPO steps on SmolLM2-135M-Instruct with its chat template: 2 prompts x 2 rollouts x 8
    tokens, adapters on the attention projections only."""
    prompts = {"task": "arithmetic", "levels": [1], "chat_template": True, "system_prompt": "Answer in \\boxed{}."}
    raw = recipe_dict(
        model={"path": str(smollm2_dir), "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}},
        data={"train": {**prompts, "size": 2}, "test": {**prompts, "split": "test", "size": 1}},
        rollout={"workers": 1, "prompts_per_step": 2, "rollouts_per_prompt": 2, "max_new_tokens": 8},
        learner={"lr": 1.0e-3, "torch_threads": 1},
        algorithm={"kl_coef": 0.05},
    )
    recipe = validate_recipe(raw, source="test", base_dir=root)
    with RewardPipeline([RewardTermSpec("digits", "digits.py:digit_share")], correctness=None, base_dir=root) as rewards:
        c = in_process.components(recipe, root / "smollm2", rewards)
        metrics = [trainer.rl_step(c, step)[0] for step in range(2)]
    learner = c.schedule.learner
    # 30 blocks, q_proj 576 -> 576 and v_proj 576 -> 192 (grouped-query attention): r (in + out) each
    assert sum(p.numel() for p in learner.policy.trainable()) == 30 * 4 * ((576 + 576) + (576 + 192))
    assert [m["policy/version"] for m in metrics] == [1.0, 2.0]
    assert metrics[1]["rollout/logprob_diff_max"] < 1e-4  # the merged weights sample what the adapters score
    assert all(m["policy/kl"] >= 0 for m in metrics)
