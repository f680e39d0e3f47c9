"""Recipes: loading, extends, --set overrides, validation errors users see, and saving."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from ouroboros_core import hookimpl
from ouroboros_core.errors import RecipeError
from ouroboros_core.recipe import RecipeModel, apply_override, deep_merge, list_recipes, load_recipe
from ouroboros_core.registry import Registry

BASE = """\
generator:
  type: toy-gen
  preset: tiny
  config:
    num_views: 4
reconstructor:
  type: toy-recon
  config:
    radius: 0.75
    input_views: [0, 2]
feedback:
  - type: toy-enc
    config:
      map_kind: rgb
sampler:
  steps: 5
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def error_of(func, *args, **kwargs) -> str:
    with pytest.raises(RecipeError) as info:
        func(*args, **kwargs)
    return str(info.value)


def test_loads_validates_and_applies_presets(tmp_path, toy_registry):
    recipe = load_recipe(write(tmp_path / "base.yaml", BASE), registry=toy_registry)
    assert recipe.name == "base"  # from the file name
    assert recipe.generator_config.image_size == 16  # from preset "tiny"
    assert recipe.generator_config.num_views == 4
    assert recipe.reconstructor_config.radius == 0.75
    assert recipe.reconstructor_config.input_views == [0, 2]
    assert [s.name for s in recipe.feedback_specs] == ["toy-enc"]
    assert recipe.model.sampler.steps == 5
    assert recipe.model.sampler.mode == "joint"  # default
    assert recipe.source == tmp_path / "base.yaml"


def test_recipe_value_overrides_preset(tmp_path, toy_registry):
    text = BASE.replace("num_views: 4", "num_views: 4\n    image_size: 24")
    recipe = load_recipe(write(tmp_path / "r.yaml", text), registry=toy_registry)
    assert recipe.generator_config.image_size == 24


def test_unknown_component_key_names_file_path_value_and_closest_key(tmp_path, toy_registry):
    path = write(tmp_path / "r.yaml", BASE.replace("radius: 0.75", "radiuss: 0.75"))
    message = error_of(load_recipe, path, registry=toy_registry)
    assert message.startswith(f"{path}: reconstructor.config.radiuss: unknown key (value 0.75)")
    assert "did you mean 'radius'?" in message


def test_unknown_component_type_suggests_closest_name(tmp_path, toy_registry):
    path = write(tmp_path / "r.yaml", BASE.replace("type: toy-recon", "type: toy-recn"))
    message = error_of(load_recipe, path, registry=toy_registry)
    assert f"{path}: reconstructor.type: no reconstructor named 'toy-recn'" in message
    assert "did you mean 'toy-recon'?" in message


def test_component_of_another_kind_is_named(tmp_path, toy_registry):
    path = write(tmp_path / "r.yaml", BASE.replace("type: toy-recon", "type: toy-gen"))
    assert "'toy-gen' is a generator, not a reconstructor" in error_of(load_recipe, path, registry=toy_registry)


def test_recipe_using_a_failed_plugin_names_the_failure(tmp_path, toy_registry, toy_plugin_cls):
    class Broken(toy_plugin_cls):
        @hookimpl
        def ouroboros3d_register_components(self, register):
            raise RuntimeError("weights index corrupt")

    toy_registry.add_plugin(Broken(), name="fancy", distribution="ouroboros3d-fancy", version="2.0")
    # a recipe that does not use it still loads
    load_recipe(write(tmp_path / "ok.yaml", BASE), registry=toy_registry)
    path = write(tmp_path / "r.yaml", BASE.replace("type: toy-recon", "type: fancy-recon"))
    message = error_of(load_recipe, path, registry=toy_registry)
    assert "reconstructor.type: no reconstructor named 'fancy-recon' is installed" in message
    assert "'fancy' (ouroboros3d-fancy 2.0)" in message
    assert "weights index corrupt" in message


