"""rlqa: reinforcement-learning post-training for reasoning LLMs."""

__version__ = "0.1.0"
