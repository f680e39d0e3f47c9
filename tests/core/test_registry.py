"""The plugin registry: entry-point loading, failures, conflicts, disabling, lookups, checks."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest

from ouroboros_core import hookimpl, registry as registry_module
from ouroboros_core.components import ComponentSpec, ReconstructorConfig
from ouroboros_core.errors import PluginError
from ouroboros_core.registry import DISABLE_ENV, Registry, disabled_from_env

GROUP = "ouroboros3d-registry-test"  # a private group: the installed reference plugins stay out

PLUGIN_SOURCE = """\
from ouroboros_core import hookimpl
from ouroboros_core.components import ComponentSpec, ReconstructorConfig


class Config(ReconstructorConfig):
    size: int = 2


@hookimpl
def ouroboros3d_register_components(register):
    register(ComponentSpec("reconstructor", "{name}", Config, "{factory}"))
"""


def make_dist(root: Path, dist: str, version: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """A minimal installed distribution (dist-info with METADATA and entry_points.txt) in ``root``."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[{GROUP}]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path to install fake distributions into; module names are unique per test."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    return tmp_path, uuid.uuid4().hex[:8]


def load(disabled=None) -> Registry:
    return Registry(group=GROUP, disabled=disabled)


def test_entry_points_load_with_distribution_and_version(site):
    root, tag = site
    make_dist(root, "ouroboros3d-good", "1.2.3", {"good": f"good_{tag}"}, {f"good_{tag}": PLUGIN_SOURCE.format(name="good-recon", factory="json:loads")})
    reg = load()
    (comp,) = reg.components()
    assert (comp.spec.kind, comp.spec.name, comp.plugin, comp.distribution, comp.version) == (
        "reconstructor", "good-recon", "good", "ouroboros3d-good", "1.2.3"
    )
    assert reg.failures == []
    assert reg.get("reconstructor", "good-recon").config().size == 2


def test_broken_plugin_is_recorded_and_does_not_hide_others(site):
    root, tag = site
    make_dist(root, "ouroboros3d-good", "1.0", {"good": f"good_{tag}"}, {f"good_{tag}": PLUGIN_SOURCE.format(name="good-recon", factory="json:loads")})
    make_dist(root, "ouroboros3d-bad", "0.1", {"bad": f"bad_{tag}"}, {f"bad_{tag}": "import some_missing_dependency_xyz\n"})
    reg = load()
    assert reg.names("reconstructor") == ["good-recon"]
    (failure,) = reg.failures
    assert (failure.plugin, failure.distribution, failure.version) == ("bad", "ouroboros3d-bad", "0.1")
    assert failure.error == "ModuleNotFoundError: No module named 'some_missing_dependency_xyz'"
    assert "install the missing module 'some_missing_dependency_xyz'" in failure.hint
    assert f"{DISABLE_ENV}=bad" in failure.hint
    # only a lookup of a missing name mentions it
    with pytest.raises(PluginError) as info:
        reg.get("reconstructor", "bad-recon")
    assert "plugins that failed to load: 'bad' (ouroboros3d-bad 0.1): ModuleNotFoundError" in str(info.value)
    assert "did you mean 'good-recon'?" in str(info.value)
    report = reg.check()
    assert not report.ok
    assert [p.subject for p in report.problems] == ["plugin 'bad' (ouroboros3d-bad 0.1)"]


@pytest.mark.parametrize("names", ["bad", "Ouroboros3D_Bad", " other , ouroboros3d-bad "])
def test_disable_env_skips_plugins_by_entry_point_or_distribution(site, monkeypatch, names):
    root, tag = site
    make_dist(root, "ouroboros3d-bad", "0.1", {"bad": f"bad_{tag}"}, {f"bad_{tag}": "raise RuntimeError('boom')\n"})
    monkeypatch.setenv(DISABLE_ENV, names)
    reg = load()
    assert reg.failures == []
    assert reg.disabled == ["bad (ouroboros3d-bad)"]
    with pytest.raises(PluginError, match=f"disabled by {DISABLE_ENV}: bad"):
        reg.get("generator", "anything")