def test_section_errors_suggest_keys_and_literal_values(tmp_path, toy_registry):
    path = write(tmp_path / "r.yaml", BASE.replace("steps: 5", "step: 5"))
    message = error_of(load_recipe, path, registry=toy_registry)
    assert "sampler.step: unknown key" in message and "did you mean 'steps'?" in message

    path = write(tmp_path / "r.yaml", BASE + "  mode: jiont\n")
    message = error_of(load_recipe, path, registry=toy_registry)
    assert "sampler.mode: 'jiont' is not allowed" in message and "did you mean 'joint'?" in message

    path = write(tmp_path / "r.yaml", BASE.replace("steps: 5", "steps: 0"))
    message = error_of(load_recipe, path, registry=toy_registry)
    assert "sampler.steps: Input should be greater than or equal to 1 (got 0)" in message


def test_missing_section_and_unknown_preset(tmp_path, toy_registry):
    path = write(tmp_path / "r.yaml", "reconstructor:\n  type: toy-recon\n")
    assert "generator: required key is missing" in error_of(load_recipe, path, registry=toy_registry)
    path = write(tmp_path / "r.yaml", BASE.replace("preset: tiny", "preset: tinny"))
    message = error_of(load_recipe, path, registry=toy_registry)
    assert "generator.preset: 'tinny' is not a preset of generator 'toy-gen'" in message
    assert "did you mean 'tiny'?" in message


def test_yaml_syntax_error_gives_line(tmp_path, toy_registry):
    path = write(tmp_path / "r.yaml", "generator:\n  type: [toy-gen\nreconstructor: {}\n")
    message = error_of(load_recipe, path, registry=toy_registry)
    assert message.startswith(f"{path}: not valid YAML at line")


def test_missing_file_and_unknown_shipped_name(tmp_path, toy_registry):
    assert "does not exist" in error_of(load_recipe, tmp_path / "nope.yaml", registry=toy_registry)
    toy_registry.add_plugin(_RecipePlugin(write(tmp_path / "svd-lgm.yaml", BASE)), name="shipped")
    message = error_of(load_recipe, "svd-lgn", registry=toy_registry)
    assert "no recipe named 'svd-lgn'" in message and "did you mean 'svd-lgm'?" in message


class _RecipePlugin:
    def __init__(self, *paths):
        self.paths = paths

    @hookimpl
    def ouroboros3d_register_recipes(self, register):
        for p in self.paths:
            register(p)


# ------------------------------------------------------------------ extends and overrides
def test_deep_merge_merges_mappings_and_replaces_lists():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 1}
    assert deep_merge(base, {"a": {"y": [3]}, "c": 2}) == {"a": {"x": 1, "y": [3]}, "b": 1, "c": 2}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": 1}  # not modified


def test_extends_relative_file_merges_and_errors_name_the_right_file(tmp_path, toy_registry):
    write(tmp_path / "base.yaml", "name: base\n" + BASE)
    (tmp_path / "sub").mkdir()
    child = write(
        tmp_path / "sub" / "child.yaml",
        "extends: ../base.yaml\nreconstructor:\n  config:\n    radius: 0.25\nfeedback: []\nsampler:\n  mode: none\n",
    )
    recipe = load_recipe(child, registry=toy_registry)
    assert recipe.name == "child"  # not inherited
    assert recipe.reconstructor_config.radius == 0.25
    assert recipe.reconstructor_config.input_views == [0, 2]  # merged from the parent
    assert recipe.feedback_specs == []  # list replaced
    assert recipe.model.sampler.steps == 5 and recipe.model.sampler.mode == "none"

    # a bad key written by the parent names the parent file, one from the child the child file
    write(tmp_path / "base.yaml", BASE.replace("radius: 0.75", "radius: 0.75\n    colour: red"))
    assert error_of(load_recipe, child, registry=toy_registry).startswith(f"{tmp_path / 'base.yaml'}: reconstructor.config.colour")
    write(tmp_path / "base.yaml", BASE)
    write(child, child.read_text().replace("radius: 0.25", "radius: 0.25\n    size: 3"))
    assert error_of(load_recipe, child, registry=toy_registry).startswith(f"{child}: reconstructor.config.size")


