"""Prompt datasets: JSONL, Parquet, verl-style chat Parquet, GSM8K and Hugging Face `datasets` directories, loaded as
`Example`s."""

from rlqa.data.example import Example
from rlqa.data.loaders import load_examples

__all__ = ["Example", "load_examples"]
