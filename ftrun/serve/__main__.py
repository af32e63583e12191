"""``python -m ftrun.serve run=RUN_OR_EXPORT_DIR [port=8000] [name=ID] [gen.temperature=0.7]``

An OpenAI-compatible HTTP server for a fine-tuned model, on 127.0.0.1 only:

- ``run=`` is a run directory (base + adapter, as trained), an MLflow run id, or
  a model directory such as an export (``model=`` says the latter explicitly);
  loading is ftrun.saved_runs', as for chat and predict;
- ``GET /v1/models`` lists the one model (its id is ``name=``, default the
  run's name or the directory's);
- ``POST /v1/chat/completions`` answers ``messages`` with the model's chat
  template, as ``ftrun.chat`` does (the conversation must end with a user
  message); ``max_tokens`` (or ``max_completion_tokens``), ``temperature``
  (0 = greedy), ``top_p``, ``stop`` (up to 4 strings, not included in the
  answer), ``seed``, ``stream`` (server-sent events, ending with
  ``data: [DONE]``; ``stream_options.include_usage`` adds a usage chunk);
- a request without ``temperature``/``top_p``/``max_tokens`` gets the server's
  ``gen.*`` settings (greedy by default, unlike OpenAI's temperature 1);
- a malformed request gets a 400 (404 for an unknown model) with an
  OpenAI-style ``{"error": {"message", "type", "param"}}`` body; the server
  keeps serving.

Requests are answered one at a time (one model, one generate at a time);
concurrent requests wait their turn. FastAPI + uvicorn::

    python -m ftrun.serve run=outputs/lora-letters-lr1e-3-r16/2026-01-01_12-00-00 port=8000
    curl -s localhost:8000/v1/chat/completions -H 'content-type: application/json' \\
         -d '{"model": "lora-letters-lr1e-3-r16", "messages": [{"role": "user", "content": "hi"}]}'
"""

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ftrun.config import ConfigError
from ftrun.saved_runs import LoadArgs
from ftrun.serve.generation import ServeGen

log = logging.getLogger("ftrun.serve")

HOST = "127.0.0.1"  # never another interface: the server has no authentication


@dataclass
class ServeArgs(LoadArgs):
    run: Optional[str] = None
    """A run directory or MLflow run id (base + adapter), or a model directory such as an export."""
    port: int = 8000
    """Port on 127.0.0.1."""
    name: Optional[str] = None
    """The model id clients send and /v1/models lists (default: the run's name or the directory's)."""
    gen: ServeGen = field(default_factory=ServeGen)
    log_level: str = "info"
    """uvicorn's log level: warning, info, debug."""


# ---------------------------------------------------------------------------
# what is served


def resolve_source(run: Optional[str], model: Optional[str]) -> dict:
    """``run=`` a run, or a model directory (an export) given as run= or model=: the arguments for saved_runs.load."""
    if (run is None) == (model is None):
        raise ConfigError("give run=RUN_DIR_OR_EXPORT_DIR (or an MLflow run id), or model=MODEL_DIR")
    if model is not None:
        return {"model": model}
    p = Path(run).expanduser()
    if p.is_dir() and not (p / "model").is_dir() and p.name != "model" and (
            (p / "config.json").is_file() or (p / "adapter_config.json").is_file()):
        return {"model": run}  # an export or any model directory
    return {"run": run}


def default_name(loaded, source: dict) -> str:
    if loaded.run is not None:
        return str(loaded.run.cfg.get("name") or loaded.run.run_dir.parent.name)
    return Path(source["model"]).expanduser().resolve().name


# ---------------------------------------------------------------------------
# command line


def main(argv=None) -> None:
    import uvicorn

    from ftrun import cli, saved_runs
    from ftrun.serve.app import create_app

    args = cli.parse(ServeArgs, argv, __doc__, positional="run")
    if not 0 < args.port < 65536:
        raise ConfigError(f"port={args.port}: give a port between 1 and 65535")
    source = resolve_source(args.run, args.model)
    saved_runs.quiet()
    loaded = saved_runs.load(**source, dtype=args.dtype, device=args.device, tracking_uri=args.tracking_uri)
    model_id = args.name or default_name(loaded, source)
    for note in loaded.notes:
        log.info("%s", note)
    log.info("Serving %s as '%s' on http://%s:%d/v1", loaded.source, model_id, HOST, args.port)
    app = create_app(loaded, model_id, args.gen)
    try:
        uvicorn.run(app, host=HOST, port=args.port, log_level=args.log_level)
    except SystemExit as e:  # uvicorn exits 1 when it cannot bind
        if e.code:
            raise ConfigError(f"port={args.port}: cannot listen on {HOST}:{args.port} (in use?); "
                              "pick another with port=N") from None


if __name__ == "__main__":
    from ftrun.cli import main_guard

    sys.exit(main_guard(main))
