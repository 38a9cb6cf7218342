"""The version ranges of the libraries whose internals trl-mars builds on, checked at import with the fix."""

from __future__ import annotations

from packaging.version import Version


def require_version_range(package: str, version: str, supported: tuple[str, str], relies_on: str) -> None:
    """Raises ImportError unless `supported[0] <= version < supported[1]` (a dev or rc release counts as its base
    version, so 5.30.0.dev0 is 5.30.0). `relies_on` says what of the package needs that range."""
    found = Version(version)
    low, high = (Version(v) for v in supported)
    if not low <= Version(found.base_version) < high:
        raise ImportError(
            f"trl-mars needs {package}>={low},<{high} (found {found}): {relies_on}, which have this shape only in "
            f"that range. Install a supported version, e.g. `pip install '{package}>={low},<{high}'`.")
