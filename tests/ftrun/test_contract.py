"""The names processes share are spelled once (ftrun/contract.py), and so is config composing
(ftrun/compose.py): no other module of the package, the analysis commands or the benchmarks it
owns holds a copy."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

from ftrun import contract

# modules that read or write the shared names (sweeper/ is being rewritten on another branch: it
# imports its constants from ftrun.contract; bench/sweep_efficiency.py belongs to it)
SCANNED = [*sorted((ROOT / "ftrun").rglob("*.py")), *sorted((ROOT / "analysis").rglob("*.py")),
           ROOT / "bench" / "packing.py", ROOT / "bench" / "trainer_overhead.py",
           *sorted((ROOT / "hydra_plugins").rglob("*.py"))]
# names distinctive enough that a string equal to one is a copy (not "model" or "data")
DISTINCT = {v for k, v in vars(contract).items() if k.isupper() and isinstance(v, str)} - {
    "model", "data", "method", "stage", "overrides", "run_dir", "pruned", "storage", "objectives", "trial_dir",
    "study_name"}

# the same word with another meaning: (file, string, why)
NOT_COPIES = {("ftrun/export.py", "mlflow_run_id"): "a field of export_info.json, not the run's id file"}


def _strings(path: Path):
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_no_copy_of_a_shared_name():
    copies = [f"{p.relative_to(ROOT)}:{line}: {value!r}" for p in SCANNED if p.name != "contract.py"
              for line, value in _strings(p) if (value in DISTINCT or value.startswith("FTRUN_"))
              and (str(p.relative_to(ROOT)), value) not in NOT_COPIES]
    assert not copies, "import these from ftrun.contract:\n" + "\n".join(copies)


def test_no_copy_of_config_loading():
    copies = [f"{p.relative_to(ROOT)}" for p in [*SCANNED, *sorted((ROOT / "tests").rglob("*.py"))]
              if p.name not in ("compose.py", "test_contract.py", "test_compose.py")  # the last starts a Hydra app
              and any(s in p.read_text() for s in ("initialize_config_dir", "initialize_config_module"))]
    assert not copies, f"compose through ftrun.compose.compose: {copies}"


def test_the_scan_would_see_a_copy(tmp_path):
    f = tmp_path / "m.py"
    f.write_text('"""Writes result.json."""\nRESULT = "result.json"\n')
    assert [v for _, v in _strings(f)] == ["result.json"]  # the docstring is prose, the constant a copy