def test_extends_shipped_name_and_type_change_replaces_section(tmp_path, toy_registry):
    toy_registry.add_plugin(_RecipePlugin(write(tmp_path / "shipped.yaml", BASE)), name="shipped")
    child = write(tmp_path / "c.yaml", "extends: shipped\nreconstructor:\n  type: rgb-recon\nfeedback: []\n")
    recipe = load_recipe(child, registry=toy_registry)
    # the parent's toy-recon config (radius) was dropped, not merged into rgb-recon's
    assert recipe.reconstructor_spec.name == "rgb-recon"
    assert recipe.reconstructor_config.input_views is None


def test_extends_cycle_and_unknown_parent(tmp_path, toy_registry):
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a\n")
    assert "cycle" in error_of(load_recipe, tmp_path / "a.yaml", registry=toy_registry)
    write(tmp_path / "c.yaml", "extends: nothere\n")
    message = error_of(load_recipe, tmp_path / "c.yaml", registry=toy_registry)
    assert message.startswith(f"{tmp_path / 'c.yaml'}: extends: 'nothere' is neither a file")


def test_set_overrides_nested_list_index_and_yaml_values(tmp_path, toy_registry):
    path = write(tmp_path / "r.yaml", BASE)
    recipe = load_recipe(
        path,
        [
            "sampler.steps=12",
            "reconstructor.config.input_views=[1, 3]",
            "feedback.0.config.channels=[3]",
            "generator.config.slot_channels=[3]",
            "sampler.feedback_sigma_range=[0.1, 5]",
            "maps.ccm=official",
        ],
        registry=toy_registry,
    )
    assert recipe.model.sampler.steps == 12
    assert recipe.reconstructor_config.input_views == [1, 3]
    assert recipe.model.sampler.feedback_sigma_range == (0.1, 5.0)
    assert recipe.model.maps.ccm == "official"


def test_mixed_precision_no_survives_yaml(tmp_path, toy_registry):
    # YAML 1.1 reads a bare `no` as false, in a recipe file and in --set alike
    path = write(tmp_path / "r.yaml", BASE + "trainer:\n  mixed_precision: no\n")
    assert load_recipe(path, registry=toy_registry).model.trainer.mixed_precision == "no"
    recipe = load_recipe(path, ["trainer.mixed_precision=bf16"], registry=toy_registry)
    assert recipe.model.trainer.mixed_precision == "bf16"
    assert load_recipe(path, ["trainer.mixed_precision=no"], registry=toy_registry).model.trainer.mixed_precision == "no"
    message = error_of(load_recipe, path, ["trainer.mixed_precision=yes"], registry=toy_registry)
    assert "trainer.mixed_precision" in message and "bf16, fp16, no" in message


def test_set_errors(tmp_path, toy_registry):
    path = write(tmp_path / "r.yaml", BASE)
    message = error_of(load_recipe, path, ["reconstructor.config.radus=1"], registry=toy_registry)
    assert message.startswith("--set reconstructor.config.radus=1: reconstructor.config.radus: unknown key (value 1)")
    assert "did you mean 'radius'?" in message
    assert "expected key.path=value" in error_of(load_recipe, path, ["sampler.steps"], registry=toy_registry)
    assert "not an index" in error_of(load_recipe, path, ["feedback.3.type=x"], registry=toy_registry)
    assert "not a mapping" in error_of(load_recipe, path, ["sampler.steps.x=1"], registry=toy_registry)


def test_apply_override_creates_sections():
    data: dict = {}
    apply_override(data, "output.video=false")
    apply_override(data, "trainer.lr_scale.reconstructor=0.5")
    assert data == {"output": {"video": False}, "trainer": {"lr_scale": {"reconstructor": 0.5}}}


