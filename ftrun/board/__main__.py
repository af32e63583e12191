"""``python -m ftrun.board`` (or ``ftrun board``): serve the board on http://127.0.0.1:7860."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> None:
    from ftrun.board import __doc__ as about

    parser = argparse.ArgumentParser(prog="python -m ftrun.board", description=about.strip().splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: loopback only)")
    parser.add_argument("--port", type=_port, default=7860, help="1-65535 (default 7860)")
    parser.add_argument("--lang", choices=("en", "zh"), default="en", help="labels: English or Chinese")
    parser.add_argument("--mlflow-ui", default="http://127.0.0.1:5000",
                        help="where `mlflow ui` serves; links to runs point there")
    parser.add_argument("--output-root", type=_folder, default="outputs",
                        help="where runs are written (the config's output_root)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: as the runs use)")
    args = parser.parse_args(argv)
    from ftrun.board.app import Board, launch

    board = Board(lang=args.lang, mlflow_ui=args.mlflow_ui or None, output_root=Path(args.output_root),
                  tracking_uri=args.tracking_uri)
    launch(board, host=args.host, port=args.port)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: give a port between 1 and 65535")
    return int(text)


def _folder(text: str) -> str:
    if Path(text).expanduser().is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is a file; give the folder runs are written to")
    return text


if __name__ == "__main__":
    main()
