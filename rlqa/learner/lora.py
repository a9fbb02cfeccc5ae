"""LoRA (`model.lora`, with peft): RL trains low-rank adapters on a frozen base model.

Each targeted linear layer computes W x + (alpha / r) B A x, where W stays as loaded and only A (r × in, random) and
B (out × r, zero at the start, so the policy starts as the base model) train. Three consequences the rest of rlqa
relies on:

- The reference policy is the base model itself with the adapters switched off (peft's `disable_adapter()`), so
  β > 0 costs no second copy of the model.
- Rollout workers hold plain models of the base architecture. They receive `merged_weights`: W + (alpha / r) B A
  under the base model's own parameter names, computed beside the trained model, which is never modified (merging
  in place and back would not give W back exactly).
- A checkpoint holds the adapters (`ADAPTER_DIR`, peft's own file layout) and the optimizer state of their
  parameters; the base weights are read again from the model directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from rlqa.config import LoraConfig
from rlqa.errors import UserError

ADAPTER_DIR = "adapter"  # in a checkpoint: adapter_config.json + adapter_model.safetensors, as PeftModel loads them
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def with_adapters(model: torch.nn.Module, cfg: LoraConfig, base_dir: str) -> PeftModel:
    """`model` with fresh adapters where `cfg.target_modules` says (initialised from torch's RNG). `base_dir`, the
    directory the base model was loaded from, is recorded in the adapters' config (peft's `base_model_name_or_path`).
    Targets that match nothing, or an adapter on an embedding that the LM head shares, are a `UserError`."""
    config = PeftLoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_modules,
        task_type="CAUSAL_LM", base_model_name_or_path=str(Path(base_dir).resolve()),
    )
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as err:
        raise UserError(f"model.lora.target_modules: {cfg.target_modules!r} does not fit the model ({err})") from None
    if getattr(model.config, "tie_word_embeddings", False):
        tied = {model.get_input_embeddings(), model.get_output_embeddings()}
        if any(isinstance(module, LoraLayer) and module.get_base_layer() in tied for module in model.modules()):
            raise UserError("model.lora.target_modules: the embeddings are tied to the LM head; leave both without adapters")
    return peft_model


def check_targets(model_dir: str, cfg: LoraConfig, trust_remote_code: bool = False) -> None:
    """`with_adapters` on the model's skeleton (no weights: the meta device), so that the driver reports bad
    targets as a `UserError` before any actor starts."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    with_adapters(skeleton, cfg, model_dir)


@torch.no_grad()
def merged_weights(model: PeftModel) -> dict[str, torch.Tensor]:
    """The state dict of the base architecture with the adapters merged, W + (alpha / r) B A, on the model's device:
    what a plain model of the base loads. New tensors; the trained model is left as it is."""
    base = model.get_base_model()
    deltas = {
        f"{name}.weight": sum(module.get_delta_weight(adapter) for adapter in module.active_adapters)
        for name, module in base.named_modules()
        if isinstance(module, LoraLayer)
    }
    merged = {}
    for key, tensor in base.state_dict().items():
        if ".lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        merged[key] = (tensor + deltas[key].to(tensor.dtype) if key in deltas else tensor.clone()).contiguous()
    return merged


def save_adapters(model: PeftModel, out_dir: Path) -> None:
    """The adapters as peft writes them (`PeftModel.from_pretrained(base, out_dir)` loads them), without a model card."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    save_file(state, out_dir / ADAPTER_WEIGHTS)
    model.peft_config["default"].save_pretrained(str(out_dir))


def load_adapters(model: PeftModel, src_dir: Path) -> None:
    """The adapters `save_adapters` wrote, into `model`; a file that does not fit it fails loudly."""
    result = set_peft_model_state_dict(model, load_file(src_dir / ADAPTER_WEIGHTS))
    missing = [key for key in result.missing_keys if ".lora_" in key]
    if missing or result.unexpected_keys:
        raise ValueError(f"{src_dir / ADAPTER_WEIGHTS}: does not fit the model (missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})")


def base_model_dir(adapter_dir: Path) -> Path:
    """Where the base weights of saved adapters live (their config's `base_model_name_or_path`)."""
    return Path(json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"])
