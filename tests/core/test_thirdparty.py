"""Real third-party packages, installed with pip, found through the ``ouroboros3d`` entry points.

tests/thirdparty/ouroboros3d-toy registers a generator, a reconstructor and a recipe;
tests/thirdparty/ouroboros3d-broken fails on import. Both are installed once with
``pip install --target`` into a temporary folder that the commands below see through
PYTHONPATH, and every check runs the real command line in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.building import skip_unless_buildable

from ouroboros_core.registry import DISABLE_ENV

HERE = Path(__file__).resolve().parents[1] / "thirdparty"

RECIPE = """\
generator:
  type: toy-pixels
  config:
    num_views: 6
reconstructor:
  type: toy-sphere
  config:
    input_views: [0, 3, 5]
sampler:
  mode: none
device: cpu
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """Both packages installed with pip into a fresh folder (sources copied first, so no build
    files land in the repository)."""
    for name in ("ouroboros3d-toy", "ouroboros3d-broken"):
        skip_unless_buildable(HERE / name / "pyproject.toml")
    work = tmp_path_factory.mktemp("thirdparty")
    sources = [shutil.copytree(HERE / name, work / "src" / name) for name in ("ouroboros3d-toy", "ouroboros3d-broken")]
    target = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index", "--no-deps",
         "--no-build-isolation", "--target", str(target), *map(str, sources)],
        check=True,
        capture_output=True,
    )
    return target


def cli(site: Path, *args: str, disable: str | None = None, code: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    env.pop(DISABLE_ENV, None)
    if disable is not None:
        env[DISABLE_ENV] = disable
    command = ["-c", code] if code is not None else ["-m", "ouroboros_core.cli", *args]
    return subprocess.run([sys.executable, *command], env=env, cwd=site.parent, capture_output=True, text=True, timeout=300)


def test_installed_plugin_is_listed_and_broken_one_reported(site):
    result = cli(site, "plugins", "list", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    toy = {c["name"]: c for c in data["components"] if c["distribution"] == "ouroboros3d-toy"}
    assert set(toy) == {"toy-pixels", "toy-sphere"}
    assert toy["toy-pixels"]["kind"] == "generator" and toy["toy-pixels"]["version"] == "0.3.1"
    assert toy["toy-sphere"]["devices"] == ["cpu"] and toy["toy-sphere"]["plugin"] == "toy"
    (broken,) = [f for f in data["failed"] if f["plugin"] == "broken"]
    assert broken["distribution"] == "ouroboros3d-broken" and broken["version"] == "0.0.1"
    assert broken["error"] == "ModuleNotFoundError: No module named 'ouroboros3d_broken_missing_dependency'"
    assert {"name": "toy-demo", "distribution": "ouroboros3d-toy"}.items() <= next(
        r for r in data["recipes"] if r["name"] == "toy-demo"
    ).items()

    check = cli(site, "plugins", "check")
    assert check.returncode == 1  # the broken plugin is a problem
    assert "ok       generator 'toy-pixels' (ouroboros3d-toy 0.3.1)" in check.stdout
    assert "FAILED   plugin 'broken' (ouroboros3d-broken 0.0.1)" in check.stdout


def test_recipe_using_the_installed_component_validates(site, tmp_path):
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(RECIPE)
    result = cli(site, "recipes", "validate", str(recipe))
    assert (result.returncode, result.stdout) == (0, f"{recipe}: valid (toy-pixels + toy-sphere)\n"), result.stderr

    bad = cli(site, "recipes", "validate", str(recipe), "--set", "reconstructor.config.input_views=[0, 6]")
    assert bad.returncode == 2
    assert "reconstructor.config.input_views: [0, 6] has view index 6, but generator 'toy-pixels' makes 6 views" in bad.stderr

    shown = cli(site, "recipes", "show", "toy-demo")
    assert shown.returncode == 0 and "type: toy-sphere" in shown.stdout and "- 2" in shown.stdout  # preset applied


def test_recipe_asking_for_the_broken_plugin_names_it(site, tmp_path):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text(RECIPE.replace("toy-sphere", "broken-recon"))
    result = cli(site, "recipes", "validate", str(recipe))
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith(f"error: {recipe}: reconstructor.type: no reconstructor named 'broken-recon'")
    assert "plugins that failed to load: 'broken' (ouroboros3d-broken 0.0.1): ModuleNotFoundError" in line


@pytest.mark.parametrize("disable", ["toy", "ouroboros3d-toy"])
def test_disable_env_removes_the_plugin(site, tmp_path, disable):
    data = json.loads(cli(site, "plugins", "list", "--json", disable=disable).stdout)
    assert not any(c["distribution"] == "ouroboros3d-toy" for c in data["components"])
    assert "toy (ouroboros3d-toy)" in data["disabled"]
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(RECIPE)
    result = cli(site, "recipes", "validate", str(recipe), disable=disable)
    assert result.returncode == 2 and "no generator named 'toy-pixels' is installed" in result.stderr
    assert f"disabled by {DISABLE_ENV}: toy (ouroboros3d-toy)" in result.stderr


def test_listing_does_not_import_torch_and_the_kit_passes_the_plugin(site):
    """Only the third-party plugins (the reference ones disabled): listing stays torch-free, and
    the conformance kit a plugin's own tests would call passes both toy components."""
    code = (
        "import sys\n"
        "from ouroboros_core.cli import main\n"
        "assert main(['plugins', 'list']) == 0\n"
        "assert 'torch' not in sys.modules, 'listing plugins imported torch'\n"
        "from ouroboros_core.registry import get_registry\n"
        "from ouroboros_core.testing import check_component\n"
        "registry = get_registry()\n"
        "for kind, name in [('generator', 'toy-pixels'), ('reconstructor', 'toy-sphere')]:\n"
        "    check_component(registry.get(kind, name))\n"
        "print('conformant')\n"
    )
    result = cli(site, disable="ouroboros3d", code=code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("conformant")
    assert "toy-pixels" in result.stdout and "ouroboros3d-toy 0.3.1" in result.stdout
