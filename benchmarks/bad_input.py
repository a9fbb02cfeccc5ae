"""Bad input through the real command line: each case builds what it needs in a fresh temporary directory, runs
`python -m rlqa.cli ...` in its own process, and the table says the exit status and what was printed (the one
line on stderr, or the last line on stdout when the command succeeds). Issue 28, items 1-5 and 10.

    python benchmarks/bad_input.py            # all cases, a markdown table on stdout
    python benchmarks/bad_input.py lock gguf  # the cases whose name contains one of the words

More cases: append a `Case(name, setup)` to CASES. `setup(tmp, stack)` builds the files under `tmp` and returns the
CLI arguments (after `rlqa`), with `{tmp}` standing for the directory; anything to stop afterwards (a process)
goes on the ExitStack `stack`. `note(tmp)`, if given, adds what the exit status alone does not show.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rlqa import checkpoint  # noqa: E402

RECIPE = "trainer: {steps: 2}\n"


@dataclass
class Case:
    name: str
    setup: Callable[[Path, contextlib.ExitStack], list[str]]
    note: Callable[[Path], str] | None = None


# -- what the cases build ------------------------------------------------------------------------------------------


def recipe(tmp: Path, text: str | bytes = RECIPE) -> Path:
    path = tmp / "r.yaml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def fake_checkpoint(run: Path, step: int) -> Path:
    tmp = checkpoint.begin(run, step)
    (tmp / "policy.safetensors").write_bytes(b"weights")
    return checkpoint.commit(tmp, checkpoint.step_dir(run, step), {"step": step})


def tiny_checkpoint(tmp: Path, config: dict | None = None, recipe_text: str = RECIPE, extra: dict | None = None) -> Path:
    """A real checkpoint of a tiny Llama (weights, hf/ config and tokenizer, recipe), as a run saves it."""
    from safetensors.torch import save_file

    from rlqa.config import TinyModelConfig
    from rlqa.models import build_char_tokenizer, build_tiny_model

    tokenizer = build_char_tokenizer()
    model = build_tiny_model(TinyModelConfig(hidden_size=16, layers=1, heads=2, intermediate_size=32, max_positions=32), len(tokenizer), 0)
    save = checkpoint.begin(tmp / "run", 1)
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, save / "policy.safetensors")
    hf = save / checkpoint.HF_FILES
    model.config.save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    if config:
        (hf / "config.json").write_text(json.dumps(json.loads((hf / "config.json").read_text()) | config))
    for name, text in (extra or {}).items():
        (save / name).write_text(text)
    (save / checkpoint.RECIPE).write_text(recipe_text)
    return checkpoint.commit(save, checkpoint.step_dir(tmp / "run", 1), {"step": 1})


def with_manifest(content: bytes):
    def setup(tmp, stack):
        ckpt = fake_checkpoint(tmp / "run", 1)
        (ckpt / checkpoint.MANIFEST).write_bytes(content)
        return ["export", str(ckpt), str(tmp / "out")]

    return setup


HOLD_LOCK = """
import sys, time
from pathlib import Path
from rlqa import rundir
with rundir.locked(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


def locked_run(tmp, stack):
    run = tmp / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    stack.callback(holder.wait)
    stack.callback(holder.kill)
    assert holder.stdout.readline() == "held\n"
    return ["train", str(recipe(tmp)), "--run-dir", str(run), "--resume"]


def non_empty_run(tmp, stack):
    (tmp / "run").mkdir()
    (tmp / "run" / "metrics.jsonl").write_text('{"step": 0}\n')
    fake_checkpoint(tmp / "run", 3)
    return ["train", str(recipe(tmp)), "--run-dir", str(tmp / "run")]


def trimmed_manifest(tmp, stack):
    ckpt = tiny_checkpoint(tmp)
    (ckpt / "policy.safetensors").write_bytes(b"corrupt")
    manifest = json.loads((ckpt / checkpoint.MANIFEST).read_text())
    del manifest["files"]["policy.safetensors"]
    (ckpt / checkpoint.MANIFEST).write_text(json.dumps(manifest))
    return ["export", str(ckpt), str(tmp / "out")]


def torn_final(tmp, stack):
    run = tmp / "run"
    (run / "final").mkdir(parents=True)
    (run / "recipe.yaml").write_text(RECIPE)
    (run / "final" / "config.json").write_text("{")  # from before final/ had a manifest, or torn
    return ["eval", str(run)]


def corrupt_checkpoint_eval(tmp, stack):
    ckpt = tiny_checkpoint(tmp)
    with (ckpt / "policy.safetensors").open("r+b") as f:
        f.truncate(100)
    return ["eval", str(ckpt)]


def metrics_not_utf8(tmp, stack):
    (tmp / "run").mkdir()
    (tmp / "run" / "metrics.jsonl").write_bytes(b'{"step": 0}\n{"step": 1, "x": "\x80"}\n')
    return ["report", str(tmp / "run")]


def truncated_gguf(tmp, stack):
    (tmp / "cut.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 1) + b"\x05\x00")
    return ["import-gguf", str(tmp / "cut.gguf"), str(tmp / "out")]


def export_to(target: Callable[[Path, Path], Path], **checkpoint_args):
    def setup(tmp, stack):
        ckpt = tiny_checkpoint(tmp, **checkpoint_args)
        return ["export", str(ckpt), str(target(tmp, ckpt))]

    return setup


def existing_file(tmp, ckpt):
    (tmp / "taken.txt").write_text("keep me")
    return tmp / "taken.txt"


def non_empty_dir(tmp, ckpt):
    (tmp / "full").mkdir()
    (tmp / "full" / "config.json").write_text("mine")
    return tmp / "full"


CUSTOM_CODE = """
from pathlib import Path
Path({marker!r}).write_text("yes")
from transformers import LlamaConfig

class CustomConfig(LlamaConfig):
    model_type = "llama"
"""


def untrusted(tmp, stack):
    ckpt = tiny_checkpoint(
        tmp, config={"auto_map": {"AutoConfig": "configuration_custom.CustomConfig"}},
        recipe_text="model: {trust_remote_code: true}\n",
        extra={"hf/configuration_custom.py": CUSTOM_CODE.format(marker=str(tmp / "custom_code_ran"))},
    )
    return ["export", str(ckpt), str(tmp / "out")]


def custom_code_ran(tmp):
    return "custom code ran: " + ("yes" if (tmp / "custom_code_ran").exists() else "no")


CASES = [
    # 1. a run directory holds one run
    Case("1 fresh run into a non-empty --run-dir", non_empty_run),
    Case("1 --run-dir is a file", lambda tmp, s: (tmp / "f").write_text("x") and ["train", str(recipe(tmp)), "--run-dir", str(tmp / "f")]),
    # 2. the lock
    Case("2 second run on a locked run directory", locked_run),
    # 3./4. checkpoints and final/
    Case("3 eval of a checkpoint with a truncated policy", corrupt_checkpoint_eval),
    Case("4 export: trimmed manifest hides a corrupt policy", trimmed_manifest),
    Case("4 export: manifest {}", with_manifest(b"{}")),
    Case("4 export: manifest 5", with_manifest(b"5")),
    Case('4 export: manifest {"files": []}', with_manifest(b'{"files": []}')),
    Case("4 export: manifest entry not an object", with_manifest(b'{"files": {"driver.json": 5}}')),
    Case("4 export: manifest entry outside the checkpoint", with_manifest(b'{"files": {"../x": {"bytes": 1, "sha256": "' + b"0" * 64 + b'"}}}')),
    Case("4 --resume-from: manifest not JSON", lambda tmp, s: (with_manifest(b'{"files": ')(tmp, s), ["train", str(recipe(tmp)), "--resume-from", str(checkpoint.step_dir(tmp / "run", 1))])[1]),
    Case("4 eval of a run whose final/ is torn, no checkpoint", torn_final),
    # 5. one line where a traceback was
    Case("5 check: recipe not UTF-8", lambda tmp, s: ["check", str(recipe(tmp, b"trainer: {steps: 2}\n# caf\xe9\n"))]),
    Case("5 export: manifest not UTF-8", with_manifest(b'{"files": "\xff"}')),
    Case("5 report: metrics.jsonl not UTF-8", metrics_not_utf8),
    Case("5 import-gguf: truncated GGUF file", truncated_gguf),
    Case("5 export to an existing file", export_to(existing_file)),
    Case("5 export into the checkpoint's own hf/", export_to(lambda tmp, ckpt: ckpt / checkpoint.HF_FILES)),
    Case("5 export into a non-empty directory", export_to(non_empty_dir)),
    Case("5 export with intermediate_size 48 against 32", export_to(lambda tmp, ckpt: tmp / "out", config={"intermediate_size": 48})),
    # 10. a checkpoint's code never runs on its own say-so
    Case("10 export: hf/ custom code, recipe trust_remote_code: true", untrusted, note=custom_code_ran),
]


def run_case(case: Case) -> tuple[int, str]:
    with tempfile.TemporaryDirectory(prefix="rlqa-bad-input-") as scratch, contextlib.ExitStack() as stack:
        tmp = Path(scratch)
        args = case.setup(tmp, stack)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        done = subprocess.run([sys.executable, "-m", "rlqa.cli", *args], capture_output=True, text=True, cwd=ROOT, env=env)
        err = [line for line in done.stderr.splitlines() if line.strip()]
        out = [line for line in done.stdout.splitlines() if line.strip()]
        shown = (err if done.returncode else out or err) or [""]
        line = shown[-1] if done.returncode == 0 or len(err) == 1 else f"({len(err)} lines on stderr) {err[-1]}"
        if case.note:
            line += f" ({case.note(tmp)})"
        return done.returncode, line.replace(scratch, "{tmp}").replace("|", "\\|")


def main(words: list[str]) -> None:
    print("| case | exit | printed |\n|---|---|---|")
    for case in CASES:
        if words and not any(w in case.name for w in words):
            continue
        status, line = run_case(case)
        print(f"| {case.name} | {status} | `{line}` |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
