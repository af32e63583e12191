"""ftrun's Optuna sweeper: ``python -m ftrun -m sweep=lora_search``.

- :mod:`sweeper.space`  Hydra-Optuna-sweeper syntax -> Optuna distributions, conditions, grids
- :mod:`sweeper.study`  sampler, pruner, storage and directions from the config
- :mod:`sweeper.slots`  concurrent trial slots: devices, CPU cores, launch commands
- :mod:`sweeper.sweep`  the ask-and-tell loop, resume, failures, MLflow parent run, summary
- :mod:`sweeper.trial`  the trial process's side: report evaluations, obey the pruner
- :mod:`sweeper.config` the ``hydra.sweeper`` schema

The Hydra plugin class is in ``hydra_plugins/ftrun_sweeper``. Importing this
package is cheap: optuna, mlflow and torch are imported where they are used.
"""