# ------------------------------------------------------------------ cross-component checks
def test_input_views_beyond_generator_views(tmp_path, toy_registry):
    path = write(tmp_path / "r.yaml", BASE.replace("input_views: [0, 2]", "input_views: [0, 5]"))
    message = error_of(load_recipe, path, registry=toy_registry)
    assert "reconstructor.config.input_views: [0, 5] has view index 5, but generator 'toy-gen' makes 4 views" in message
    # more views from the preset "wide" make it valid
    load_recipe(path, ["generator.preset=wide", "generator.config.num_views=8"], registry=toy_registry)


def test_map_kind_needs_renders_the_reconstructor_provides(tmp_path, toy_registry):
    text = BASE.replace("type: toy-recon\n  config:\n    radius: 0.75\n", "type: rgb-recon\n  config:\n")
    load_recipe(write(tmp_path / "ok.yaml", text), registry=toy_registry)  # rgb maps: fine
    path = write(tmp_path / "r.yaml", text.replace("map_kind: rgb", "map_kind: ccm"))
    message = error_of(load_recipe, path, registry=toy_registry)
    assert "feedback.0.config.map_kind: 'ccm' maps need the render outputs alpha, depth" in message
    assert "'rgb-recon' renders only rgb" in message
    path = write(tmp_path / "r2.yaml", BASE.replace("map_kind: rgb", "map_kind: cmm"))
    assert "did you mean 'ccm'?" in error_of(load_recipe, path, registry=toy_registry)


def test_encoder_outputs_must_match_generator_slots(tmp_path, toy_registry):
    path = write(tmp_path / "r.yaml", BASE)
    message = error_of(load_recipe, path, ["feedback.0.config.channels=[8]"], registry=toy_registry)
    assert "feedback.0.config: encoder 'toy-enc' emits (channels, stride) [(8, 1)]" in message
    assert "feedback slots [(3, 1)]" in message
    load_recipe(path, ["feedback.0.config.channels=[8, 4]", "generator.config.slot_channels=[8, 4]"], registry=toy_registry)


def test_joint_feedback_needs_generator_slots(tmp_path, toy_registry):
    path = write(tmp_path / "r.yaml", BASE)
    overrides = ["generator.config.slot_channels=[]", "feedback.0.config.channels=[]"]
    message = error_of(load_recipe, path, overrides, registry=toy_registry)
    assert "feedback: generator 'toy-gen' has no feedback slots, but sampler.mode is 'joint'" in message
    load_recipe(path, overrides + ["sampler.mode=resample"], registry=toy_registry)


def test_slot_component_and_device(tmp_path, toy_registry):
    path = write(tmp_path / "r.yaml", BASE)
    message = error_of(load_recipe, path, ["reconstructor.type=toy-mesh", "reconstructor.config={}"], registry=toy_registry)
    assert "reconstructor.type: 'toy-mesh' is a declared slot" in message
    assert "mesh output is planned" in message and "rgb-recon, toy-recon" in message
    overrides = ["reconstructor.type=rgb-recon", "reconstructor.config={}", "feedback=[]"]
    load_recipe(path, overrides + ["device=cpu"], registry=toy_registry)
    message = error_of(load_recipe, path, overrides + ["device=cuda:1"], registry=toy_registry)
    assert "device: 'cuda:1': reconstructor 'rgb-recon' runs on cpu only" in message


# ------------------------------------------------------------------ saving
def test_dump_and_save_round_trip(tmp_path, toy_registry):
    recipe = load_recipe(write(tmp_path / "r.yaml", BASE), ["sampler.feedback_sigma_range=[0.5, 2]"], registry=toy_registry)
    out = recipe.save(tmp_path / "run")
    assert out == tmp_path / "run" / "recipe.yaml"
    assert os.listdir(tmp_path / "run") == ["recipe.yaml"]  # no temporary file left behind
    data = yaml.safe_load(out.read_text())
    # fully resolved: preset values are written out, the sections have every default
    assert data["generator"]["config"] == {"num_views": 4, "image_size": 16, "slot_channels": [3]}
    assert data["trainer"]["loss"]["lpips_net"] == "alex"
    RecipeModel.model_validate(data)
    again = load_recipe(out, registry=toy_registry)
    assert again.to_dict() == recipe.to_dict()
    assert again.generator_config == recipe.generator_config


