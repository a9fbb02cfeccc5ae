"""The example in every built-in reward's docstring runs and gives what it shows (pytest does not collect doctests)."""

import doctest
import importlib

import pytest


@pytest.mark.parametrize("module", ["rewards.math", "rewards.length", "rewards.format", "rewards.answers", "rewards.text"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0 and result.attempted > 0
