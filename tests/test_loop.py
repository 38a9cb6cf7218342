"""The loop adapter's version guard: a clear import-time error outside the transformers range it was checked on."""

from __future__ import annotations

import pytest

from trl_mars.training.loop import SUPPORTED_TRANSFORMERS, check_transformers_version


@pytest.mark.parametrize("version", ["5.3.0", "5.10.1", "5.24.0", "5.30.0.dev0"])
def test_supported_versions_pass(version):
    check_transformers_version(version)


@pytest.mark.parametrize("version", ["4.56.2", "5.0.0", "5.2.0", "6.0.0", "6.1.0rc1"])
def test_versions_without_the_hooks_fail_with_the_fix(version):
    with pytest.raises(ImportError, match=r"transformers>=5\.3\.0,<6\.0\.0.*_run_epoch.*pip install"):
        check_transformers_version(version)


def test_the_installed_version_is_supported_and_pyproject_says_the_same():
    from pathlib import Path

    import tomllib
    import transformers

    check_transformers_version(transformers.__version__)
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    low, high = SUPPORTED_TRANSFORMERS
    assert f"transformers>={low.removesuffix('.0')},<{high.split('.')[0]}" in pyproject["project"]["dependencies"]
