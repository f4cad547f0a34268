"""Load an experiment script (``experiments/<name>.py``) as a module, once per process, for in-process tests."""

import importlib.util
import sys
from pathlib import Path

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def load_script(name: str):
    """``experiments/<name>.py`` as module ``name`` (registered in ``sys.modules``: dataclasses resolve
    string annotations through it); a second call returns the same module."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
