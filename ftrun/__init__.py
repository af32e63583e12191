"""ftrun: Hydra-composed fine-tuning runs and Optuna sweeps, recorded in MLflow.

Importing this package is cheap on purpose: torch, transformers and peft are
imported inside the functions that need them, so ``--help`` and ``--cfg job``
stay fast.
"""

import logging

__version__ = "0.1.0"

# bitsandbytes (imported by peft, which transformers' trainer utilities import) tries to fetch an optional
# CPU kernel from the hub and warns when it cannot; its own fallback kernel is what runs, so the warning
# is noise. Set here because that import happens before a run's own setup.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
