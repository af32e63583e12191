"""The runtime's own resident memory on CPU: what a run's process holds besides its tensors (the
interpreter, torch, transformers, peft, datasets, MLflow and Hydra paged in, the data pipeline, the
allocator's slack), measured once per machine and method and cached under ``$FTRUN_CACHE/estimate``.

The measurement is a real run: ``python -m ftrun`` trains the built-in tiny model for two steps of
one short row with the method asked for (qlora loads bitsandbytes, the others do not) and evaluates,
with MLflow tracking or without, as the run estimated has it (MLflow's import and a new store: 121 MiB on
a 2-core EPYC); the baseline is that run's peak resident memory (``peak_memory_mb``) less the tensor
estimate of the same run (a few MiB). ``python -m ftrun.estimate estimate.refresh_baseline=true`` measures it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence, Tuple

from ftrun.contract import MEASURING_BASELINE_ENV as MEASURING_ENV  # its own estimate needs no baseline

log = logging.getLogger("ftrun.estimate")

MICRO_RUN = ["max_steps=2", "batch_size=1", "cutoff_len=32", "data=letters", "data.num_train=16", "data.num_eval=4",
             "train.eval_batch_size=1", "train.save_steps=0", "name=baseline"]
"""The measuring run's overrides, beside method=<the method> (everything else is the default run's)."""
METHOD_GROUPS = {"qlora": "qlora"}  # qlora imports bitsandbytes; the rest share lora's baseline
LIBRARIES = ("torch", "transformers", "peft", "datasets", "mlflow", "hydra", "bitsandbytes")


def method_key(method: str) -> str:
    """The method whose measured baseline stands for ``method`` (the ones that import the same libraries)."""
    return METHOD_GROUPS.get(str(method), "lora")


def cache_file(method: str, tracking: bool = True) -> Path:
    """Where the baseline of ``method`` (with MLflow ``tracking`` or without) on this machine, Python and library
    versions is kept."""
    from importlib.metadata import PackageNotFoundError, version

    from ftrun.contract import cache_root

    versions = []
    for lib in LIBRARIES:
        try:
            versions.append(f"{lib}={version(lib if lib != 'hydra' else 'hydra-core')}")
        except PackageNotFoundError:
            versions.append(f"{lib}=none")
    from ftrun.allocator import chosen, options
    from ftrun.unused_libraries import CANDIDATES

    key = "|".join([platform.node(), platform.machine(), cpu_model(), f"cpus={os.cpu_count()}", sys.version,
                    *versions, f"malloc={chosen()}", f"malloc_conf={options()}", f"may_hide={','.join(CANDIDATES)}"])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    name = method_key(method) + ("" if tracking else "-untracked")
    return cache_root() / "estimate" / f"baseline-{name}-{digest}.json"


def cpu_model() -> str:
    """The CPU's model name (hosts of a cloud are often all called the same; their CPUs and cores differ)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), platform.processor())
    except OSError:
        return platform.processor()


def runtime_baseline(method: str, measure: bool = True, tracking: bool = True) -> Tuple[int, str]:
    """(bytes, where the figure comes from) of a run's resident memory besides its tensors on CPU.

    Read from the cache; when absent, measured now in a subprocess (about 15 s) if ``measure``,
    else (0, why) so that a caller that must not wait can say so.
    """
    if os.environ.get(MEASURING_ENV):
        return 0, "not counted: this is the run that measures it"
    path = cache_file(method, tracking)
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            return int(data["baseline"]), f"measured {data['measured_at']} ({path.name})"
        except (OSError, ValueError, KeyError):
            log.warning("Unreadable baseline cache %s: measuring again", path)
    if not measure:
        return 0, "not measured yet on this machine (python -m ftrun.estimate measures it)"
    data = measure_baseline(method, tracking)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)  # whole or absent, also with processes measuring at once
    return int(data["baseline"]), f"measured {data['measured_at']} ({path.name})"


def measure_baseline(method: str, tracking: bool = True) -> dict:
    """Run the micro run of ``method`` (with MLflow ``tracking`` or without) in a fresh process and return its peak,
    tensors and baseline."""
    import time

    from ftrun.contract import RESULT_FILE

    method = method_key(method)
    log.info("Measuring the runtime's resident baseline on this machine for method=%s%s (once; about 15 s)", method,
             "" if tracking else " without MLflow")
    with tempfile.TemporaryDirectory(prefix="ftrun-baseline-") as tmp:
        overrides = [f"method={method}", *MICRO_RUN, f"output_root={tmp}/out",
                     f"tracking.uri=sqlite:///{tmp}/mlflow.db" if tracking else "tracking.enabled=false"]
        env = {**os.environ, MEASURING_ENV: "1", "CUDA_VISIBLE_DEVICES": ""}
        done = subprocess.run([sys.executable, "-m", "ftrun", *overrides], cwd=tmp, env=env,
                              capture_output=True, text=True, timeout=600)
        results = sorted(Path(tmp, "out").glob(f"**/{RESULT_FILE}"))
        if done.returncode != 0 or not results:
            raise RuntimeError(f"the baseline run (python -m ftrun {' '.join(overrides)}) failed: "
                               f"{(done.stderr or done.stdout)[-1500:]}")
        result = json.loads(results[-1].read_text())
    peak = int(result["peak_memory_mb"] * 2**20)
    tensors = _micro_tensors(overrides)
    return {"baseline": peak - tensors, "peak": peak, "tensors": tensors, "method": method, "tracking": tracking,
            "overrides": overrides[:len(MICRO_RUN) + 1], "measured_at": time.strftime("%Y-%m-%d %H:%M"),
            "machine": platform.node(), "python": sys.version.split()[0]}


def _micro_tensors(overrides: Sequence[str]) -> int:
    from ftrun.compose import compose
    from ftrun.config import resolved
    from ftrun.estimate.tensors import tensor_estimate

    return tensor_estimate(resolved(compose(list(overrides))), device="cpu").tensor_peak
