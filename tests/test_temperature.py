import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pydantic import ValidationError

from rlqa.config import TemperatureConfig
from rlqa.temperature import TemperatureController, annealed_target, next_temperature

# V = 100: ln V = 4.605170, ln ln V = ln 4.605170 = 1.527180, so the denominator is 6.132350.
DENOMINATOR_V100 = 6.132350


def controller(vocab_size=100, total_steps=100, **section) -> TemperatureController:
    """A controller for V = 100 over 100 steps; `section` holds the recipe's temperature keys (no anneal unless set)."""
    cfg = TemperatureConfig(**{"anneal_fraction": 0.0} | section)
    return TemperatureController(cfg, vocab_size=vocab_size, total_steps=total_steps)


def test_one_step_by_hand_rises_below_target():
    # T = 1, H* = 2, H = 1: T ← 1 · (1 + 1 · ln 2 / 6.132350) = 1 + 0.693147 / 6.132350 = 1.113031
    assert next_temperature(1.0, 2.0, 1.0, vocab_size=100) == pytest.approx(1 + math.log(2) / DENOMINATOR_V100)
    assert next_temperature(1.0, 2.0, 1.0, vocab_size=100) == pytest.approx(1.113031, abs=1e-6)


def test_one_step_by_hand_falls_above_target():
    # T = 1, H* = 1, H = 2: 1 · (1 - ln 2 / 6.132350) = 0.886969
    assert next_temperature(1.0, 1.0, 2.0, vocab_size=100) == pytest.approx(0.886969, abs=1e-6)


def test_the_step_grows_with_temperature_squared():
    # T = 1.5, H* = 2, H = 1: 1.5 · (1 + 1.5 · 0.113031) = 1.5 · 1.169547 = 1.754320
    assert next_temperature(1.5, 2.0, 1.0, vocab_size=100) == pytest.approx(1.754320, abs=1e-6)


def test_controller_applies_the_rule_with_a_configured_target():
    temperature = controller(target=2.0)
    assert temperature.update(entropy=1.0, step=1) == pytest.approx(1.113031, abs=1e-6)
    assert temperature.temperature == pytest.approx(1.113031, abs=1e-6)
    # At the target, T stays: ln(H*/H) = 0.
    assert temperature.update(entropy=2.0, step=2) == pytest.approx(1.113031, abs=1e-6)


def test_clipped_to_bounds():
    temperature = controller(target=10.0, t_min=0.5, t_max=1.05)
    assert temperature.update(entropy=0.01, step=1) == 1.05
    temperature = controller(target=0.01, t_min=0.8, t_max=2.0)
    # 1 · (1 + ln(0.01 / 10) / 6.13) = 1 - 6.908 / 6.132 < 0 → t_min
    assert temperature.update(entropy=10.0, step=1) == 0.8


@settings(max_examples=200, deadline=None)
@given(
    st.floats(0.2, 1.0),
    st.floats(1.0, 3.0),
    st.floats(0.05, 8.0),
    st.lists(st.floats(1e-4, 20.0), min_size=1, max_size=40),
    st.integers(2, 200_000),
)
def test_never_leaves_bounds(t_min, t_max, target, entropies, vocab_size):
    cfg = TemperatureConfig(initial=1.0, target=target, t_min=t_min, t_max=t_max)
    temperature = TemperatureController(cfg, vocab_size=vocab_size, total_steps=40)
    for step, entropy in enumerate(entropies, start=1):
        assert t_min <= temperature.update(entropy, step) <= t_max


def test_fixed_mode_never_moves_but_keeps_the_books():
    temperature = controller(mode="fixed", initial=0.7)
    for step, entropy in enumerate([3.0, 0.1, 5.0, 0.01], start=1):
        assert temperature.update(entropy, step) == 0.7
    assert temperature.target == 3.0  # measured on the first update, reported for comparison
    assert temperature.metrics() == {"policy/target_entropy": 3.0}


def test_target_measured_over_warmup_while_temperature_holds():
    temperature = controller(warmup_updates=3)
    assert temperature.target is None
    assert temperature.update(1.0, step=1) == 1.0
    assert temperature.update(2.0, step=2) == 1.0  # far off any target, yet T holds while measuring
    assert temperature.target is None
    assert temperature.metrics() == {}  # no target to report yet
    assert temperature.update(3.0, step=3) == 1.0
    assert temperature.target == 2.0  # (1 + 2 + 3) / 3
    # Now the rule: H* = 2, H = 1 → 1.113031
    assert temperature.update(1.0, step=4) == pytest.approx(1.113031, abs=1e-6)


