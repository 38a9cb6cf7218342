"""The TRL version guard in `trl_mars.training.config`: a clear import-time error outside the range pyproject.toml
pins."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib
import trl

from trl_mars.training.config import SUPPORTED_TRL, check_trl_version


@pytest.mark.parametrize("version", ["1.0.0", "1.16.0", "1.99.0.dev0"])
def test_supported_versions_pass(version):
    check_trl_version(version)


@pytest.mark.parametrize("version", ["0.29.1", "0.9.6", "2.0.0", "2.1.0rc1"])
def test_versions_outside_fail_with_the_install_command(version):
    low, high = SUPPORTED_TRL
    with pytest.raises(ImportError, match=rf"found {version}.*pip install 'trl>={low},<{high}'"):
        check_trl_version(version)


def test_the_installed_version_is_supported_and_pyproject_says_the_same():
    check_trl_version(trl.__version__)
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    low, high = SUPPORTED_TRL
    assert f"trl>={low.removesuffix('.0')},<{high.split('.')[0]}" in pyproject["project"]["dependencies"]
