"""Entry module of the toy plugin: builds specs only (no torch), exactly as a real plugin should."""

from pathlib import Path

from ouroboros_core import hookimpl
from ouroboros_core.components import ComponentSpec

from .configs import PixelGeneratorConfig, SphereReconstructorConfig

GENERATOR = ComponentSpec(
    kind="generator",
    name="toy-pixels",
    config=PixelGeneratorConfig,
    factory="ouroboros3d_toy.models:PixelGenerator",
    presets={"tiny": {"image_size": 8, "num_views": 4}},
    devices=("cpu",),
    description="exact denoiser of Gaussian pixel data",
)
RECONSTRUCTOR = ComponentSpec(
    kind="reconstructor",
    name="toy-sphere",
    config=SphereReconstructorConfig,
    factory="ouroboros3d_toy.models:SphereReconstructor",
    presets={"tiny": {"input_views": [0, 2]}},
    devices=("cpu",),
    description="a coloured sphere from the mean input colour",
)


@hookimpl
def ouroboros3d_register_components(register):
    register(GENERATOR)
    register(RECONSTRUCTOR)


@hookimpl
def ouroboros3d_register_recipes(register):
    register(Path(__file__).parent / "recipes")
