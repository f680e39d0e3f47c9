"""The LGM reconstructor: views + cameras (+ noise level) to 3D Gaussians.

Pipeline per object: the ``V`` input views are resized to ``input_size``, ImageNet-normalised
and concatenated with the Plücker rays ``[o x d, d]`` of their cameras (9 channels); the
U-Net and a 1x1 conv predict 14 channels per pixel of a ``splat_size`` grid per view; each
pixel becomes one Gaussian (index = view * S^2 + row * S + col) after LGM's activations.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ouroboros_core.cameras import Cameras, camera_rays, plucker_rays
from ouroboros_core.errors import InputError, WeightsError
from ouroboros_core.gaussians import GaussianCloud
from ouroboros_core.interfaces import Reconstructor
from ouroboros_core.weights import load_file, resolve_weights

from .checkpoints import TRAINED_ROTATION, default_filename, has_time_layers, is_time_key
from .config import LGM_FOVY_DEG, LGM_RADIUS, LGMConfig
from .unet import UNet

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: channels per Gaussian: xyz, opacity, scale (3), quaternion wxyz (4), rgb
GAUSSIAN_CHANNELS = 14


class LGMReconstructor(Reconstructor):
    """LGM (optionally time-conditioned as in Ouroboros3D); parameters ``unet.*`` and ``conv.*``."""

    def __init__(self, config: LGMConfig):
        super().__init__()
        self.config = config
        self.unet = UNet(
            in_channels=9,
            out_channels=GAUSSIAN_CHANNELS,
            down_channels=config.down_channels,
            down_attention=config.down_attention,
            mid_attention=config.mid_attention,
            up_channels=config.up_channels,
            up_attention=config.up_attention,
            layers_per_block=config.layers_per_block,
            heads=config.attention_heads,
            groups=config.norm_groups,
            time_proj_channels=config.time_proj_channels if config.time_conditioned else None,
            time_embed_channels=config.time_embed_channels,
        )
        # LGM's extra 1x1 conv after the U-Net (kept for weight compatibility)
        self.conv = nn.Conv2d(GAUSSIAN_CHANNELS, GAUSSIAN_CHANNELS, 1)

    # ------------------------------------------------------------------ inputs
    def network_input(self, images: torch.Tensor, cameras: Cameras) -> torch.Tensor:
        """``(B, V, 9, S, S)``: resized ImageNet-normalised RGB, then Plücker ``[o x d, d]``.

        ``images`` ``(B, V, 3, H, W)`` in [0, 1] on the background; ``cameras`` (B, V), OpenCV.
        """
        if images.dim() != 5 or images.shape[2] != 3:
            raise InputError(f"LGM expects images (B, V, 3, H, W), got {tuple(images.shape)}")
        b, v = images.shape[:2]
        if (cameras.batch_size, cameras.num_views) != (b, v):
            raise InputError(f"cameras are {cameras.batch_size} x {cameras.num_views} but images are {b} x {v} (batch x views)")
        size = self.config.input_size
        dtype = self._dtype()
        x = images.to(dtype).flatten(0, 1)
        if x.shape[-2:] != (size, size):
            antialias = self.config.antialias and x.shape[-1] > size
            x = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=antialias).to(dtype)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=dtype)[:, None, None]
        std = torch.tensor(IMAGENET_STD, device=x.device, dtype=dtype)[:, None, None]
        x = ((x - mean) / std).unflatten(0, (b, v))
        rays = plucker_rays(cameras.to(device=x.device, dtype=torch.float32), size, size).to(dtype)
        return torch.cat([x, rays], dim=2)

    def time_values(self, sigma: torch.Tensor | float | None, batch_size: int, device: torch.device) -> torch.Tensor | None:
        """The U-Net's time input ``(B,)`` for EDM noise levels ``sigma`` (``None`` or 0: clean).

        official: ``0.25 ln sigma``, clean = 0; paper: ``0.25 ln clamp(sigma, sigma_range)``,
        clean = ``clean_time``; none: ``None``.
        """
        mode = self.config.time_input
        if mode == "none":
            return None
        clean = 0.0 if mode == "official" else self.config.clean_time
        if sigma is None:
            return torch.full((batch_size,), clean, device=device, dtype=torch.float32)
        s = torch.as_tensor(sigma, device=device, dtype=torch.float32).reshape(-1)
        if s.numel() == 1:
            s = s.expand(batch_size)
        elif s.numel() != batch_size:
            raise ValueError(f"sigma has {s.numel()} values for a batch of {batch_size}")
        noisy = s > 0
        if mode == "paper":
            s = s.clamp(*self.config.sigma_range)
        t = 0.25 * torch.log(torch.where(noisy, s, torch.ones_like(s)))
        return torch.where(noisy, t, torch.full_like(t, clean))

    # ------------------------------------------------------------------ network
    def gaussian_params(self, x: torch.Tensor, t: torch.Tensor | None, cameras: Cameras | None = None) -> torch.Tensor:
        """Activated Gaussians ``(B, V*S*S, 14)`` in LGM's layout from ``x`` ``(B, V, 9, S, S)``.

        Channels: xyz (clamped), opacity (sigmoid), scale (0.1 softplus), quaternion wxyz
        (normalised as ``rotation`` says), rgb (0.5 tanh + 0.5). With ``position: ray`` the
        first channel is a depth offset along each splat pixel's ray of ``cameras`` instead.
        """
        b, v = x.shape[:2]
        raw = self.conv(self.unet(x.flatten(0, 1), num_views=v, t=t))
        s = raw.shape[-1]
        raw = raw.reshape(b, v, GAUSSIAN_CHANNELS, s, s).permute(0, 1, 3, 4, 2).reshape(b, v * s * s, GAUSSIAN_CHANNELS).float()
        bound = self.config.position_bound
        if self.config.position == "ray":
            if cameras is None:
                raise ValueError("position: ray needs the cameras of the input views")
            origins, directions = camera_rays(cameras.to(device=raw.device, dtype=torch.float32), s, s)
            origins, directions = origins.reshape(b, v * s * s, 3), directions.reshape(b, v * s * s, 3)
            depth = origins.norm(dim=-1, keepdim=True) + raw[..., 0:1]
            pos = (origins + depth * directions).clamp(-bound, bound)
        else:
            pos = raw[..., 0:3].clamp(-bound, bound)
        opacity = torch.sigmoid(raw[..., 3:4])
        scale = 0.1 * F.softplus(raw[..., 4:7])
        quat_dim = 1 if self.config.rotation == "official" else -1  # official: across all Gaussians
        quat = F.normalize(raw[..., 7:11], dim=quat_dim)
        rgb = 0.5 * torch.tanh(raw[..., 11:14]) + 0.5
        return torch.cat([pos, opacity, scale, quat, rgb], dim=-1)

    def compile_targets(self) -> list[nn.Module]:
        """What ``compile: true`` compiles: the U-Net (Gaussian activations and cameras stay eager)."""
        return [self.unet]

    def forward(self, images: torch.Tensor, cameras: Cameras, sigma: torch.Tensor | float | None = None) -> GaussianCloud:
        """Gaussians for ``images`` ``(B, V, 3, H, W)`` in [0, 1] seen by ``cameras`` (B, V).

        ``sigma`` ``(B,)`` (or one value) is the EDM noise level of the views; ``None`` or 0
        means clean. With ``rotation: official`` the cloud is rendered from raw quaternions.
        """
        x = self.network_input(images, cameras)
        params = self.gaussian_params(x, self.time_values(sigma, x.shape[0], x.device), cameras)
        return GaussianCloud(
            means=params[..., 0:3],
            quats=params[..., 7:11],
            scales=params[..., 4:7],
            opacities=params[..., 3],
            colors=params[..., 11:14],
            raw_quaternions=self.config.rotation == "official",
            near_plane=self.config.near_plane,
            alpha_max=self.config.alpha_max,
            save_min_opacity=self.config.ply_opacity_threshold,
        )

    def reconstruct(self, images: torch.Tensor, cameras: Cameras, sigma: torch.Tensor | None = None) -> GaussianCloud:
        return self(images, cameras, sigma)

    def _dtype(self) -> torch.dtype:
        return self.conv.weight.dtype

    # ------------------------------------------------------------------ weights
    @property
    def default_weights_filename(self) -> str:
        """The file looked for in a folder or hub repository given without a file name."""
        return default_filename(self.config.time_conditioned, self.config.rotation)

    def convert_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Drop LGM's LPIPS keys (if a training checkpoint kept them); refuse time layers for a
        plain model (they would be silently meaningless)."""
        converted = {k: v for k, v in state_dict.items() if not k.startswith("lpips_loss.")}
        if not self.config.time_conditioned and has_time_layers(converted):
            raise WeightsError(
                "these weights hold Ouroboros3D time-conditioning layers (unet.time_embed.*, *.emb_layers.*) "
                "but the LGM config has time_input: none",
                hint="set time_input: official (preset 'official' for recon_model.pth)",
            )
        return converted

    def allowed_missing(self, state_dict: Mapping[str, torch.Tensor]) -> set[str]:
        """Plain LGM weights into a time-conditioned model: the time layers keep their init
        (zero projections, so the model computes exactly plain LGM until trained)."""
        if not self.config.time_conditioned or has_time_layers(state_dict):
            return set()
        return {k for k in self.state_dict() if is_time_key(k)}

    def load_weights(self, source: str) -> None:
        """Load a file, folder or ``hub-id[:filename]`` strictly (see ``ouroboros_core.weights``)."""
        path = resolve_weights(source, self.default_weights_filename)
        trained = TRAINED_ROTATION.get(path.name)
        if trained is not None and trained != self.config.rotation:
            raise WeightsError(
                f"{path.name} was trained with rotation {trained!r} but the LGM config has rotation {self.config.rotation!r}",
                hint=f"set rotation: {trained}" + (" or use model_fp16_fixrot.safetensors" if path.name == "model_fp16.safetensors" else ""),
                where=str(path),
            )
        diff = load_file(self, path)
        if diff.allowed_missing:
            log.info(
                "%s has no time-conditioning layers: %d time tensors keep their zero initialisation, "
                "so the model behaves as plain LGM until trained",
                path.name,
                len(diff.allowed_missing),
            )


def lgm_cameras(
    azimuths_deg: Sequence[float] = (0.0, 90.0, 180.0, 270.0), elevation_deg: float = 0.0, batch_size: int = 1, **kwargs: Any
) -> Cameras:
    """LGM's default cameras: an orbit at radius 1.5 with a 49.1 degree field of view."""
    return Cameras.orbit(azimuths_deg, elevation_deg, LGM_RADIUS, LGM_FOVY_DEG, batch_size, **kwargs)


def build(config: LGMConfig) -> LGMReconstructor:
    """Factory named by the component spec."""
    return LGMReconstructor(config)

