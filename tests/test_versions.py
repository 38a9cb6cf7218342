"""The version guards: a clear import-time error, with the install command, outside the transformers and TRL ranges
trl-mars was checked on, and the same ranges as pyproject.toml."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib
import transformers
import trl

from trl_mars.training.config import SUPPORTED_TRL, check_trl_version
from trl_mars.training.loop import SUPPORTED_TRANSFORMERS, check_transformers_version

GUARDS = {"transformers": (check_transformers_version, SUPPORTED_TRANSFORMERS, transformers.__version__),
          "trl": (check_trl_version, SUPPORTED_TRL, trl.__version__)}


@pytest.mark.parametrize(("package", "version"), [
    ("transformers", "5.3.0"), ("transformers", "5.10.1"), ("transformers", "5.24.0"), ("transformers", "5.30.0.dev0"),
    ("trl", "1.0.0"), ("trl", "1.16.0"), ("trl", "1.99.0.dev0")])
def test_supported_versions_pass(package, version):
    GUARDS[package][0](version)


@pytest.mark.parametrize(("package", "version"), [
    ("transformers", "4.56.2"), ("transformers", "5.0.0"), ("transformers", "5.2.0"), ("transformers", "6.0.0"),
    ("transformers", "6.1.0rc1"), ("trl", "0.29.1"), ("trl", "0.9.6"), ("trl", "2.0.0"), ("trl", "2.1.0rc1")])
def test_versions_outside_fail_with_the_install_command(package, version):
    check, (low, high), _ = GUARDS[package]
    with pytest.raises(ImportError, match=rf"found {version}.*pip install '{package}>={low},<{high}'"):
        check(version)


def test_the_transformers_message_names_the_hooks():
    with pytest.raises(ImportError, match=r"transformers>=5\.3\.0,<6\.0\.0.*_run_epoch.*pip install"):
        check_transformers_version("5.2.0")


@pytest.mark.parametrize("package", sorted(GUARDS))
def test_the_installed_version_is_supported_and_pyproject_says_the_same(package):
    check, (low, high), installed = GUARDS[package]
    check(installed)
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert f"{package}>={low.removesuffix('.0')},<{high.split('.')[0]}" in pyproject["project"]["dependencies"]
