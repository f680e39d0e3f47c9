"""Recipe schema: which components to combine and how to run them.

A recipe is a YAML file with one section per concern. Components are ``type`` + ``config``
(+ optional ``preset``) and are validated against the owning plugin's config model; the other
sections are validated by the models below. Loading, ``extends:``, ``--set`` overrides and
cross-component checks are implemented further down in this module.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ComponentEntry(_Section):
    """One component: the plugin name, an optional preset and the settings on top of it."""

    type: str
    preset: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    #: where to load weights from: a local file, a folder or ``hub-id[:filename]``
    weights: str | None = None


class MapsConfig(_Section):
    """How feedback maps are computed from renders (see ``ouroboros_core.maps``)."""

    #: "canonical": world xyz in [-bound, bound]^3 mapped to [0, 1] (the paper);
    #: "official": the official code's position-map signal, reproduced exactly.
    ccm: Literal["canonical", "official"] = "canonical"
    bound: float = 1.0
    ccm_background: float = 0.5
    rgb_background: float = 1.0
    #: alpha below which a pixel counts as background for the canonical map
    alpha_threshold: float = 0.5


class SamplerConfig(_Section):
    """The recursive sampler (Algorithm 2)."""

    steps: int = Field(25, ge=1)
    sigma_min: float = Field(0.002, gt=0)
    sigma_max: float = Field(700.0, gt=0)
    rho: float = 7.0
    solver: Literal["euler", "heun"] = "euler"
    #: none: two-stage; resample: blend x0 with the encoded renders; joint: Ouroboros3D feedback
    mode: Literal["none", "resample", "joint"] = "joint"
    #: reconstruct and render every k-th step (others reuse the last maps)
    feedback_every: int = Field(1, ge=1)
    #: only give feedback while sigma lies in [low, high]
    feedback_sigma_range: tuple[float, float] | None = None
    #: resample mode: x0 <- (1 - w) x0 + w encode(render)
    resample_weight: float = Field(0.5, ge=0, le=1)
    #: "diffusers": x_T = sqrt(sigma_max^2 + sigma_data^2) n (what SVD's scheduler does);
    #: "edm": x_T = sigma_max n
    init_noise: Literal["edm", "diffusers"] = "diffusers"
    #: "fresh": reconstruct the final views again with sigma = None (clean);
    #: "last_step": keep the last step's reconstruction (the official code)
    final_reconstruction: Literal["fresh", "last_step"] = "fresh"
    #: decode only the views the reconstructor reads (feedback maps still cover every view)
    decode_only_input_views: bool = False


class LossConfig(_Section):
    """Reconstruction loss of the joint trainer."""

    color: Literal["l1", "mse"] = "l1"
    color_weight: float = 1.0
    lpips_weight: float = 1.0
    lpips_net: Literal["alex", "vgg"] = "alex"
    #: load LPIPS with a random trunk (offline tests); never for real training
    lpips_random_trunk: bool = False
    alpha_weight: float = 0.0


class DataConfig(_Section):
    """Training data."""

    kind: Literal["official", "procedural"] = "procedural"
    root: str | None = None
    ids_file: str | None = None
    num_views: int = 8
    image_size: int = 512
    #: official layout: number of orbit views rendered per object
    orbit_views: int = 16
    random_start_view: bool = True
    num_objects: int | None = None


class TrainerConfig(_Section):
    """The joint self-conditioning trainer (Algorithm 1)."""

    #: module-path prefixes that train (e.g. "generator", "generator.plucker", "feedback");
    #: everything else is frozen
    trainable: list[str] = Field(default_factory=lambda: ["generator", "reconstructor", "feedback"])
    lr: float = 1e-5
    #: learning-rate multipliers by prefix, e.g. {"reconstructor": 0.5}
    lr_scale: dict[str, float] = Field(default_factory=dict)
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 1
    grad_accum: int = 1
    max_steps: int = 1000
    grad_clip: float | None = 1.0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    ema_decay: float | None = None
    self_condition_prob: float = Field(0.5, ge=0, le=1)
    p_mean: float = 1.0
    p_std: float = 1.6
    #: detach the rendered feedback maps (the official code does not)
    detach_feedback: bool = False
    #: keep the first-pass diffusion loss on self-conditioned steps (the official code drops it)
    keep_first_pass_loss: bool = False
    loss: LossConfig = Field(default_factory=LossConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    checkpoint_every: int = 500
    log_every: int = 10
    output_dir: str = "runs"


class OutputConfig(_Section):
    """What ``generate`` writes."""

    dir: str = "outputs"
    save_views: bool = True
    grid_columns: int = 4
    ply: bool = True
    ply_opacity_threshold: float = 0.005
    video: bool = True
    video_frames: int = 60
    video_fps: int = 30
    video_size: int = 512
    mesh: bool = False


class RecipeModel(_Section):
    """A whole recipe, after ``extends`` and overrides are applied."""

    name: str | None = None
    description: str | None = None
    generator: ComponentEntry
    reconstructor: ComponentEntry
    feedback: list[ComponentEntry] = Field(default_factory=list)
    maps: MapsConfig = Field(default_factory=MapsConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    seed: int = 42
    device: str = "auto"
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
