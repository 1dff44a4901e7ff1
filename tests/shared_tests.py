"""Load a unit-test file as a module, so another suite can run its tests and fixtures elsewhere.

The integration suite re-runs behaviour tests written for embedded Milvus Lite against a real
server: it loads the unit file here and re-exports its tests, overriding the connection fixture.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

UNIT_DIR = Path(__file__).resolve().parent / "unit"


def load_unit_tests(filename: str, module_name: str) -> ModuleType:
    """``tests/unit/<filename>`` imported as ``module_name`` (registered in ``sys.modules``)."""
    spec = importlib.util.spec_from_file_location(module_name, UNIT_DIR / filename)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
