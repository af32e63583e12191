"""Run ``python -m <module> args...`` and say on stderr when it loads a model, a tokenizer or a dataset.

    python bench/_load_watch.py -m ftrun epochs=0

bench/bad_inputs.py runs every subprocess case through this: a line ``BAD-INPUT-LOAD: <what>`` means the
command loaded that before its message, which a bad input must not make it do. The loaders are wrapped when
their module is first imported, so a command that never imports transformers or datasets pays nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import runpy
import sys

_SEEN = set()


def _mark(what: str) -> None:
    if what not in _SEEN:
        _SEEN.add(what)
        print(f"BAD-INPUT-LOAD: {what}", file=sys.stderr, flush=True)


def _wrap_classmethod(cls, name: str, what: str) -> None:
    original = getattr(cls, name).__func__

    def wrapped(klass, *args, **kwargs):
        _mark(what)
        return original(klass, *args, **kwargs)

    setattr(cls, name, classmethod(wrapped))


def _wrap_function(module, name: str, what: str) -> None:
    original = getattr(module, name)

    def wrapped(*args, **kwargs):
        _mark(what)
        return original(*args, **kwargs)

    setattr(module, name, wrapped)


PATCHES = {
    "transformers.modeling_utils": lambda m: _wrap_classmethod(m.PreTrainedModel, "from_pretrained", "model weights"),
    "transformers.models.auto.tokenization_auto":
        lambda m: _wrap_classmethod(m.AutoTokenizer, "from_pretrained", "tokenizer"),
    "datasets.load": lambda m: _wrap_function(m, "load_dataset", "dataset"),
    "datasets.arrow_dataset":
        lambda m: [_wrap_classmethod(m.Dataset, n, "dataset") for n in ("from_list", "from_dict")],
}


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs PATCHES[name] on a module right after it executes."""

    def find_spec(self, name, path, target=None):
        if name not in PATCHES:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            PATCHES[name](module)

        spec.loader.exec_module = exec_module
        return spec


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] != "-m":
        raise SystemExit("usage: python bench/_load_watch.py -m MODULE [ARGS...]")
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    sys.meta_path.insert(0, _AfterImport())
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
