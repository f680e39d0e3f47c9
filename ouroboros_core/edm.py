"""EDM noise math shared by the sampler and the trainer (Karras et al. 2022).

Everything is written in terms of the EDM noise level sigma: ``x = x0 + sigma * eps``.
Generators return x0 predictions, so the samplers below only need the x0 estimate; the
preconditioning helpers are here for generators that wrap a raw network ``F``:
``x0 = c_skip * x + c_out * F(c_in * x, c_noise)``.

Two parameterisations of ``c_out``:

- ``"edm"``: ``c_out = +sigma sigma_data / sqrt(sigma^2 + sigma_data^2)`` (EDM's F-prediction).
- ``"v"``: the same magnitude with a minus sign, which is what SVD's v-prediction scheduler
  uses (``c_out = -sigma / sqrt(sigma^2 + 1)`` for sigma_data = 1).

``c_noise = 0.25 ln sigma`` in both (SVD's continuous timestep).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch

Parameterization = Literal["edm", "v"]


@dataclass(frozen=True)
class Preconditioning:
    """The four EDM coefficients for one batch of sigmas (each shaped like ``sigma``)."""

    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor
    c_noise: torch.Tensor


def preconditioning(
    sigma: torch.Tensor | float,
    sigma_data: float = 1.0,
    parameterization: Parameterization = "v",
) -> Preconditioning:
    """EDM preconditioning coefficients for noise level(s) ``sigma``."""
    sigma = torch.as_tensor(sigma)
    if not sigma.is_floating_point():
        sigma = sigma.double()
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data / total.sqrt()
    if parameterization == "v":
        c_out = -c_out
    elif parameterization != "edm":
        raise ValueError(f"unknown parameterization {parameterization!r}; use 'edm' or 'v'")
    c_in = 1 / total.sqrt()
    c_noise = 0.25 * torch.log(sigma)
    return Preconditioning(c_skip, c_out, c_in, c_noise)


def karras_sigmas(
    steps: int,
    sigma_min: float = 0.002,
    sigma_max: float = 700.0,
    rho: float = 7.0,
    append_zero: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Karras et al.'s schedule, decreasing from ``sigma_max`` to ``sigma_min``.

    ``sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``;
    a final 0 is appended (``steps + 1`` values) so the last step lands on the x0 estimate.
    Computed in float64 and cast, so the list does not depend on ``dtype``'s rounding.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if steps == 1:
        sigmas = torch.tensor([sigma_max], dtype=torch.float64)
    else:
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
        lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
        sigmas = (hi + ramp * (lo - hi)) ** rho
    if append_zero:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas.to(dtype=dtype, device=device)


def sample_training_sigmas(
    batch_size: int,
    p_mean: float = 1.0,
    p_std: float = 1.6,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Training noise levels ``sigma = exp(N(p_mean, p_std^2))``, one per sample ``(B,)``.

    Drawn on the generator's device (CPU by default) and then moved, so a seeded CPU
    generator gives the same sigmas on every device.
    """
    gen_device = generator.device if generator is not None else "cpu"
    z = torch.randn(batch_size, generator=generator, device=gen_device, dtype=torch.float32)
    return torch.exp(p_mean + p_std * z).to(device)


def loss_weight(sigma: torch.Tensor, sigma_data: float = 1.0) -> torch.Tensor:
    """EDM's lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2.

    It makes the x0-space error have unit weight relative to the network output's
    (``lambda * c_out^2 = 1``), so every noise level contributes on the same scale.
    """
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def initial_noise_scale(sigma_max: float, sigma_data: float = 1.0, kind: Literal["edm", "diffusers"] = "diffusers") -> float:
    """Factor applied to unit noise to get x_T.

    "edm": ``sigma_max`` (x_T ~ N(0, sigma_max^2), the EDM paper). "diffusers":
    ``sqrt(sigma_max^2 + sigma_data^2)``, what diffusers' Euler scheduler (and so the official
    Ouroboros3D sampler) uses; it also accounts for the data's own variance.
    """
    if kind == "edm":
        return float(sigma_max)
    if kind == "diffusers":
        return math.sqrt(sigma_max**2 + sigma_data**2)
    raise ValueError(f"unknown initial noise kind {kind!r}; use 'edm' or 'diffusers'")


def _expand(sigma: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """``sigma`` (scalar or ``(B,)``) broadcast against ``like`` ``(B, ...)``."""
    sigma = torch.as_tensor(sigma, device=like.device, dtype=like.dtype)
    if sigma.dim() == 0:
        return sigma
    return sigma.reshape(sigma.shape[0], *([1] * (like.dim() - 1)))


def euler_step(x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float) -> torch.Tensor:
    """One Euler step of the probability-flow ODE ``dx/dsigma = (x - x0) / sigma``.

    Written as ``x0 + (x - x0) sigma_next / sigma`` (algebraically ``x + d (sigma_next - sigma)``
    with slope ``d = (x - x0) / sigma``) so that ``sigma_next = 0`` returns ``x0`` exactly.
    """
    s, s_next = _expand(sigma, x), _expand(sigma_next, x)
    return x0 + (x - x0) * (s_next / s)


def heun_step(
    x: torch.Tensor,
    x0: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    denoise: Callable[[torch.Tensor, torch.Tensor | float], torch.Tensor],
) -> torch.Tensor:
    """Heun's second-order step (EDM Algorithm 1).

    ``denoise(x, sigma)`` gives the x0 estimate at the Euler point. The correction is skipped
    when every ``sigma_next`` is 0 (the ODE's slope is undefined there; EDM does the same).
    """
    x_euler = euler_step(x, x0, sigma, sigma_next)
    if bool((torch.as_tensor(sigma_next) == 0).all()):
        return x_euler
    s, s_next = _expand(sigma, x), _expand(sigma_next, x)
    d = (x - x0) / s
    d_next = (x_euler - denoise(x_euler, sigma_next)) / s_next
    return x + (s_next - s) * (d + d_next) / 2