def test_disable_env_accepts_component_names_and_reports_names_matching_nothing(site, monkeypatch):
    root, tag = site
    two = """\
from ouroboros_core import hookimpl
from ouroboros_core.components import ComponentSpec, ReconstructorConfig


@hookimpl
def ouroboros3d_register_components(register):
    register(ComponentSpec("reconstructor", "keep-recon", ReconstructorConfig, "json:loads"))
    register(ComponentSpec("reconstructor", "drop-recon", ReconstructorConfig, "json:loads"))
"""
    make_dist(root, "ouroboros3d-two", "1.0", {"two": f"two_{tag}"}, {f"two_{tag}": two})
    monkeypatch.setenv(DISABLE_ENV, "Drop_Recon, nothing-here, ouroboros3d-typo")
    reg = load()
    assert [c.spec.name for c in reg.components()] == ["keep-recon"]
    assert reg.disabled == ["reconstructor 'drop-recon' (ouroboros3d-two)"]
    assert reg.unmatched_disabled == ["nothing-here", "ouroboros3d-typo"]
    assert reg.as_dict()["disabled_unmatched"] == ["nothing-here", "ouroboros3d-typo"]
    warning = reg.unmatched_disabled_warning()
    assert warning.startswith(f"warning: {DISABLE_ENV} names nothing-here, ouroboros3d-typo, which match no installed plugin")
    with pytest.raises(PluginError, match=f"disabled by {DISABLE_ENV}: reconstructor 'drop-recon'"):
        reg.get("reconstructor", "drop-recon")
    monkeypatch.setenv(DISABLE_ENV, "two")
    assert load().unmatched_disabled == [] and load().unmatched_disabled_warning() is None


def test_disabled_from_env_normalises_names():
    assert disabled_from_env({DISABLE_ENV: "A_b.c, ,x"}) == {"a-b-c", "x"}
    assert disabled_from_env({}) == frozenset()


def test_duplicate_component_is_an_error_naming_both_distributions(site):
    root, tag = site
    for dist in ("ouroboros3d-one", "ouroboros3d-two"):
        module = f"{dist[-3:]}_{tag}"
        make_dist(root, dist, "1.0", {dist[-3:]: module}, {module: PLUGIN_SOURCE.format(name="same", factory="json:loads")})
    reg = load()
    with pytest.raises(PluginError) as info:
        reg.get("reconstructor", "same")
    message = str(info.value)
    assert "reconstructor 'same' is registered by more than one plugin" in message
    assert "ouroboros3d-one 1.0 (plugin 'one')" in message and "ouroboros3d-two 1.0 (plugin 'two')" in message
    assert reg.components() == []
    assert not reg.check().ok


def test_same_entry_point_name_in_two_distributions_is_reported(site):
    root, tag = site
    make_dist(root, "ouroboros3d-aaa", "1.0", {"shared": f"a_{tag}"}, {f"a_{tag}": PLUGIN_SOURCE.format(name="a-recon", factory="json:loads")})
    make_dist(root, "ouroboros3d-bbb", "1.0", {"shared": f"b_{tag}"}, {f"b_{tag}": PLUGIN_SOURCE.format(name="b-recon", factory="json:loads")})
    reg = load()
    assert len(reg.components()) == 1
    (failure,) = reg.failures
    assert failure.plugin == "shared" and "is already used by" in failure.error


def test_same_name_in_different_kinds_is_fine(toy_registry, toy_plugin_cls):
    toy_registry.add_plugin(
        toy_plugin_cls([ComponentSpec("feedback", "toy-gen", ReconstructorConfig, "json:loads")]), name="x", distribution="x"
    )
    assert toy_registry.get("generator", "toy-gen").kind == "generator"
    assert toy_registry.get("feedback", "toy-gen").kind == "feedback"
    assert [c.spec.kind for c in toy_registry.find("toy-gen")] == ["generator", "feedback"]


def test_failing_hook_registers_nothing_from_that_plugin(toy_registry):
    class HalfBroken:
        @hookimpl
        def ouroboros3d_register_components(self, register):
            register(ComponentSpec("generator", "half", ReconstructorConfig, "json:loads"))
            register("not a spec")

    toy_registry.add_plugin(HalfBroken(), name="half", distribution="ouroboros3d-half", version="0.2")
    assert "half" not in toy_registry.names("generator")
    (failure,) = toy_registry.failures
    assert failure.error == "TypeError while registering: register() expects a ComponentSpec, got str"
    assert failure.distribution == "ouroboros3d-half"


