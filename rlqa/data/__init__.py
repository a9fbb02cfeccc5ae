"""Prompt datasets: JSONL, Parquet, verl-style chat Parquet and GSM8K files, loaded as `Example`s."""

from rlqa.data.example import Example
from rlqa.data.loaders import load_examples

__all__ = ["Example", "load_examples"]
