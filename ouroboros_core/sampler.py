"""The generic recursive sampler (Algorithm 2 of the paper, DESIGN.md "Data flow").

Written only against the contracts in ``interfaces.py``::

    maps = zeros                                   (step 0)
    for sigma_i in karras(steps) + [0]:
        feats = sum over encoders of encoder(maps[encoder.map_kind])   (slot by slot)
        x0    = generator.denoise(x, sigma_i, ctx, feats)
        if feedback is due at step i:
            views = generator.decode(x0)[reconstructor.input_views]
            rep   = reconstructor.reconstruct(views, cams[input_views], sigma_i)
            out   = rep.render(all cams, generator.image_size)
            maps  = feedback_maps(out)             (used from step i + 1 on)
            resample mode: x0 <- (1 - w) x0 + w encode(out.rgb)
        x = euler/heun step(x, x0, sigma_i, sigma_{i+1})
    views = decode(x); rep = reconstruct(views, sigma=None)   ("fresh") or the last step's

Feedback is due when the mode is not "none", ``i % feedback_every == 0`` and sigma_i lies in
``feedback_sigma_range``; otherwise the previous maps (and their features) are kept, or with
``skipped_steps: zero`` replaced by the step-0 zero maps (the official ``recon_every_n_steps``).
With ``final_reconstruction: last_step`` the last step always reconstructs.

Precision: with an ``autocast`` dtype the models of the loop run under ``torch.autocast``
while the conditioning and the rendering stay in fp32, as in the official script (see
:data:`AUTOCAST_STAGES`).
"""

from __future__ import annotations

import contextlib
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from .cameras import Cameras
from .edm import euler_step, heun_step, initial_noise_scale, karras_sigmas
from .errors import RecipeError, SamplingError
from .interfaces import FeedbackEncoder, MultiViewGenerator, Reconstructor, Representation, encode_feedback
from .maps import feedback_maps, zero_maps
from .recipe import MapsConfig, SamplerConfig

STAGES = ("prepare", "denoise", "decode", "reconstruct", "render", "encode")


@dataclass
class StepInfo:
    """What a callback sees after step ``index`` (tensors are the sampler's own: do not modify).

    ``x`` is the latent *after* the step (at ``sigma_next``); ``maps`` are the maps the next
    step will use; ``representation`` is the latest reconstruction (``None`` before the first).
    """

    index: int
    sigma: float
    sigma_next: float
    x: torch.Tensor
    x0: torch.Tensor
    maps: dict[str, torch.Tensor]
    representation: Representation | None
    feedback: bool


@dataclass
class SampleResult:
    """The output of one sampling run.

    views: ``(B, V, 3, H, W)`` in [0, 1] (clamped); latents: the final latents;
    timings: seconds per stage (prepare, denoise, decode, reconstruct, render, encode: the
    feedback encoders and resample's ``generator.encode``) plus "total";
    num_reconstructions: reconstructor calls, the final one included.
    """

    views: torch.Tensor
    representation: Representation
    latents: torch.Tensor
    timings: dict[str, float] = field(default_factory=dict)
    num_reconstructions: int = 0


Callback = Callable[[StepInfo], Any]


class ProgressBar:
    """A tqdm progress bar as a step callback (tqdm is imported when the bar is created)."""

    def __init__(self, total: int, desc: str = "sampling", **tqdm_kwargs: Any):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, **tqdm_kwargs)

    def __call__(self, info: StepInfo) -> None:
        self.bar.set_postfix(sigma=f"{info.sigma:.3g}", feedback=info.feedback)
        self.bar.update(1)
        if info.sigma_next == 0:
            self.bar.close()


#: stages that run under torch.autocast when the sampler has an ``autocast`` dtype: the
#: models of the loop. "prepare" (the conditioning: the official script encodes it before
#: entering autocast) and "render" (rasterising and the feedback maps: the official renderer
#: forces fp32) stay in full precision.
AUTOCAST_STAGES = ("denoise", "decode", "reconstruct", "encode")


class _Stages:
    """Enters one stage of the loop: accumulates its wall time (synchronising CUDA so GPU work
    is attributed correctly) and sets its precision (autocast on or off, see
    :data:`AUTOCAST_STAGES`)."""

    def __init__(self, device: torch.device, autocast: torch.dtype | None):
        self.sync = device.type == "cuda"
        self.device_type = device.type
        self.autocast = autocast
        self.totals = {stage: 0.0 for stage in STAGES}

    def _precision(self, stage: str) -> contextlib.AbstractContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        # explicitly off outside the autocast stages, so a caller's own autocast cannot leak in
        return torch.autocast(self.device_type, dtype=self.autocast, enabled=stage in AUTOCAST_STAGES)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if self.sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            with self._precision(stage):
                yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self.totals[stage] += time.perf_counter() - start


