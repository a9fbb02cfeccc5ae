"""SFT warm-up with TRL's SFTTrainer: loss on the completion (the worked solution) only, EOS appended."""

from __future__ import annotations

import logging
import time

import torch
from datasets import Dataset, disable_progress_bars
from trl import SFTConfig as TRLSFTConfig
from trl import SFTTrainer

from rlqa.config import SFTConfig


def run_sft(model, tokenizer, pairs: list[tuple[str, str]], cfg: SFTConfig, seed: int, out_dir: str) -> dict:
    """Train `model` in place on (prompt, completion) pairs; returns the final loss and the wall time."""
    logging.getLogger("transformers").setLevel(logging.ERROR)
    disable_progress_bars()  # dataset preparation bars; TRL's own loss lines remain as SFT progress
    dataset = Dataset.from_list([{"prompt": p, "completion": c} for p, c in pairs])
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
        logging_steps=50,
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
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    tokenizer.padding_side = padding_side  # generation pads on the left
    model.eval()
    return {"sft/loss": float(result.training_loss), "sft/steps": result.global_step, "time/sft": time.perf_counter() - start}
