"""The toy modules, imported only when a recipe builds them."""

from dataclasses import dataclass

import torch

from ouroboros_core.cameras import Cameras, camera_rays
from ouroboros_core.interfaces import GenerationContext, MultiViewGenerator, Reconstructor, RenderOutput, Representation


class PixelGenerator(MultiViewGenerator):
    """Exact x0 of pixels distributed N(mean, std^2) in every view; identity autoencoder."""

    def __init__(self, config):
        super().__init__()
        self.config = config

    def prepare(self, image, cameras, **kwargs):
        B = image.shape[0]
        return GenerationContext(B, cameras, (B, self.config.num_views, 3, self.config.image_size, self.config.image_size), {})

    def denoise(self, x, sigma, context, feedback=None):
        m, d = self.config.mean, self.config.std
        return m + d**2 / (d**2 + sigma.view(-1, 1, 1, 1, 1) ** 2) * (x - m)

    def encode(self, images):
        return images

    def decode(self, latents):
        return latents


@dataclass
class Sphere(Representation):
    colour: torch.Tensor  # (B, 3)
    radius: float

    def render(self, cameras: Cameras, height, width, background=1.0):
        o, d = camera_rays(cameras, height, width)
        b = (o * d).sum(-1)
        disc = b**2 - ((o * o).sum(-1) - self.radius**2)
        hit = disc > 0
        t = torch.where(hit, -b - disc.clamp_min(0).sqrt(), torch.zeros_like(b))
        z = t * (d * cameras.c2w[..., :3, 2][:, :, None, None, :]).sum(-1)
        alpha = hit.float().unsqueeze(2)
        rgb = self.colour[:, None, :, None, None] * alpha + background * (1 - alpha)
        return RenderOutput(rgb, alpha, z.unsqueeze(2))

    def save(self, path, index=0):
        raise NotImplementedError("the toy sphere cannot be saved")

    @property
    def batch_size(self):
        return self.colour.shape[0]


class SphereReconstructor(Reconstructor):
    def __init__(self, config):
        super().__init__()
        self.config = config

    def reconstruct(self, images, cameras, sigma=None):
        return Sphere(images.mean(dim=(1, 3, 4)), self.config.radius)