def test_list_recipes_from_registry(tmp_path, toy_registry):
    folder = tmp_path / "shipped"
    folder.mkdir()
    write(folder / "one.yaml", BASE)
    write(folder / "two.yml", BASE)
    write(folder / "notes.txt", "not a recipe")
    toy_registry.add_plugin(_RecipePlugin(folder), name="shipped")
    assert list_recipes(toy_registry) == {"one": folder / "one.yaml", "two": folder / "two.yml"}
    assert load_recipe("two", registry=toy_registry).source == folder / "two.yml"


def test_registry_without_plugins_gives_a_clear_error(tmp_path):
    empty = Registry(load_entry_points=False, disabled=())
    message = error_of(load_recipe, write(tmp_path / "r.yaml", BASE), registry=empty)
    assert "generator.type: no generator named 'toy-gen' is installed" in message
    assert "no generator is available" in message


def test_cameras_must_match_the_generator_views(tmp_path, toy_registry):
    path = write(tmp_path / "base.yaml", BASE)
    recipe = load_recipe(path, registry=toy_registry)
    assert recipe.model.cameras.azimuths_for(4) == [0.0, 90.0, 180.0, 270.0]
    assert recipe.model.cameras.azimuths_for(8)[-1] == 337.5  # the official orbit
    msg = error_of(load_recipe, path, ["cameras.azimuths=[0, 120, 240]"], registry=toy_registry)
    assert "cameras.azimuths" in msg and "has 3 views, but generator 'toy-gen' makes 4" in msg
    assert "give 4 azimuths" in msg
    msg = error_of(load_recipe, path, ["cameras.elevations=[0, 10]"], registry=toy_registry)
    assert "cameras.elevations" in msg and "2 values for 4 views" in msg


def test_several_bad_values_each_get_their_own_fix(tmp_path, toy_registry):
    path = write(tmp_path / "r.yaml", BASE + "  mode: jiont\n  solver: eulr\ndtype: fp23\n")
    message = error_of(load_recipe, path, registry=toy_registry)
    assert message.count("\n") == 0
    assert message.startswith(f"{path}: ")
    parts = message.split("; also ")
    assert len(parts) == 3
    expected = [("sampler.mode", "'jiont'", "did you mean 'joint'?"), ("sampler.solver", "'eulr'", "did you mean 'euler'?"), ("dtype", "'fp23'", "did you mean 'fp32'?")]
    for key, value, fix in expected:
        [part] = [p for p in parts if f"{key}: {value} is not allowed" in p]
        assert f"(fix: {fix}" in part, part


def test_decode_only_input_views_warns_for_a_temporal_decoder():
    """SVD's temporal VAE decodes the views of an object together: decoding views 0/2/4/6 alone
    gives other images than decoding all 8 and selecting them (checked below on the tiny VAE)."""
    import warnings

    import torch

    with pytest.warns(UserWarning, match=r"decode_only_input_views=true: sampler.decode_only_input_views: generator 'svd' decodes views together"):
        load_recipe("svd-lgm", ["sampler.decode_only_input_views=true"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_recipe("svd-lgm")  # off: no warning
        load_recipe("svd-lgm", ["sampler.decode_only_input_views=true", "sampler.mode=none"])  # nothing decoded early
    from ouroboros_plugins.generators.svd import SPEC

    # pixel-space autoencoders decode each view alone
    assert not SPEC.make_config(None, "tiny32").decoder_mixes_views()
    assert not SPEC.make_config(None, "tiny-pixel").decoder_mixes_views()

    torch.manual_seed(0)
    gen = SPEC.build(None, preset="tiny").eval()
    assert gen.config.decoder_mixes_views()
    z = torch.randn(1, 8, 4, 4, 4)
    with torch.no_grad():
        assert (gen.decode(z)[:, [0, 2, 4, 6]] - gen.decode(z[:, [0, 2, 4, 6]])).abs().max() > 1e-4
