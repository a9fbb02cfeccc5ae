"""Built-in tools a model can call during a rollout (issue 27)."""
