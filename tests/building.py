"""Helpers for tests that build and install distributions with pip, offline.

Those tests run ``pip install/wheel --no-index --no-build-isolation``: nothing is downloaded,
so the build backend is the setuptools installed here. When it is older than what a
``pyproject.toml`` asks for, the build cannot work, and the test skips saying so.
"""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest


def unmet_build_requirement(pyproject_text: str) -> str | None:
    """Why the installed setuptools cannot build a project with this ``pyproject.toml`` text
    (``None`` when it can)."""
    from packaging.requirements import Requirement

    for text in tomllib.loads(pyproject_text).get("build-system", {}).get("requires", []):
        requirement = Requirement(text)
        if requirement.name.lower() != "setuptools":
            continue
        try:
            installed = version("setuptools")
        except PackageNotFoundError:
            return f"its build system needs {text!r} and setuptools is not installed (the build is offline, --no-build-isolation)"
        if not requirement.specifier.contains(installed, prereleases=True):
            return (
                f"its build system needs {text!r} but setuptools {installed} is installed "
                "(the build is offline, --no-build-isolation; pip install -U setuptools)"
            )
    return None


def skip_unless_buildable(pyproject: Path | str, name: str | None = None) -> None:
    """Skip the calling test when the installed setuptools cannot build ``pyproject`` (a
    :class:`~pathlib.Path` to a pyproject.toml, or its text as a ``str``)."""
    path = pyproject if isinstance(pyproject, Path) else None
    reason = unmet_build_requirement(path.read_text() if path is not None else pyproject)
    if reason is not None:
        pytest.skip(f"cannot build {name or (path.parent.name if path else 'the package')} offline: {reason}")
