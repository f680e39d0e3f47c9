"""The plugin of the README's "Writing a plugin", built from the README's own code blocks and
installed with pip: its component and its recipe are found, the conformance kit passes, and
without the package-data line the recipes are reported missing while the component stays."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.building import skip_unless_buildable

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

CHECK = """
import json, ouroboros3d_myrecon
from ouroboros_core.registry import get_registry
from ouroboros_core.testing import check_component, check_plugin
registry = get_registry()
failed = [f.error for f in registry.failures if f.plugin == "myrecon"]
found = {"component": registry.entry("reconstructor", "myrecon").distribution,
         "recipe": str(registry.recipes().get("tiny-myrecon")), "failed": failed}
if not failed:
    check_component(ouroboros3d_myrecon.SPEC)
    check_plugin(ouroboros3d_myrecon)
print(json.dumps(found))
"""


def _readme_files() -> dict[str, str]:
    """Every README code block whose first line is a comment naming a file of the plugin."""
    text = (ROOT / "README.md").read_text()
    files = {}
    for block in re.findall(r"```(?:toml|python|yaml)\n(.*?)```", text, re.S):
        first = block.splitlines()[0]
        match = re.match(r"# (pyproject\.toml) of ouroboros3d-myrecon|# (ouroboros3d_myrecon/\S+?)(?::|$)", first)
        if match:
            files[match.group(1) or match.group(2)] = block
    return files


def _install(tmp_path: Path, files: dict[str, str]) -> Path:
    skip_unless_buildable(files["pyproject.toml"], "the README plugin")
    source = tmp_path / "ouroboros3d-myrecon"
    for name, text in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(text)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index", "--no-deps",
         "--no-build-isolation", "--target", str(target), str(source)],
        check=True, capture_output=True, cwd=tmp_path,
    )
    return target


def _check(target: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, cwd=target.parent, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_readme_plugin_installs_with_its_recipes_and_passes_the_kit(tmp_path):
    files = _readme_files()
    assert set(files) == {"pyproject.toml", "ouroboros3d_myrecon/__init__.py", "ouroboros3d_myrecon/model.py",
                          "ouroboros3d_myrecon/recipes/tiny-myrecon.yaml"}
    found = _check(_install(tmp_path, files))
    assert found == {"component": "ouroboros3d-myrecon", "recipe": found["recipe"], "failed": []}
    assert found["recipe"].startswith(str(tmp_path / "site")) and found["recipe"].endswith("tiny-myrecon.yaml")


def test_without_package_data_the_component_stays_and_the_failure_is_reported(tmp_path):
    files = _readme_files()
    files["pyproject.toml"] = re.sub(r"\[tool\.setuptools\.package-data\]\n.*\n", "", files["pyproject.toml"])
    assert "package-data" not in files["pyproject.toml"]
    found = _check(_install(tmp_path, files))
    assert found["component"] == "ouroboros3d-myrecon" and found["recipe"] == "None"
    assert len(found["failed"]) == 1 and "while registering recipes (its components are available)" in found["failed"][0]
