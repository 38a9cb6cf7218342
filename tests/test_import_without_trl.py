"""The augmentation back-ends load without TRL (it is blocked in a fresh interpreter)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

AUGMENT_DIR = Path(__file__).resolve().parents[1] / "trl_mars" / "augment"
AUGMENT_MODULES = sorted(f"trl_mars.augment.{p.stem}" for p in AUGMENT_DIR.glob("*.py") if p.stem != "__init__")

_SCRIPT = """
import sys, time
sys.modules["trl"] = None  # any `import trl` now raises ImportError
start = time.perf_counter()
import {module}
print(f"imported {module} in {{time.perf_counter() - start:.3f}} s without trl")
assert sys.modules["trl"] is None
"""


@pytest.mark.parametrize("module", AUGMENT_MODULES)
def test_augment_module_imports_with_trl_blocked(module):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(AUGMENT_DIR.parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _SCRIPT.format(module=module)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, f"importing {module} needs trl:\n{done.stderr[-2000:]}"
    print(done.stdout.strip())
