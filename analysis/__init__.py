"""Analysis of ftrun runs and sweeps, from the same MLflow store and Optuna study.

``python -m analysis compare|curves|sweep|best ...``; see ``python -m analysis -h``.
"""