def test_annealing_values_across_the_window():
    # total 100, last 40% anneals: the window is steps 60 … 100
    assert annealed_target(2.0, step=10, total_steps=100, anneal_fraction=0.4) == 2.0
    assert annealed_target(2.0, step=60, total_steps=100, anneal_fraction=0.4) == pytest.approx(2.0)
    # progress 0.25: 0.9 + 0.05 · (1 + cos(π/4)) = 0.9 + 0.05 · 1.707107 = 0.985355
    assert annealed_target(2.0, step=70, total_steps=100, anneal_fraction=0.4) == pytest.approx(2 * 0.985355)
    # progress 0.5: 0.9 + 0.05 · (1 + 0) = 0.95
    assert annealed_target(2.0, step=80, total_steps=100, anneal_fraction=0.4) == pytest.approx(1.9)
    # progress 1: 0.9 + 0.05 · (1 - 1) = 0.9
    assert annealed_target(2.0, step=100, total_steps=100, anneal_fraction=0.4) == pytest.approx(1.8)
    assert annealed_target(2.0, step=100, total_steps=100, anneal_fraction=0.0) == 2.0


def test_controller_uses_the_annealed_target():
    temperature = controller(target=2.0, anneal_fraction=0.4)
    temperature.update(2.0, step=80)
    # H* = 1.9 at step 80, H = 2 > H*: T = 1 + ln(1.9 / 2) / 6.132350 = 1 - 0.051293 / 6.132350 = 0.991636
    assert temperature.target == pytest.approx(1.9)
    assert temperature.temperature == pytest.approx(0.991636, abs=1e-6)
    assert temperature.metrics()["policy/target_entropy"] == pytest.approx(1.9)


@pytest.mark.parametrize("save_after", [1, 2, 5])  # mid warm-up, just after it, well into the run
def test_state_round_trip(save_after):
    options = {"warmup_updates": 2, "anneal_fraction": 0.4, "total_steps": 10}
    entropies = [1.5, 1.3, 1.0, 0.8, 1.9, 2.5, 0.7, 1.1, 1.2, 1.4]
    original = controller(**options)
    for step in range(1, save_after + 1):
        original.update(entropies[step - 1], step)
    resumed = controller(**options)
    resumed.load_state_dict(json.loads(json.dumps(original.state_dict())))
    assert resumed.metrics() == original.metrics()
    for step in range(save_after + 1, 11):
        assert resumed.update(entropies[step - 1], step) == original.update(entropies[step - 1], step)
    assert resumed.temperature != 1.0  # the run did move T, so the comparison above meant something


@pytest.mark.parametrize("entropy", [0.0, -1.0, math.nan, math.inf])
def test_rejects_entropy_that_was_not_measured(entropy):
    with pytest.raises(ValueError, match="measure the policy entropy"):
        controller(target=1.0).update(entropy, step=1)


def test_rejects_bad_config():
    with pytest.raises(ValidationError, match="need t_min <= initial <= t_max"):  # the schema's rule
        controller(initial=3.0)  # above t_max = 2
    with pytest.raises(ValidationError):
        controller(target=0.0)
    with pytest.raises(ValueError):
        controller(vocab_size=1)


@pytest.mark.parametrize("use_cache", [True, False])  # False: as TRL's SFTTrainer saves a warm-up's config
def test_the_drivers_vocabulary_size_is_the_width_of_the_logits_not_the_tokenizer(tmp_path, use_cache):
    # Qwen2.5 pads its output layer past its tokenizer (151,936 logits, 151,665 tokens); here the character tokenizer
    # has 99 tokens and the model 126 logits. V = 126: ln 126 = 4.836282, ln ln 126 = 1.576097, so one update at
    # T = 1 with H* = 2, H = 1 gives T = 1 + ln 2 / 6.412379 = 1.108094 (V = 99 would give 1.113257).
    import torch

    from rlqa.config import TinyModelConfig
    from rlqa.recipe_files import validate_recipe
    from rlqa.models import build_char_tokenizer, build_tiny_model
    from rlqa.trainer import build_driver

    tokenizer = build_char_tokenizer()
    assert len(tokenizer) == 99
    model = build_tiny_model(TinyModelConfig(hidden_size=16, layers=1, heads=2, intermediate_size=32), 126, seed=0)
    assert model(input_ids=torch.tensor([[5, 6]])).logits.shape[-1] == 126  # what the entropy is taken over
    model.config.use_cache = use_cache
    model.save_pretrained(tmp_path / "wide")
    tokenizer.save_pretrained(tmp_path / "wide")
    raw = {
        "model": {"path": str(tmp_path / "wide")},
        "data": {"train": {"task": "arithmetic", "size": 4}, "test": {"task": "arithmetic", "split": "test", "size": 2}},
        "rollout": {"prompts_per_step": 2, "rollouts_per_prompt": 2},
        "temperature": {"target": 2.0, "anneal_fraction": 0.0},
    }
    driver = build_driver(validate_recipe(raw, source="test", base_dir=tmp_path), tmp_path / "run")
    assert driver.temperature.update(1.0, step=1) == pytest.approx(1.108094, abs=1e-6)
