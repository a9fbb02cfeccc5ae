"""Built-in procedurally generated tasks (the embedded default needs no downloads)."""
