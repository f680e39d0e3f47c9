"""The ``instantmesh`` reconstructor slot: declared (config, Mesh output), not implemented."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ouroboros_core.errors import PluginError
from ouroboros_core.testing import check_component
from ouroboros_plugins.reconstructors.instantmesh import SLOT_MESSAGE, SPEC, InstantMeshConfig, ouroboros3d_register_components


def test_registers_a_slot_with_a_message():
    got = []
    ouroboros3d_register_components(register=got.append)
    assert got == [SPEC]
    assert (SPEC.kind, SPEC.name, SPEC.slot, SPEC.tiny_preset) == ("reconstructor", "instantmesh", True, None)
    assert SPEC.slot_message == SLOT_MESSAGE
    # the message says what it is and how a plugin fills it
    for part in ("placeholder slot", "kind='reconstructor'", "InstantMeshConfig", "ouroboros_core.mesh.Mesh", "replaces this slot"):
        assert part in SLOT_MESSAGE


def test_config_schema_declares_a_mesh_output():
    config = SPEC.make_config({"grid_resolution": 96, "texture": "uv"}, preset="base")
    assert isinstance(config, InstantMeshConfig)
    assert type(config).representation == "mesh" and type(config).renders == {"rgb", "alpha", "depth"}
    assert (config.variant, config.default_weights) == ("base", "TencentARC/InstantMesh:instant_mesh_base.ckpt")
    assert (config.grid_resolution, config.texture, config.texture_resolution) == (96, "uv", 1024)
    with pytest.raises(ValidationError, match="texture"):
        SPEC.make_config({"texture": "ptex"})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        SPEC.make_config({"grid_res": 64})


def test_building_the_slot_raises_its_message():
    with pytest.raises(PluginError) as info:
        SPEC.build(preset="large")
    assert SLOT_MESSAGE in str(info.value)


def test_conformance_kit_checks_the_slot_spec():
    check_component(SPEC)  # slots: spec, config round trip and presets only
