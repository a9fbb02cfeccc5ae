"""SFT warm-up with TRL's SFTTrainer: loss on the completion (the worked solution) only, EOS appended.

Progress is one line every 5% of the steps (or every minute, whichever comes first), like the RL phase's per-step
line, in place of the dict of logs the Trainer prints.
"""

from __future__ import annotations

import logging
import math
import sys
import time

import torch
from datasets import Dataset, disable_progress_bars
from transformers import PrinterCallback, TrainerCallback
from rlqa.config import SFTConfig


def clock(seconds: float) -> str:
    """1:05 for 65 s, 1:01:05 past the hour."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressLine(TrainerCallback):
    """`SFT step 40/800  loss 1.2345  lr 9.50e-04  0:12 elapsed  ETA 3:48` on stderr, at every `fraction` of the steps,
    after `max_interval_s` without a line, and at the last step. The loss is the mean over the steps since the last
    line (the Trainer's own logging interval, which this callback sets); ETA = elapsed / steps done × steps left."""

    def __init__(self, fraction: float = 0.05, max_interval_s: float = 60.0):
        self.fraction = fraction
        self.max_interval_s = max_interval_s

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = self.last_line = time.perf_counter()
        self.every = max(1, math.ceil(state.max_steps * self.fraction))

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        overdue = time.perf_counter() - self.last_line >= self.max_interval_s
        if step % self.every == 0 or step >= state.max_steps or overdue:
            control.should_log = True  # the Trainer then computes the loss since its last log and calls on_log
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:  # the end-of-training summary: the caller reports it
            return
        now = time.perf_counter()
        self.last_line = now
        step, total = state.global_step, state.max_steps
        elapsed = now - self.started
        eta = elapsed / step * (total - step)  # step ≥ 1: the Trainer logs only after a step
        line = f"SFT step {step}/{total}  loss {logs['loss']:.4f}"
        if "learning_rate" in logs:
            line += f"  lr {logs['learning_rate']:.2e}"
        line += f"  {clock(elapsed)} elapsed  ETA {clock(eta)}"
        print(line, file=sys.stderr, flush=True)


def import_trl():
    """TRL's SFTConfig and SFTTrainer, with wandb hidden while TRL imports: TRL imports wandb whenever it is
    installed, and wandb's import makes temporary directories (/tmp/tmp*wandb-media, -artifacts) that a process killed
    rather than exited leaves behind. The warm-up reports to no tracker. (A None entry in sys.modules reads as "not
    installed" to importlib.util.find_spec, which is how TRL and accelerate ask.)"""
    hidden = "wandb" not in sys.modules
    if hidden:
        sys.modules["wandb"] = None
    try:
        from trl import SFTConfig, SFTTrainer
    finally:
        if hidden:
            del sys.modules["wandb"]
    return SFTConfig, SFTTrainer


def run_sft(model, tokenizer, pairs: list[tuple[str, str]], cfg: SFTConfig, seed: int, out_dir: str) -> dict:
    """Train `model` in place on (prompt, completion) pairs; returns the final loss and the wall time."""
    logging.getLogger("transformers").setLevel(logging.ERROR)
    disable_progress_bars()  # dataset preparation bars
    dataset = Dataset.from_list([{"prompt": p, "completion": c} for p, c in pairs])
    TRLSFTConfig, SFTTrainer = import_trl()
    args = TRLSFTConfig(
        output_dir=out_dir,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.schedule,
        warmup_steps=cfg.warmup_ratio,
        completion_only_loss=True,
        max_length=None,
        seed=seed,
        data_seed=seed,
        save_strategy="no",
        report_to=[],
        logging_strategy="no",  # ProgressLine asks for the logs it prints
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        # TRL defaults to bf16 autocast and activation checkpointing; on CPU autocast made a step 30x slower
        # (8 s vs 0.25 s for the tiny model), and a model this small needs no memory saving.
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        gradient_checkpointing=False,
        dataloader_num_workers=0,
    )
    padding_side = tokenizer.padding_side
    start = time.perf_counter()
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[ProgressLine()]
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log as a raw dict
    result = trainer.train()
    tokenizer.padding_side = padding_side  # generation pads on the left
    model.eval()
    return {"sft/loss": float(result.training_loss), "sft/steps": result.global_step, "time/sft": time.perf_counter() - start}
