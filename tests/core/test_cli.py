"""The ouroboros3d command: plugins, recipes and weights subcommands, exit codes, error lines."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import ouroboros_core
from ouroboros_core import registry as registry_module
from ouroboros_core.cli import main
from ouroboros_core.components import ComponentSpec, ReconstructorConfig
from ouroboros_core.errors import WeightsError
from ouroboros_core.recipe import load_recipe

RECIPE = """\
generator:
  type: toy-gen
  preset: tiny
reconstructor:
  type: toy-recon
  config:
    radius: 0.3
feedback:
  - type: toy-enc
"""


@pytest.fixture(autouse=True)
def use_toy_registry(toy_registry, monkeypatch):
    monkeypatch.setattr(registry_module, "_default", toy_registry)
    return toy_registry


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("plugins", "recipes", "weights"):
        assert command in out
    with pytest.raises(SystemExit) as info:
        main([])  # a command is required: argparse's usage error, exit 2
    assert info.value.code == 2


def test_plugins_list_json(capsys, use_toy_registry):
    class Broken:
        @ouroboros_core.hookimpl
        def ouroboros3d_register_components(self, register):
            raise ImportError("cannot import name 'Thing'")

    use_toy_registry.add_plugin(Broken(), name="broken", distribution="ouroboros3d-broken", version="0.0.1")
    code, out, _ = run(capsys, "plugins", "list", "--json")
    assert code == 0
    data = json.loads(out)
    by_name = {c["name"]: c for c in data["components"]}
    assert by_name["toy-gen"] == {
        "kind": "generator",
        "name": "toy-gen",
        "plugin": "toys",
        "distribution": "toy-dist",
        "version": "1.0",
        "devices": ["cpu", "cuda"],
        "slot": False,
        "presets": ["tiny", "wide"],
        "description": "",
    }
    assert by_name["toy-mesh"]["slot"] is True
    assert [(f["plugin"], f["distribution"]) for f in data["failed"]] == [("broken", "ouroboros3d-broken")]
    assert "cannot import name 'Thing'" in data["failed"][0]["error"]


def test_plugins_list_table(capsys):
    code, out, _ = run(capsys, "plugins", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["KIND", "NAME", "PLUGIN", "DISTRIBUTION", "DEVICES", "DESCRIPTION"]
    assert any(line.split()[:2] == ["reconstructor", "toy-mesh"] and "[slot]" in line for line in lines)
    # the PLUGIN column is the entry-point name OUROBOROS3D_DISABLE_PLUGINS accepts
    assert any(line.split()[:6] == ["reconstructor", "rgb-recon", "toys", "toy-dist", "1.0", "cpu"] for line in lines)


def test_plugins_list_warns_about_disabled_names_matching_nothing(capsys, monkeypatch):
    from ouroboros_core.registry import DISABLE_ENV, Registry

    monkeypatch.setenv(DISABLE_ENV, "lgn")
    monkeypatch.setattr(registry_module, "_default", Registry(load_entry_points=False))
    code, out, err = run(capsys, "plugins", "list")
    assert code == 0 and out == "no components installed\n"
    assert err.startswith(f"warning: {DISABLE_ENV} names lgn, which match no installed plugin")


def test_plugins_check_exit_codes(capsys, use_toy_registry, toy_plugin_cls):
    code, out, _ = run(capsys, "plugins", "check")
    assert code == 0 and "0 problem(s)" in out
    use_toy_registry.add_plugin(
        toy_plugin_cls([ComponentSpec("reconstructor", "gone", ReconstructorConfig, "gone_module_zz:build")]), name="gone"
    )
    code, out, _ = run(capsys, "plugins", "check")
    assert code == 1
    assert "FAILED   reconstructor 'gone'" in out and "No module named 'gone_module_zz'" in out


def test_recipes_list_show_validate(capsys, tmp_path, use_toy_registry, toy_plugin_cls):
    shipped = tmp_path / "toy-demo.yaml"
    shipped.write_text(RECIPE)
    use_toy_registry.add_plugin(toy_plugin_cls(recipes=[shipped]), name="recipes")
    code, out, _ = run(capsys, "recipes", "list")
    assert (code, out) == (0, f"toy-demo\t{shipped}\n")

    code, out, _ = run(capsys, "recipes", "show", "toy-demo", "--set", "sampler.steps=3")
    assert code == 0
    shown = yaml.safe_load(out)
    assert shown == load_recipe(shipped, ["sampler.steps=3"], registry=use_toy_registry).to_dict()
    assert shown["sampler"]["steps"] == 3 and shown["generator"]["config"]["image_size"] == 16

    code, out, _ = run(capsys, "recipes", "validate", str(shipped))
    assert (code, out) == (0, f"{shipped}: valid (toy-gen + toy-recon + toy-enc)\n")


def test_user_error_is_one_line_exit_2_and_traceback_only_with_debug(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(RECIPE.replace("radius", "radus"))
    code, out, err = run(capsys, "recipes", "validate", str(bad))
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"error: {bad}: reconstructor.config.radus: unknown key (value 0.3)")
    assert "did you mean 'radius'?" in err and "Traceback" not in err

    for argv in (["--debug", "recipes", "validate", str(bad)], ["recipes", "validate", str(bad), "--debug"]):
        code, _, err = run(capsys, *argv)
        assert code == 2
        assert "Traceback (most recent call last)" in err and "RecipeError" in err

    code, _, err = run(capsys, "recipes", "validate", str(bad), "--set", "sampler.steps")
    assert code == 2 and err.startswith("error: --set sampler.steps: expected key.path=value")


@dataclass
class _Report:
    ok: bool
    text: str

    def format(self) -> str:
        return self.text


@pytest.fixture
def fake_weights(monkeypatch):
    """Stand-in for ouroboros_core.weights recording what the CLI passes to it."""
    calls: list[tuple] = []
    module = types.ModuleType("ouroboros_core.weights")

    def inspect_file(path, spec, preset):
        calls.append(("inspect", path, spec.name, preset))
        return _Report(ok=spec.name != "toy-recon", text=f"{spec.kind} {spec.name}: 2 missing keys")

    def convert_file(path, out, spec, preset):
        calls.append(("convert", path, out, spec.name, preset))
        if not Path(path).exists():
            raise WeightsError(f"{path} does not exist", hint="check the path")
        return Path(out)

    module.inspect_file, module.convert_file = inspect_file, convert_file
    monkeypatch.setitem(sys.modules, "ouroboros_core.weights", module)
    return calls


def test_weights_commands(capsys, tmp_path, fake_weights):
    code, out, _ = run(capsys, "weights", "inspect", "m.pth", "--component", "toy-gen", "--preset", "tiny")
    assert (code, out) == (0, "generator toy-gen: 2 missing keys\n")
    code, out, _ = run(capsys, "weights", "inspect", "m.pth", "--component", "toy-recon")
    assert (code, out) == (1, "reconstructor toy-recon: 2 missing keys\n")  # report not ok: exit 1

    src = tmp_path / "m.pth"
    src.write_bytes(b"x")
    code, out, _ = run(capsys, "weights", "convert", str(src), "-o", str(tmp_path / "o.safetensors"), "--component", "toy-enc")
    assert (code, out) == (0, f"wrote {tmp_path / 'o.safetensors'}\n")
    assert fake_weights == [
        ("inspect", "m.pth", "toy-gen", "tiny"),
        ("inspect", "m.pth", "toy-recon", None),
        ("convert", str(src), str(tmp_path / "o.safetensors"), "toy-enc", None),
    ]

    code, _, err = run(capsys, "weights", "convert", "nope.pth", "-o", "o.safetensors", "--component", "toy-enc")
    assert code == 2 and err == "error: nope.pth does not exist (fix: check the path)\n"
    code, _, err = run(capsys, "weights", "inspect", "m.pth", "--component", "toy-rcon")
    assert code == 2 and "no component named 'toy-rcon'" in err and "did you mean 'toy-recon'?" in err


def test_weights_component_name_used_by_two_kinds(capsys, use_toy_registry, toy_plugin_cls, fake_weights):
    use_toy_registry.add_plugin(toy_plugin_cls([ComponentSpec("feedback", "toy-gen", ReconstructorConfig, "json:loads")]), name="dup")
    code, _, err = run(capsys, "weights", "inspect", "m.pth", "--component", "toy-gen")
    assert code == 2 and "used by several kinds of component (generator, feedback)" in err
    code, _, _ = run(capsys, "weights", "inspect", "m.pth", "--component", "toy-gen", "--kind", "feedback")
    assert code == 0 and fake_weights[-1] == ("inspect", "m.pth", "toy-gen", None)
