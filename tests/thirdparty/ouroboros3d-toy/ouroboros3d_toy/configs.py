"""Configs of the toy components (torch-free: the entry module imports them)."""

from ouroboros_core.components import GeneratorConfig, ReconstructorConfig


class PixelGeneratorConfig(GeneratorConfig):
    num_views: int = 4
    image_size: int = 16
    mean: float = 0.5
    std: float = 0.2


class SphereReconstructorConfig(ReconstructorConfig):
    radius: float = 0.5
    image_size: int = 8
