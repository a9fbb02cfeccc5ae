"""GPU checks: collected everywhere, skipped with a reason where there is no CUDA device (CPU-only CI)."""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; this machine has none")
    for item in items:
        if "tests/gpu/" in str(item.fspath):
            item.add_marker(skip)
