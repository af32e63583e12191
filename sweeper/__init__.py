"""ftrun's Optuna sweeper: ``python -m ftrun -m sweep=lora_search``.

- :mod:`sweeper.sweep`        the ask-and-tell loop: launch trials into slots, record how they ended
- :mod:`sweeper.config`       the ``hydra.sweeper`` schema; :mod:`sweeper.settings` reads and checks it once
- :mod:`sweeper.space`        Hydra-Optuna-sweeper syntax -> Optuna distributions, conditions, grids
- :mod:`sweeper.auto`         ``sweep=auto``: a space from published priors
- :mod:`sweeper.study`        sampler, pruner, storage, directions; the study opened and its first trials queued
- :mod:`sweeper.halving`      successive halving from the first evaluation;
  :mod:`sweeper.promotion` pause and promote
- :mod:`sweeper.quota`        exactly n_trials counted trials, across hosts; repeats answered from the study
- :mod:`sweeper.stale_trials` heartbeats, trials left behind by a dead sweeper (all of Optuna's private API)
- :mod:`sweeper.outcome`      result.json, log tail and exit status -> the trial's state
- :mod:`sweeper.slots`        concurrent trial slots: devices, CPU cores, launch commands
- :mod:`sweeper.slot_memory`  whether a configuration fits its slot's memory (nvidia-smi), before launch
- :mod:`sweeper.worker`       a warm worker process; :mod:`sweeper.worker_pool` one per slot;
  :mod:`sweeper.trial_env` what a trial in it gets in place of a fresh process
- :mod:`sweeper.pack`         packed trials (``hydra.sweeper.pack``); :mod:`sweeper.pack_process` the worker's side
- :mod:`sweeper.budget`       trial-second and wall-clock budgets; :mod:`sweeper.signals` SIGTERM / Ctrl-C
- :mod:`sweeper.compute`      the study's compute account (summary, HTML report and board read it)
- :mod:`sweeper.summary`      summary.md / summary.json; :mod:`sweeper.parent` the MLflow parent run
- :mod:`sweeper.trial`        the trial process's side: report evaluations, obey the pruner

The Hydra plugin class is in ``hydra_plugins/ftrun_sweeper``. Importing this
package is cheap: optuna, mlflow and torch are imported where they are used.
"""
