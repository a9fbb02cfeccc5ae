"""Atomic, verified checkpoints.

A checkpoint is a directory `checkpoints/step_XXXXXXXX/` written under a temporary name and renamed into place once
complete, with `manifest.json` listing every file's size and SHA-256. Loading checks the manifest first, so a
truncated or corrupt checkpoint is refused by name, and auto-resume falls back to the one before it. Nothing here
unpickles: weights are safetensors, optimizer state loads with `torch.load(weights_only=True)`, the rest (RNG states
included) is JSON.

Besides the training state a checkpoint holds the resolved recipe and, under `hf/`, the model's config and
tokenizer files, so `rlqa export` turns any checkpoint into a Hugging Face model directory on its own (a LoRA
checkpoint holds only adapters; merging them reads the base weights from the model directory the run trained on).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

MANIFEST = "manifest.json"
DRIVER_STATE = "driver.json"
RECIPE = "recipe.yaml"
HF_FILES = "hf"  # config, generation config and tokenizer of the policy: everything but its weights
PAUSE_VARIABLE = "RLQA_TEST_PAUSE_AT"  # fault injection for the kill tests (`kill_point`)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".gguf", ".onnx", ".index.json")


class CheckpointError(Exception):
    """A checkpoint that cannot be used (missing, truncated or corrupt). The message names the file."""


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:08d}"


def step_of(ckpt: Path) -> int:
    return int(ckpt.name.removeprefix("step_"))


def kill_point(name: str) -> None:
    """Where the kill tests stop a run half-way through a write: with RLQA_TEST_PAUSE_AT=<name> (a file or directory
    name: summary.json, final, step_00000002) the process says so on stderr and waits there, its temporary copy
    complete and not yet renamed, until it is killed (or for at most 10 minutes, so that a test that dies first
    leaves no run paused for ever). Unset, as always outside those tests: nothing."""
    if os.environ.get(PAUSE_VARIABLE) == name:
        os.write(2, f"rlqa: paused before renaming {name} into place\n".encode())
        time.sleep(600.0)


def write_text_atomic(path: Path, text: str) -> None:
    """`path` holds the old text or the new one, never a torn mix (a kill mid-write leaves only a temporary file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    kill_point(path.name)
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- writing ---------------------------------------------------------------------------------------------------------


def begin(run_dir: Path, step: int) -> Path:
    """A fresh temporary directory to write a checkpoint into."""
    tmp = run_dir / "checkpoints" / f".tmp_step_{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def copy_model_files(model_dir: Path, dest: Path) -> None:
    """The model directory without its weights (config, tokenizer, custom code), for export from a checkpoint."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in Path(model_dir).iterdir():
        if item.is_file() and not item.name.endswith(WEIGHT_SUFFIXES):
            shutil.copyfile(item, dest / item.name)


def commit(tmp: Path, final: Path, driver_state: dict) -> Path:
    """Write the driver state and the manifest, fsync everything, and rename the directory into place.

    The rename is the commit point: a crash before it leaves only the temporary directory, never a half-written
    `step_*` that auto-resume could pick up.
    """
    (tmp / DRIVER_STATE).write_text(json.dumps(driver_state, sort_keys=True))
    return seal(tmp, final)


def seal(tmp: Path, final: Path) -> Path:
    """Give a finished directory its manifest and rename it into place (a checkpoint, or RUN_DIR/final): a kill at
    any moment leaves the old `final` or the new one, and a temporary directory that `verify` never accepts."""
    files = {
        p.relative_to(tmp).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(tmp.rglob("*"))
        if p.is_file()
    }
    (tmp / MANIFEST).write_text(json.dumps({"files": files}, indent=1, sort_keys=True))
    for p in [*tmp.rglob("*"), tmp]:
        _fsync(p)
    kill_point(final.name)
    if final.exists():  # moved aside, not deleted first: there is always a complete one under some name
        old = final.with_name(f".old_{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    _fsync(final.parent)
    return final


# -- reading ---------------------------------------------------------------------------------------------------------


def verify(ckpt: Path) -> None:
    """Raise CheckpointError naming the first file that is missing, truncated, altered or not in the manifest.

    The manifest must cover the directory exactly: a file it does not list (a weight file slipped in, or a
    manifest trimmed to leave a corrupt file out) fails as surely as a listed one that changed. A malformed
    manifest is a bad checkpoint too, never a crash."""
    try:
        files = _manifest_files(ckpt)
        present = {p.relative_to(ckpt).as_posix(): p for p in ckpt.rglob("*") if not p.is_dir() or p.is_symlink()}
        present.pop(MANIFEST)
        for name, path in sorted(present.items()):
            if name not in files:
                raise CheckpointError(f"{path}: not in the manifest (an added file, or a trimmed manifest)")
            if path.is_symlink() or not path.is_file():
                raise CheckpointError(f"{path}: not a regular file")
        for name, meta in files.items():
            path = ckpt / name
            if name not in present:
                raise CheckpointError(f"{path}: missing")
            size = path.stat().st_size
            if size != meta["bytes"]:
                raise CheckpointError(f"{path}: truncated or altered ({size} bytes, the manifest says {meta['bytes']})")
            if _sha256(path) != meta["sha256"]:
                raise CheckpointError(f"{path}: checksum mismatch (corrupt)")
    except OSError as err:  # unreadable (permissions, I/O error): as bad as corrupt
        raise CheckpointError(f"{err.filename or ckpt}: cannot be read ({err.strerror or err})") from None


def _manifest_files(ckpt: Path) -> dict[str, dict]:
    """The manifest's `files`, each name a relative path inside the checkpoint with an integer size and a SHA-256."""
    manifest = ckpt / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(f"{ckpt}: no {MANIFEST} (not a checkpoint, or an incomplete one)")
    try:
        data = json.loads(manifest.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{manifest}: unreadable manifest (not UTF-8: byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{manifest}: unreadable manifest ({err})") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not files:
        raise CheckpointError(f"{manifest}: unreadable manifest (expected {{\"files\": {{name: {{bytes, sha256}}, ...}}}})")
    for name, meta in files.items():
        parts = Path(name).parts
        if not name or Path(name).is_absolute() or ".." in parts or name != Path(name).as_posix() or name == MANIFEST:
            raise CheckpointError(f"{manifest}: unreadable manifest (entry {name!r} is not a file inside the checkpoint)")
        if not (
            isinstance(meta, dict) and type(meta.get("bytes")) is int and meta["bytes"] >= 0
            and isinstance(meta.get("sha256"), str) and len(meta["sha256"]) == 64
        ):
            raise CheckpointError(f"{manifest}: unreadable manifest (entry {name!r}: expected {{bytes, sha256}}, got {meta!r:.60})")
    return files


def read_driver_state(ckpt: Path) -> dict:
    """The driver's state of a verified checkpoint; one that is no JSON object is a bad checkpoint."""
    path = ckpt / DRIVER_STATE
    try:
        state = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable ({type(err).__name__})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return state


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's committed checkpoints, oldest first by step number (not by name: step_100000000 comes after
    step_99999999); temporary directories and other names are not checkpoints."""
    root = run_dir / "checkpoints"
    found = [p for p in root.glob("step_*") if p.is_dir() and p.name[5:].isdigit()] if root.is_dir() else []
    return sorted(found, key=step_of)


def latest_good(run_dir: Path, warn=print) -> Path | None:
    """The newest checkpoint that verifies; bad ones are reported and skipped."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        try:
            verify(ckpt)
            read_driver_state(ckpt)
            return ckpt
        except CheckpointError as err:
            warn(f"skipping bad checkpoint: {err}")
    return None


def recipe_changes(ckpt: Path, current: dict) -> list[str]:
    """`key: saved -> current` for every recipe key a resumed run changes (its result then differs from an
    uninterrupted run's; changing trainer.steps, say, also reshapes the LR and temperature schedules)."""
    path = ckpt / RECIPE
    if not path.is_file():
        return []
    return _diff(yaml.safe_load(path.read_text()), current, "")


def _diff(saved, current, prefix: str) -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        return [
            change
            for key in sorted(set(saved) | set(current), key=str)
            if key != "base_dir"
            for change in _diff(saved.get(key), current.get(key), f"{prefix}{key}.")
        ]
    return [] if saved == current else [f"{prefix.rstrip('.')}: {saved!r} -> {current!r}"]


# -- which checkpoints stay --------------------------------------------------------------------------------------------


def is_better(value: float | None, best: float | None, mode: str) -> bool:
    """Whether `value` beats the best so far ("max" or "min"); a missing or NaN value never does.

    >>> is_better(0.5, 0.25, "max"), is_better(0.5, 0.25, "min"), is_better(0.5, None, "min")
    (True, False, True)
    """
    if value is None or math.isnan(value):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def prune(run_dir: Path, keep_last: int, keep: tuple[Path | None, ...] = ()) -> None:
    """Delete all but the newest `keep_last` checkpoints and those in `keep` (the one just saved, the best one):
    whatever else the directory holds, the checkpoint a run has just committed is never the one deleted."""
    kept = {p.resolve() for p in keep if p is not None}
    for ckpt in list_checkpoints(run_dir)[:-keep_last]:
        if ckpt.resolve() not in kept:
            shutil.rmtree(ckpt)


def discard_after(run_dir: Path, step: int, say=print) -> None:
    """Resuming at `step` abandons what came after it: later checkpoints (they belong to a future this run will
    rewrite, and auto-resume must not jump back into it) and unfinished temporary directories. Only the holder of
    the run directory's lock may: then no other live run is writing them."""
    from rlqa.rundir import holds_lock

    if not holds_lock(run_dir):
        raise RuntimeError(f"{run_dir}: discard_after without the run directory's lock")
    root = run_dir / "checkpoints"
    for tmp in root.glob(".tmp_step_*") if root.is_dir() else []:
        if tmp.is_dir() and tmp.name[10:].isdigit():  # what `begin` makes, nothing else
            shutil.rmtree(tmp, ignore_errors=True)
    for ckpt in list_checkpoints(run_dir):
        if step_of(ckpt) > step:
            say(f"removing {ckpt}: it comes after the checkpoint this run resumes from")
            shutil.rmtree(ckpt)


# -- RNG states as JSON ------------------------------------------------------------------------------------------------


def rng_state() -> dict:
    """Every global RNG of this process (Python, NumPy, torch CPU and CUDA) as plain JSON: no pickle, and nothing
    that breaks when torch's serialisation changes."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# -- export --------------------------------------------------------------------------------------------------------------


DTYPES = ("float32", "bfloat16", "float16")


def saved_dtype(ckpt: Path) -> str:
    """The recipe's `model.dtype` a verified checkpoint was saved with (a LoRA export loads its base in it). Read
    as data (safe_load), and only this key: nothing else in an untrusted checkpoint's recipe is obeyed."""
    path = ckpt / RECIPE
    if not path.is_file():
        return "float32"
    try:
        recipe = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError):
        raise CheckpointError(f"{path}: not a readable recipe (UTF-8 YAML)") from None
    model = recipe.get("model") if isinstance(recipe, dict) else None
    dtype = model.get("dtype", "float32") if isinstance(model, dict) else "float32"
    if dtype not in DTYPES:
        raise CheckpointError(f"{path}: model.dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return dtype


def check_export_target(ckpt: Path, out_dir: Path) -> None:
    """An export creates its directory: it never writes over files, nor into the checkpoint it reads (whose
    manifest would then fail, and whose hf/ files it would copy onto themselves)."""
    out, source = out_dir.resolve(), ckpt.resolve()
    if out == source or source in out.parents:
        raise CheckpointError(f"{out_dir}: inside the checkpoint {ckpt}; export to a directory outside it")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CheckpointError(f"{out_dir}: already exists and is not an empty directory")


def export_hf(
    ckpt: Path, out_dir: Path, trust_remote_code: bool = False, dtype: str = "float32", adapters: bool = False
) -> Path:
    """A Hugging Face model directory (weights, config, generation config, tokenizer) from a checkpoint's policy.

    A LoRA checkpoint (`model.lora`) exports the base with its adapters merged, or with `adapters` the adapters alone
    as peft writes them (`PeftModel.from_pretrained(base, out_dir)` loads them); its base weights are read from the
    model directory the run trained on, in `dtype` (the recipe's `model.dtype`). `trust_remote_code` is the
    caller's say (a command-line flag), never the checkpoint's: custom code under hf/ runs only with it. The
    directory is written under a temporary name and renamed into place: complete or absent."""
    verify(ckpt)
    check_export_target(ckpt, out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    scratch.chmod(0o755)  # mkdtemp's 0700 would outlive the rename
    try:
        _write_hf(ckpt, scratch, trust_remote_code, dtype, adapters)
        scratch.rename(out_dir)  # replaces an empty directory
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return out_dir


def _write_hf(ckpt: Path, out_dir: Path, trust_remote_code: bool, dtype: str, adapters: bool) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from rlqa.learner import lora

    hf = ckpt / HF_FILES
    if not (hf / "config.json").is_file():
        raise CheckpointError(f"{hf / 'config.json'}: missing (the checkpoint holds no model config to export with)")
    adapter_dir = ckpt / lora.ADAPTER_DIR
    if adapters and not adapter_dir.is_dir():
        raise CheckpointError(f"{ckpt}: holds full weights, not LoRA adapters (model.lora was off); export without --adapters")
    copy_model_files(hf, out_dir)  # tokenizer files and custom code; save_pretrained rewrites the config
    if adapters:
        for item in adapter_dir.iterdir():
            shutil.copyfile(item, out_dir / item.name)
        return
    weights = _lora_merged(adapter_dir, dtype, trust_remote_code) if adapter_dir.is_dir() else _load_weights(ckpt)
    try:
        config = AutoConfig.from_pretrained(hf, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code, dtype=next(iter(weights.values())).dtype)
    except ValueError as err:  # custom code without --trust-remote-code, or an architecture transformers lacks
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        hint = "; if you trust its code, export with --trust-remote-code" if "trust_remote_code" in str(err) else ""
        raise CheckpointError(f"{hf / 'config.json'}: transformers cannot build the model ({first_line[:200]}){hint}") from None
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # shapes that differ from the config's (an edited intermediate_size, say)
        mismatch = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err).splitlines()[0])
        raise CheckpointError(f"{ckpt}: its policy weights do not fit {hf / 'config.json'} ({mismatch[:300]})") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{ckpt}: its policy weights do not fit {hf / 'config.json'} "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    if (hf / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(hf)
    model.save_pretrained(out_dir)


def _load_weights(ckpt: Path) -> dict:
    from safetensors.torch import load_file

    from rlqa.learner.policy import POLICY_WEIGHTS

    return load_file(ckpt / POLICY_WEIGHTS)


def _lora_merged(adapter_dir: Path, dtype: str, trust_remote_code: bool) -> dict:
    """The base model with the adapters merged, as the run's rollout workers last held it."""
    from peft import PeftModel

    from rlqa.learner.lora import base_model_dir, merged_weights
    from rlqa.models import load_model

    base = base_model_dir(adapter_dir)
    if not (base / "config.json").is_file():
        raise CheckpointError(
            f"{adapter_dir}: its base model directory {base} is gone (a LoRA checkpoint holds only the adapters); "
            "export them with --adapters"
        )
    model = PeftModel.from_pretrained(load_model(base, dtype, trust_remote_code), str(adapter_dir))
    return merged_weights(model)
