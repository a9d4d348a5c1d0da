"""Loading the repository's scripts (benchmarks, docs and recipe scripts) as modules in tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative_path: str, name: str | None = None) -> ModuleType:
    """Import ``ROOT / relative_path`` as a module called ``name`` (default: the file's stem).

    The module is registered in ``sys.modules`` before it runs, because dataclasses (and pickling under
    spawn) look their module up there.
    """
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    assert spec is not None and spec.loader is not None, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
