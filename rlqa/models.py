"""Load any Hugging Face causal LM, or build the tiny offline model that the embedded default trains.

The tiny model is a Llama-style decoder (about 1M parameters with the defaults) over a character tokenizer of
printable ASCII, both built locally so that nothing is downloaded. It is saved as an ordinary Hugging Face
directory, so every later stage loads it the same way it would load a real model.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from rlqa.config import ModelConfig, TinyModelConfig
from rlqa.errors import UserError

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
CHARACTERS = [c for c in string.printable if c not in "\t\r\x0b\x0c"]  # printable ASCII plus "\n"


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character: the vocabulary is tiny and every arithmetic string tokenizes the same way."""
    vocab = {token: i for i, token in enumerate([PAD, EOS, UNK, *CHARACTERS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, eos_token=EOS, unk_token=UNK, padding_side="left"
    )


def build_tiny_model(shape: TinyModelConfig, vocab_size: int, seed: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def create_model_dir(cfg: ModelConfig, out_dir: Path, seed: int, base_dir: str | Path = ".") -> Path:
    """The directory every stage loads the initial policy from: `model.path` (relative to base_dir, the recipe's
    directory), or a freshly built tiny model."""
    if cfg.path is not None:
        path = Path(cfg.path).expanduser()
        path = path if path.is_absolute() else Path(base_dir) / path
        if not (path / "config.json").is_file():
            raise UserError(f"model.path: {path} is not a Hugging Face model directory (no config.json)")
        return path
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(cfg.tiny, len(tokenizer), seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerFast:
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def logits_width(path: str | Path, trust_remote_code: bool = False) -> int:
    """V, the number of entries in the model's logits (the most its entropy can reach is ln V). It is the width of
    the output layer, often wider than the tokenizer (Qwen2.5: 151,936 logits, 151,665 tokens), so it is read from
    the output layer of the architecture built on PyTorch's meta device: no weights loaded, no arithmetic done. (Not
    from a forward pass: on the meta device transformers' mask preparation can call .item() for some configs, such
    as one saved by TRL's SFTTrainer.)"""
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    head = model.get_output_embeddings()
    return int(head.weight.shape[0]) if head is not None else int(config.vocab_size)


def quiet_hf() -> None:
    """No per-file progress bars from transformers in the actors: the run's own progress line says what matters."""
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_model(path: str | Path, dtype: str = "float32", trust_remote_code: bool = False):
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
    )
