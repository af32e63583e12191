"""Hydra plugin: the ftrun sweeper (``hydra/sweeper=ftrun``); the logic lives in ``sweeper/``."""
