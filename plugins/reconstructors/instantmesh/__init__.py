"""Reconstructor slot ``instantmesh``: a declared, not implemented, mesh reconstructor.

It publishes the config schema an InstantMesh-style reconstructor (multi-view images to a
textured mesh through FlexiCubes) would take, and declares that it produces a
:class:`ouroboros_core.mesh.Mesh`, so that recipes, ``plugins list`` and the recursive sampler
can already be written against it. Building it raises :class:`PluginError` with
:data:`SLOT_MESSAGE`; the recipe validator reports the same message before anything is built.

Torch-free: this entry module only declares the component.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ouroboros_core import hookimpl
from ouroboros_core.components import ComponentSpec, ReconstructorConfig
from ouroboros_core.errors import PluginError

SLOT_MESSAGE = (
    "reconstructor 'instantmesh' is a placeholder slot: ouroboros3d declares its config and that it "
    "produces a Mesh, but ships no implementation. To fill it, publish a plugin whose entry point "
    "(group 'ouroboros3d') registers a ComponentSpec(kind='reconstructor', config=a subclass of "
    "ouroboros_plugins.reconstructors.instantmesh.InstantMeshConfig) whose module implements "
    "ouroboros_core.interfaces.Reconstructor and returns an ouroboros_core.mesh.Mesh from reconstruct(); "
    "register it as 'instantmesh' (a real component replaces this slot) or under its own name. Until then use "
    "reconstructor 'lgm'."
)


class InstantMeshConfig(ReconstructorConfig):
    """Settings of an InstantMesh-style mesh reconstructor (defaults: InstantMesh large)."""

    representation: ClassVar[str] = "mesh"

    #: which InstantMesh network: "large" (16 transformer layers) or "base" (12)
    variant: Literal["large", "base"] = "large"
    #: where weights come from when the recipe's ``weights:`` is empty (file, folder or hub id[:file])
    default_weights: str = "TencentARC/InstantMesh:instant_mesh_large.ckpt"
    #: side of the square input views
    input_size: int = Field(320, ge=8)
    #: FlexiCubes grid resolution and the half-extent of the cube it covers
    grid_resolution: int = Field(128, ge=8)
    grid_scale: float = Field(2.1, gt=0)
    #: "vertex_colors", or "uv": bake a UV texture map of ``texture_resolution`` squared texels
    texture: Literal["vertex_colors", "uv"] = "vertex_colors"
    texture_resolution: int = Field(1024, ge=16)


PRESETS = {
    "large": {"variant": "large", "default_weights": "TencentARC/InstantMesh:instant_mesh_large.ckpt"},
    "base": {"variant": "base", "default_weights": "TencentARC/InstantMesh:instant_mesh_base.ckpt"},
}


def build(config: InstantMeshConfig):
    """The slot's factory: there is nothing to build."""
    raise PluginError(SLOT_MESSAGE, hint="use reconstructor 'lgm', or install a plugin that implements this slot")


SPEC = ComponentSpec(
    kind="reconstructor",
    name="instantmesh",
    config=InstantMeshConfig,
    factory="ouroboros_plugins.reconstructors.instantmesh:build",
    presets=PRESETS,
    description="mesh reconstructor slot (InstantMesh-style config; produces a Mesh; not implemented)",
    slot=True,
    slot_message=SLOT_MESSAGE,
    tiny_preset=None,
)


@hookimpl
def ouroboros3d_register_components(register) -> None:
    register(SPEC)


__all__ = ["SPEC", "SLOT_MESSAGE", "InstantMeshConfig", "build", "ouroboros3d_register_components"]
