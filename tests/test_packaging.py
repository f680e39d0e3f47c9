"""The distribution ships every package folder, the shipped recipes, and no top-level `plugins`."""

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.building import skip_unless_buildable, unmet_build_requirement

ROOT = Path(__file__).resolve().parents[1]


def _declared_packages() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])


def _package_folders() -> set[str]:
    names = set()
    for top, import_name in (("ouroboros_core", "ouroboros_core"), ("plugins", "ouroboros_plugins"), ("recipes", "ouroboros_plugins.recipes")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            names.add(".".join((import_name, *rel)))
    return names


def _ignore_local(folder: str, names: list[str]) -> set[str]:
    """What a source copy leaves out: caches, builds, and the local run and data folders."""
    ignored = set(shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__")(folder, names))
    if Path(folder) == ROOT:  # top-level only: ouroboros_core/data is a package
        ignored |= {"outputs", "runs", "data"} & set(names)
    return ignored


def test_every_package_folder_is_declared():
    assert _package_folders() == _declared_packages()


@pytest.mark.slow
def test_wheel_contains_recipes_and_no_plugins_package(tmp_path):
    skip_unless_buildable(ROOT / "pyproject.toml", "ouroboros3d")
    # build from a copy of the source tree: setuptools leaves a build/ folder behind
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=_ignore_local)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-index", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
        check=True,
    )
    wheel = next(tmp_path.glob("ouroboros3d-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert not any(n.startswith("plugins/") for n in names)
    shipped = {Path(n).name for n in names if n.startswith("ouroboros_plugins/recipes/") and n.endswith(".yaml")}
    assert shipped == {p.name for p in (ROOT / "recipes").glob("*.yaml")}
    # the trained tiny model's weights travel with the recipe that points at them
    weights = {Path(n).name for n in names if n.startswith("ouroboros_plugins/recipes/weights/tiny/")}
    assert weights == {p.name for p in (ROOT / "recipes" / "weights" / "tiny").glob("*.safetensors")} and weights
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[ouroboros3d]" in text and "ouroboros_plugins.reconstructors.lgm" in text


@pytest.mark.slow
def test_recipes_are_found_after_a_regular_install(tmp_path):
    skip_unless_buildable(ROOT / "pyproject.toml", "ouroboros3d")
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=_ignore_local)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation", "-q", "--target", str(target), str(source)],
        check=True,
    )
    shutil.rmtree(source)  # nothing may point back into the source tree
    script = (
        "import json, ouroboros_core; from ouroboros_core.recipe import list_recipes, load_recipe; "
        "print(json.dumps({'core': ouroboros_core.__file__, 'recipes': {k: str(v) for k, v in list_recipes().items()}, "
        "'tiny': load_recipe('tiny').generator_spec.name}))"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    found = json.loads(out.stdout)
    assert found["core"].startswith(str(target))
    # other distributions installed in this environment may add recipes: select ours by path
    ours = {name for name, path in found["recipes"].items() if path.startswith(str(target))}
    assert sorted(ours) == sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))
    assert found["tiny"] == "svd"


def test_an_old_setuptools_is_a_skip_reason_not_a_failure():
    old = '[build-system]\nrequires = ["setuptools>=999"]\nbuild-backend = "setuptools.build_meta"\n'
    reason = unmet_build_requirement(old)
    assert reason is not None and "setuptools>=999" in reason and "is installed" in reason
    with pytest.raises(pytest.skip.Exception, match=r"cannot build demo offline: its build system needs 'setuptools>=999'"):
        skip_unless_buildable(old, "demo")
    assert unmet_build_requirement('[build-system]\nrequires = ["setuptools>=1", "wheel"]\n') is None
