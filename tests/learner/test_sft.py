"""The SFT warm-up on the built-in tiny model: what it prints while it trains."""

import re

from transformers import AutoModelForCausalLM

from rlqa.config import ModelConfig, SFTConfig, TinyModelConfig
from rlqa.learner.sft import ProgressLine, clock, run_sft
from rlqa.models import create_model_dir, load_tokenizer

TINY = TinyModelConfig(hidden_size=16, layers=1, heads=2, intermediate_size=32, max_positions=64)
LINE = re.compile(r"^SFT step (\d+)/(\d+)  loss \d+\.\d{4}  lr \d\.\d\de[-+]\d\d  \d+:\d\d elapsed  ETA \d+:\d\d$")


def test_clock():
    assert [clock(s) for s in (0, 65.9, 3599, 3665)] == ["0:00", "1:05", "59:59", "1:01:05"]


def test_sft_prints_a_progress_line_and_no_raw_dict(tmp_path, capfd):
    model_dir = create_model_dir(ModelConfig(tiny=TINY), tmp_path / "model", seed=0)
    tokenizer = load_tokenizer(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    pairs = [(f"{a} + {b} = ", f"{a + b}") for a in range(4) for b in range(4)]  # 16 examples
    cfg = SFTConfig(max_steps=6, batch_size=4, lr=1e-3)
    summary = run_sft(model, tokenizer, pairs, cfg, seed=0, out_dir=str(tmp_path / "out"))
    out, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("SFT step")]
    # 6 steps: every ⌈6 · 5%⌉ = 1 step, so one line per step, the last at 6/6
    assert [LINE.match(line).groups() for line in lines] == [(str(k), "6") for k in range(1, 7)]
    assert lines[-1].endswith("ETA 0:00")
    assert "{'loss'" not in out + err and "{'train_runtime'" not in out + err
    assert summary["sft/steps"] == 6


def test_progress_line_every_five_percent_and_at_the_last_step():
    from transformers import TrainerControl, TrainerState

    callback = ProgressLine(fraction=0.05, max_interval_s=3600)
    state = TrainerState(max_steps=50)
    callback.on_train_begin(None, state, TrainerControl())
    due = []
    for step in range(1, 51):
        state.global_step = step
        if callback.on_step_end(None, state, TrainerControl()).should_log:
            due.append(step)
    # ⌈50 · 0.05⌉ = 3: steps 3, 6, ..., 48, then the last one, 50
    assert due == list(range(3, 49, 3)) + [50]
