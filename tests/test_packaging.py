"""ftrun installs like a package: a built wheel, installed into a fresh virtual environment, runs a
short job from an empty directory through its ``ftrun`` console script (the configs ship inside it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

# what the wheel is built from (tests, bench and examples are not part of the package)
SOURCES = ("pyproject.toml", "README.md", "ftrun", "sweeper", "analysis", "hydra_plugins")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _see_this_environment(python: Path) -> None:
    """Let a new venv import torch, transformers ... from the environment running the tests, and ftrun only from
    its wheel. ``venv --system-site-packages`` would not do it: it exposes the base interpreter's site-packages, not
    those of the venv the tests run in (as on a fresh machine set up the README's way). A ``.pth`` line adds a
    directory to sys.path *after* the venv's own site-packages, and the ``.pth`` files inside that directory (such
    as an editable install's finder for the source tree) are not run, so the wheel's ftrun is the one imported."""
    import site
    import sysconfig

    dirs = list(dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
                               *site.getsitepackages()]))
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True, timeout=120).stdout.strip()
    Path(own, "_ftrun_test_parent_env.pth").write_text("\n".join(d for d in dirs if Path(d).is_dir()) + "\n")


def test_wheel_installs_and_runs_from_an_empty_directory(tiny_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        f = ROOT / name
        if f.is_dir():
            shutil.copytree(f, src / name, ignore=shutil.ignore_patterns("__pycache__", "experiment"))
        else:
            shutil.copy2(f, src / name)
    # --no-build-isolation: setuptools comes from this environment, not a download
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, env=_env(), timeout=300)
    (wheel,) = (tmp_path / "dist").glob("ftrun-*.whl")
    import zipfile

    assert f"ftrun/assets/{tiny_dir.name}/model.safetensors" in zipfile.ZipFile(wheel).namelist()  # ships built
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True, timeout=300)
    bin_dir = tmp_path / "venv" / "bin"
    _see_this_environment(bin_dir / "python")
    subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                   check=True, env=_env(), timeout=300)

    work = tmp_path / "empty"
    work.mkdir()
    where = subprocess.run([str(bin_dir / "python"), "-c", "import ftrun; print(ftrun.__file__)"],
                           cwd=work, env=_env(), capture_output=True, text=True, timeout=120)
    assert where.stdout.startswith(str(tmp_path / "venv")), where.stdout + where.stderr  # not the source tree

    out = subprocess.run([str(bin_dir / "ftrun"), "max_steps=3", "data.num_train=32", "data.num_eval=8",
                          "batch_size=8", "train.eval_steps=0", "tracking.enabled=false", "name=wheel"],
                         cwd=work, env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    (run_dir,) = (work / "outputs" / "wheel").iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    assert result["global_step"] == 3 and result["objective_name"] == "eval_loss"

    # a mistake is a message and exit status 2 there too
    bad = subprocess.run([str(bin_dir / "ftrun"), "optimizer.lr=-5"], cwd=work, env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "lr=-5: lr must be > 0" in bad.stderr + bad.stdout
    assert "Traceback" not in bad.stderr
