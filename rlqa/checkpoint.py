"""Atomic, verified checkpoints.

A checkpoint is a directory `checkpoints/step_XXXXXXXX/` written under a temporary name and renamed into place once
complete, with `manifest.json` listing every file's size and SHA-256. Loading checks the manifest first, so a
truncated or corrupt checkpoint is refused by name, and auto-resume falls back to the one before it. Nothing here
unpickles: weights are safetensors, optimizer state loads with `torch.load(weights_only=True)`, the rest is JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

MANIFEST = "manifest.json"
DRIVER_STATE = "driver.json"


class CheckpointError(Exception):
    """A checkpoint that cannot be used (missing, truncated or corrupt)."""


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:08d}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def begin(run_dir: Path, step: int) -> Path:
    """A fresh temporary directory to write a checkpoint into."""
    tmp = run_dir / "checkpoints" / f".tmp_step_{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, final: Path, driver_state: dict) -> Path:
    """Write the driver state and the manifest, fsync, and rename the directory into place."""
    (tmp / DRIVER_STATE).write_text(json.dumps(driver_state, sort_keys=True))
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / MANIFEST).write_text(json.dumps({"files": files}, indent=1, sort_keys=True))
    for p in tmp.iterdir():
        with p.open("rb") as f:
            os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def verify(ckpt: Path) -> None:
    """Raise CheckpointError naming the first file that is missing, truncated or altered."""
    manifest = ckpt / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(f"{ckpt}: no {MANIFEST} (incomplete checkpoint)")
    try:
        files = json.loads(manifest.read_text())["files"]
    except (json.JSONDecodeError, KeyError) as err:
        raise CheckpointError(f"{manifest}: unreadable manifest ({err})") from None
    for name, meta in files.items():
        path = ckpt / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing")
        if path.stat().st_size != meta["bytes"]:
            raise CheckpointError(f"{path}: truncated ({path.stat().st_size} of {meta['bytes']} bytes)")
        if _sha256(path) != meta["sha256"]:
            raise CheckpointError(f"{path}: checksum mismatch")


def read_driver_state(ckpt: Path) -> dict:
    return json.loads((ckpt / DRIVER_STATE).read_text())


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    return sorted(root.glob("step_*")) if root.is_dir() else []


def latest_good(run_dir: Path, warn=print) -> Path | None:
    """The newest checkpoint that verifies; bad ones are reported and skipped."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        try:
            verify(ckpt)
            return ckpt
        except CheckpointError as err:
            warn(f"skipping bad checkpoint: {err}")
    return None


def prune(run_dir: Path, keep_last: int, keep: Path | None = None) -> None:
    """Delete all but the newest `keep_last` checkpoints (and `keep`, e.g. the best one)."""
    for ckpt in list_checkpoints(run_dir)[:-keep_last]:
        if keep is None or ckpt.resolve() != keep.resolve():
            shutil.rmtree(ckpt)