class RecursiveSampler:
    """Runs Algorithm 2 for any generator / reconstructor / feedback-encoder combination."""

    def __init__(
        self,
        generator: MultiViewGenerator,
        reconstructor: Reconstructor,
        encoders: Sequence[FeedbackEncoder],
        sampler_config: SamplerConfig,
        maps_config: MapsConfig,
        autocast: torch.dtype | None = None,
    ):
        """``autocast`` (fp16 or bf16): run the :data:`AUTOCAST_STAGES` under
        ``torch.autocast`` on the components' device (the recipe's ``autocast: true``, whose
        components keep fp32 weights); ``None`` computes in the components' own dtypes."""
        self.generator = generator
        self.reconstructor = reconstructor
        self.encoders = list(encoders)
        self.config = sampler_config
        self.maps_config = maps_config
        self.autocast = autocast
        # each map kind once, in the order the encoders ask for them
        self.map_kinds = list(dict.fromkeys(e.map_kind for e in self.encoders))
        unknown = sorted(set(sampler_config.feedback_maps or ()) - set(self.map_kinds))
        if unknown:
            raise RecipeError(
                f"sampler.feedback_maps: {unknown} is not read by any feedback encoder",
                hint=f"choose from {self.map_kinds} (the encoders' map kinds), or leave it unset",
            )

    # ------------------------------------------------------------------ schedule
    def sigmas(self, device: torch.device | None = None) -> torch.Tensor:
        """The ``steps + 1`` noise levels, ending at 0."""
        c = self.config
        return karras_sigmas(c.steps, c.sigma_min, c.sigma_max, c.rho, dtype=torch.float64, device=device)

    def feedback_due(self, index: int, sigma: float) -> bool:
        """Whether step ``index`` (at ``sigma``) reconstructs and renders new feedback."""
        c = self.config
        if c.mode == "none" or index % c.feedback_every != 0:
            return False
        if c.feedback_sigma_range is not None:
            low, high = c.feedback_sigma_range
            return low <= sigma <= high
        return True

    # ------------------------------------------------------------------ pieces
    def features(self, maps: dict[str, torch.Tensor]) -> list[torch.Tensor] | None:
        """Sum of every encoder's features, slot by slot (``None`` without encoders)."""
        return encode_feedback(self.encoders, maps)

    def _input_view_indices(self) -> list[int] | None:
        return self.reconstructor.input_views

    def _views_for_reconstruction(self, latents: torch.Tensor, stage: _Stages) -> torch.Tensor:
        """Decoded views the reconstructor reads, ``(B, V_in, 3, H, W)`` (not clamped)."""
        idx = self._input_view_indices()
        with stage("decode"):
            if idx is not None and self.config.decode_only_input_views:
                return self.generator.decode(latents[:, idx])
            views = self.generator.decode(latents)
        return views if idx is None else views[:, idx]

    def _reconstruct(self, views: torch.Tensor, cameras: Cameras, sigma: torch.Tensor | None, stage: _Stages, index: int) -> Representation:
        with stage("reconstruct"):
            rep = self.reconstructor.reconstruct(views, cameras.select_views(self._input_view_indices()), sigma)
        data = rep.tensors()
        finite = torch.stack([torch.isfinite(t).all() for t in data.values()]).tolist() if data else []  # one sync
        bad = [name for name, ok in zip(data, finite) if not ok]
        if bad:
            when = "the final reconstruction" if sigma is None else f"step {index} (sigma {float(sigma.flatten()[0]):.4g})"
            raise SamplingError(
                f"the reconstruction ({type(rep).__name__} {', '.join(bad)}) became NaN or infinite at {when}",
                hint="check the reconstructor's weights (`ouroboros3d weights inspect`), or run in fp32 (dtype: fp32)",
            )
        return rep

    @staticmethod
    def _check_finite(t: torch.Tensor, what: str, index: int, sigma: float) -> None:
        if not torch.isfinite(t).all():
            raise SamplingError(
                f"the {what} became NaN or infinite at step {index} (sigma {sigma:.4g})",
                hint="run in fp32 (dtype: fp32 in the recipe), or check the weights and the input image",
            )

    # ------------------------------------------------------------------ the loop
    @torch.no_grad()
    def __call__(
        self,
        image: torch.Tensor,
        cameras: Cameras,
        generator: torch.Generator | None = None,
        callbacks: Iterable[Callback] = (),
    ) -> SampleResult:
        """Generate views and a 3D representation for ``image`` ``(B, 3, H, W)`` in [0, 1].

        ``cameras`` are the generator's views (batch 1 is repeated to B). ``generator`` seeds
        the initial noise.
        """
        cfg, gen = self.config, self.generator
        callbacks = list(callbacks)
        param = next(gen.parameters(), None)
        device = param.device if param is not None else image.device
        stage = _Stages(device, self.autocast)
        start = time.perf_counter()

        B = image.shape[0]
        cameras = cameras.repeat(B).to(device)
        with stage("prepare"):
            ctx = gen.prepare(image.to(device), cameras, generator=generator)
        x = gen.initial_noise(ctx, generator) * initial_noise_scale(cfg.sigma_max, gen.sigma_data, cfg.init_noise)
        sigmas = self.sigmas()  # float64 on the CPU: exact values for the schedule logic
        size = gen.image_size
        map_shape = (B, cameras.num_views, 3, size, size)
        maps = zero_maps(self.map_kinds, map_shape, device, x.dtype)
        feats: list[torch.Tensor] | None = None
        maps_changed = True
        representation: Representation | None = None
        num_recon = 0

        for i in range(cfg.steps):
            s, s_next = float(sigmas[i]), float(sigmas[i + 1])
            sigma_b = torch.full((B,), s, device=device, dtype=x.dtype)
            if self.encoders and maps_changed:  # features only change with the maps
                with stage("encode"):
                    feats = self.features(maps)
                maps_changed = False
            with stage("denoise"):
                x0 = gen.denoise(x, sigma_b, ctx, feats)
            self._check_finite(x0, "x0 prediction", i, s)

            due = self.feedback_due(i, s)
            if not due and cfg.mode != "none" and cfg.skipped_steps == "zero" and self.map_kinds and i > 0:
                if any(m.any() for m in maps.values()):  # one sync per skipped step at most
                    maps = zero_maps(self.map_kinds, map_shape, device, x.dtype)
                    maps_changed = True
            last_step_recon = not due and cfg.mode != "none" and cfg.final_reconstruction == "last_step" and i == cfg.steps - 1
            if last_step_recon:  # the reconstruction of the last step's x0 is the result
                views = self._views_for_reconstruction(x0, stage)
                representation = self._reconstruct(views, cameras, sigma_b, stage, i)
                num_recon += 1
            if due:
                views = self._views_for_reconstruction(x0, stage)
                representation = self._reconstruct(views, cameras, sigma_b, stage, i)
                num_recon += 1
                if self.map_kinds or cfg.mode == "resample":  # nothing reads the renders otherwise
                    with stage("render"):
                        out = representation.render(cameras, size, size, background=self.maps_config.rgb_background)
                        if self.map_kinds:
                            maps = feedback_maps(out, cameras, self.map_kinds, self.maps_config)
                            if cfg.feedback_maps is not None:  # the others stay at their step-0 zeros
                                maps = {k: m if k in cfg.feedback_maps else torch.zeros_like(m) for k, m in maps.items()}
                            maps_changed = True
                if cfg.mode == "resample":
                    with stage("encode"):
                        rendered = gen.encode(out.rgb.clamp(0, 1).to(x0.dtype))
                    x0 = (1 - cfg.resample_weight) * x0 + cfg.resample_weight * rendered

            with stage("denoise"):
                if cfg.solver == "heun":
                    step_feats = feats

                    def denoise_at(x_: torch.Tensor, sigma_: float) -> torch.Tensor:
                        return gen.denoise(x_, torch.full((B,), float(sigma_), device=device, dtype=x_.dtype), ctx, step_feats)

                    x = heun_step(x, x0, s, s_next, denoise_at)
                else:
                    x = euler_step(x, x0, s, s_next)
            self._check_finite(x, "latent", i, s)
            info = StepInfo(i, s, s_next, x, x0, maps, representation, due)
            for callback in callbacks:
                callback(info)

        views_all = self._decode_all(x, stage)
        if cfg.final_reconstruction == "fresh" or representation is None:
            idx = self._input_view_indices()
            representation = self._reconstruct(views_all if idx is None else views_all[:, idx], cameras, None, stage, cfg.steps)
            num_recon += 1
        timings = dict(stage.totals)
        if stage.sync:
            torch.cuda.synchronize()
        timings["total"] = time.perf_counter() - start
        return SampleResult(views_all, representation, x, timings, num_recon)

    def _decode_all(self, latents: torch.Tensor, stage: _Stages) -> torch.Tensor:
        with stage("decode"):
            return self.generator.decode(latents).clamp(0, 1)