def test_missing_recipe_files_are_reported_and_keep_the_components(tmp_path, toy_registry):
    class NoRecipeFiles:  # what a wheel built without its package data looks like
        @hookimpl
        def ouroboros3d_register_components(self, register):
            register(ComponentSpec("reconstructor", "kept", ReconstructorConfig, "json:loads"))

        @hookimpl
        def ouroboros3d_register_recipes(self, register):
            register(tmp_path / "site" / "ouroboros3d_kept" / "recipes")

    toy_registry.add_plugin(NoRecipeFiles(), name="kept", distribution="ouroboros3d-kept", version="1.0")
    assert toy_registry.get("reconstructor", "kept").factory == "json:loads"
    (failure,) = toy_registry.failures
    assert failure.error.startswith("FileNotFoundError while registering recipes (its components are available): registered recipe path")
    assert "package-data" in failure.hint
    assert not toy_registry.check().ok  # plugins check reports it


def test_lookup_errors_suggest_closest_and_other_kind(toy_registry):
    with pytest.raises(PluginError) as info:
        toy_registry.get("reconstructor", "toy-recn")
    assert str(info.value) == (
        "no reconstructor named 'toy-recn' is installed "
        "(fix: did you mean 'toy-recon'? valid reconstructor names: rgb-recon, toy-mesh, toy-recon)"
    )
    with pytest.raises(PluginError, match="'toy-enc' is a feedback, not a generator"):
        toy_registry.get("generator", "toy-enc")


def test_check_imports_factories_and_marks_slots(toy_registry, toy_plugin_cls):
    toy_registry.add_plugin(
        toy_plugin_cls([ComponentSpec("generator", "lost", ReconstructorConfig, "no_such_module_qq.model:build")]),
        name="lost",
        distribution="ouroboros3d-lost",
        version="3.0",
    )
    report = toy_registry.check()
    (problem,) = report.problems
    assert problem.subject == "generator 'lost' (ouroboros3d-lost 3.0)"
    assert problem.error == "ModuleNotFoundError: No module named 'no_such_module_qq'"
    assert "install the missing module 'no_such_module_qq'" in problem.hint
    assert "reconstructor 'toy-mesh' (toy-dist 1.0) [slot: declared, not implemented]" in report.checked
    assert "generator 'toy-gen' (toy-dist 1.0)" in report.checked
    assert "FAILED   generator 'lost'" in report.format()
    listed = {c["name"]: c for c in toy_registry.as_dict()["components"]}
    assert listed["toy-mesh"]["slot"] is True and listed["toy-recon"]["slot"] is False
    assert listed["rgb-recon"]["devices"] == ["cpu"]


def test_recipes_registered_from_folders_and_conflicts(tmp_path, toy_registry, toy_plugin_cls):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for p in (tmp_path / "a" / "one.yaml", tmp_path / "a" / "two.yaml", tmp_path / "b" / "two.yaml"):
        p.write_text("{}")
    toy_registry.add_plugin(toy_plugin_cls(recipes=[tmp_path / "a"]), name="ra", distribution="dist-a")
    toy_registry.add_plugin(toy_plugin_cls(recipes=[tmp_path / "b" / "two.yaml"]), name="rb", distribution="dist-b")
    assert toy_registry.recipes() == {"one": tmp_path / "a" / "one.yaml"}
    with pytest.raises(PluginError, match="recipe 'two' is registered by more than one plugin: dist-a"):
        toy_registry.recipe_path("two")
    toy_registry.add_plugin(toy_plugin_cls(recipes=[tmp_path / "missing.yaml"]), name="rc", distribution="dist-c")
    assert "is not a .yaml file or a folder" in toy_registry.failures[-1].error


def test_get_registry_is_cached_and_replaceable(toy_registry, monkeypatch):
    monkeypatch.setattr(registry_module, "_default", None)
    first = registry_module.get_registry()
    assert registry_module.get_registry() is first
    registry_module.set_registry(toy_registry)
    assert registry_module.get_registry() is toy_registry
    registry_module.set_registry(None)
    assert registry_module.get_registry() is not toy_registry


def test_real_component_fills_a_slot_in_either_order(toy_registry, toy_plugin_cls):
    slot = toy_registry.get("reconstructor", "toy-mesh")
    assert slot.slot
    real = ComponentSpec("reconstructor", "toy-mesh", ReconstructorConfig, "some_module:build")
    toy_registry.add_plugin(toy_plugin_cls([real]), name="meshes", distribution="ouroboros3d-meshes", version="2.0")
    assert toy_registry.get("reconstructor", "toy-mesh") is real
    assert toy_registry.entry("reconstructor", "toy-mesh").distribution == "ouroboros3d-meshes"
    # a slot arriving after the implementation does not displace it
    toy_registry.add_plugin(toy_plugin_cls([slot]), name="late-slot", distribution="late", version="1.0")
    assert toy_registry.get("reconstructor", "toy-mesh") is real
    assert not toy_registry.conflicts
