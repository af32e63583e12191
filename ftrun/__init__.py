"""ftrun: Hydra-composed fine-tuning runs and Optuna sweeps, recorded in MLflow.

Importing this package is cheap on purpose: torch, transformers and peft are
imported inside the functions that need them, so ``--help`` and ``--cfg job``
stay fast.
"""

__version__ = "0.1.0"
