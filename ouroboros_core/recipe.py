"""Recipe schema: which components to combine and how to run them.

A recipe is a YAML file with one section per concern. Components are ``type`` + ``config``
(+ optional ``preset``) and are validated against the owning plugin's config model; the other
sections are validated by the models below. Loading, ``extends:``, ``--set`` overrides and
cross-component checks are implemented further down in this module.
"""

from __future__ import annotations

import copy
import os
import types
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, NoReturn, Sequence, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .components import (
    MAP_REQUIREMENTS,
    ComponentSpec,
    FeedbackEncoderConfig,
    GeneratorConfig,
    ReconstructorConfig,
)
from .errors import PluginError, RecipeError
from .official_orbit import OFFICIAL_AZIMUTHS, OFFICIAL_FOV_DEG, OFFICIAL_RADIUS
from .textutil import show_value, suggest


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
    #: reconstruct and render every k-th step (what the others see: ``skipped_steps``)
    feedback_every: int = Field(1, ge=1)
    #: maps after a step without feedback (``feedback_every`` > 1 or outside
    #: ``feedback_sigma_range``): "keep" the last rendered maps, or "zero" them as the official
    #: ``recon_every_n_steps`` does (the next step sees the step-0 zero maps)
    skipped_steps: Literal["keep", "zero"] = "keep"
    #: only give feedback while sigma lies in [low, high]
    feedback_sigma_range: tuple[float, float] | None = None
    #: resample mode: x0 <- (1 - w) x0 + w encode(render)
    resample_weight: float = Field(0.5, ge=0, le=1)
    #: "diffusers": x_T = sqrt(sigma_max^2 + sigma_data^2) n (what SVD's scheduler does);
    #: "edm": x_T = sigma_max n
    init_noise: Literal["edm", "diffusers"] = "diffusers"
    #: "fresh": reconstruct the final views again with sigma = None (clean);
    #: "last_step": keep the reconstruction of the last step's x0 (the official code; made at
    #: the last step even when no feedback is due there)
    final_reconstruction: Literal["fresh", "last_step"] = "fresh"
    #: decode only the views the reconstructor reads (feedback maps still cover every view)
    decode_only_input_views: bool = False
    #: which map kinds are fed back (``None``: every encoder's); encoders of the other kinds
    #: keep seeing zero maps, their input at step 0 (ablations on one set of weights)
    feedback_maps: list[str] | None = None


class LossConfig(_Section):
    """Reconstruction loss of the joint trainer."""

    color: Literal["l1", "mse"] = "l1"
    color_weight: float = 1.0
    lpips_weight: float = 1.0
    lpips_net: Literal["alex", "vgg"] = "alex"
    #: load LPIPS with a random trunk (offline tests); never for real training
    lpips_random_trunk: bool = False
    alpha_weight: float = 0.0
    #: average each term as 1/2 (mean over object pixels + mean over background pixels), by
    #: the ground-truth alpha: small objects on a large background then cannot be "learned"
    #: by rendering nothing (a reconstructor trained from scratch otherwise falls into that)
    balance_foreground: bool = False


class DataConfig(_Section):
    """Training data."""

    kind: Literal["official", "procedural"] = "procedural"
    root: str | None = None
    ids_file: str | None = None
    #: views per object and their side in pixels; ``None``: the generator's (what it must be)
    num_views: int | None = None
    image_size: int | None = None
    #: official layout: number of orbit views rendered per object
    orbit_views: int = 16
    random_start_view: bool = True
    num_objects: int | None = None
    #: procedural data: "train" or "heldout" objects (the two never share an object)
    split: Literal["train", "heldout"] = "train"
    #: DataLoader worker processes (0: load in the training process)
    num_workers: int = Field(0, ge=0)
    #: official layout: a folder that keeps every view once decoded and resized (one file per
    #: PNG and image_size, S*S*4 bytes, remade when its PNG changes), so later epochs and runs
    #: skip PNG decoding; any recipe or run may share it. None: decode every time
    cache_dir: str | None = None


class TrainerConfig(_Section):
    """The joint self-conditioning trainer (Algorithm 1)."""

    #: module-path prefixes that train (e.g. "generator", "generator.plucker", "feedback");
    #: everything else is frozen
    trainable: list[str] = Field(default_factory=lambda: ["generator", "reconstructor", "feedback"])
    #: what one training pass computes, for training in stages as the paper does (it starts
    #: from pretrained models): "joint" is Algorithm 1; "reconstructor" only reconstructs the
    #: clean views (reconstruction loss); "generator" is plain multi-view diffusion (pass 1
    #: without feedback, no reconstruction)
    objective: Literal["joint", "reconstructor", "generator"] = "joint"
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

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        """YAML reads a bare ``no`` (in a recipe or ``--set``) as false: take it as "no"."""
        return "no" if value is False else value

    ema_decay: float | None = None
    #: with EMA, the run's weights/ and trained.yaml hold the averaged weights; this also
    #: exports the raw (last-step) weights to weights-raw/ and trained-raw.yaml
    export_raw_weights: bool = False
    #: learning-rate schedule over max_steps after a linear warm-up of lr_warmup_steps
    #: ("constant": lr throughout; "linear"/"cosine": down to lr * lr_min_ratio at max_steps)
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    lr_warmup_steps: int = Field(0, ge=0)
    lr_min_ratio: float = Field(0.0, ge=0, le=1)
    #: modules whose activations are recomputed in the backward pass instead of stored: module
    #: paths or fnmatch patterns inside {generator, reconstructor, feedback}, e.g.
    #: "generator.unet" (diffusers' own checkpointing) or "reconstructor.unet.*.nets.?"
    gradient_checkpointing: list[str] = Field(default_factory=list)
    #: TensorBoard event files under <run>/tensorboard (scalars every step)
    tensorboard: bool = False
    #: every this many steps, a validation image strip (input | generated views | 3D renders of
    #: a fixed held-out object) in TensorBoard; 0: never
    validate_every: int = Field(0, ge=0)
    self_condition_prob: float = Field(0.5, ge=0, le=1)
    p_mean: float = 1.0
    p_std: float = 1.6
    #: detach the rendered feedback maps (the official code does not)
    detach_feedback: bool = False
    #: keep the first-pass diffusion loss on self-conditioned steps (the official code drops it)
    keep_first_pass_loss: bool = False
    #: average the denoising loss as 1/2 (object latent pixels) + 1/2 (background ones) per
    #: view, by the ground-truth alpha pooled to the latent grid, as loss.balance_foreground
    #: does for the reconstruction: on small objects over white the colours are otherwise a
    #: small share of the loss and a model trained from scratch learns them last (measured on
    #: the tiny model: it used its input's colours more, but held-out PSNR fell; see README)
    diffusion_balance_foreground: bool = False
    loss: LossConfig = Field(default_factory=LossConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    checkpoint_every: int = 500
    log_every: int = 10
    output_dir: str = "runs"


class CamerasConfig(_Section):
    """The generation orbit (defaults: the official 8-view orbit, ``Cameras.official()``)."""

    #: degrees from +z towards +x; ``None``: the official 8-view azimuths (0, 45, ..., 270,
    #: 337.5) for 8 views, otherwise evenly spaced from 0
    azimuths: list[float] | None = None
    elevations: float | list[float] = 0.0
    radius: float = Field(OFFICIAL_RADIUS, gt=0)
    fov_deg: float = Field(OFFICIAL_FOV_DEG, gt=0, lt=180)

    def azimuths_for(self, num_views: int) -> list[float]:
        if self.azimuths is not None:
            return list(self.azimuths)
        if num_views == len(OFFICIAL_AZIMUTHS):
            return list(OFFICIAL_AZIMUTHS)
        return [360.0 * i / num_views for i in range(num_views)]


class OutputConfig(_Section):
    """What ``generate`` writes."""

    dir: str = "outputs"
    #: empty border around the recentred input object, as a fraction of the image side
    border_ratio: float = Field(0.2, ge=0, lt=1)
    #: recentre and rescale the object (False: keep the input's framing, padded to a square;
    #: for models trained on renders at a fixed camera distance, such as the tiny model)
    recentre: bool = True
    #: "improved": mask alpha > 0.05, antialiased resizes; "official": the official
    #: inference.py (mask alpha > 0, kiui recentring with int() truncation, bilinear resize in
    #: [-1, 1] without antialiasing; see ouroboros_core.io.images)
    preprocess: Literal["improved", "official"] = "improved"
    save_views: bool = True
    grid_columns: int = 4
    #: write the 3D model (model.ply for Gaussians, model.glb for meshes; which faint
    #: Gaussians a .ply leaves out is the reconstructor's setting, e.g. lgm's ply_opacity_threshold)
    ply: bool = True
    video: bool = True
    video_frames: int = 60
    video_fps: int = 30
    video_size: int = 512
    #: also write model.glb, a vertex-coloured mesh of the Gaussians (TSDF fusion of rendered
    #: views, see ouroboros_core.mesh_from_gaussians; needs the 'mesh' extra); results that
    #: are already meshes write model.glb anyway
    mesh: bool = False
    #: TSDF grid points per axis, fused views, and the most faces kept (0: no simplification)
    mesh_resolution: int = Field(128, ge=8)
    mesh_views: int = Field(64, ge=1)
    mesh_faces: int = Field(20000, ge=0)


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
    cameras: CamerasConfig = Field(default_factory=CamerasConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    seed: int = 42
    device: str = "auto"
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    #: how a half ``dtype`` is applied at inference. true: the weights stay fp32 and the models
    #: of the sampling loop run under torch.autocast(dtype), the conditioning (CLIP, VAE
    #: encoder) and the rendering in fp32 (the official script: fp16 autocast over fp32
    #: weights); false: every module is cast to ``dtype`` (a generator may keep parts in fp32,
    #: e.g. SVD's VAE encoder when its ``force_upcast`` says so). No effect with fp32; training
    #: has its own ``trainer.mixed_precision``
    autocast: bool = False
    #: torch.compile the components (slow first call; see the README's speed section)
    compile: bool = False
    #: scaled-dot-product attention kernels, for sampling and training: "sdpa" lets PyTorch
    #: choose; on the CPU "math" can be faster for small models (benchmarks/train_step.py)
    attention_backend: Literal["sdpa", "math", "flash", "efficient", "cudnn"] = "sdpa"

    @property
    def weights_dtype(self) -> str:
        """The dtype the components are built and loaded in: fp32 under ``autocast``."""
        return "fp32" if self.autocast else self.dtype

    @property
    def autocast_dtype(self) -> str | None:
        """The dtype of the sampling loop's torch.autocast, or None when nothing autocasts."""
        return self.dtype if self.autocast and self.dtype != "fp32" else None


# ====================================================================== loading and validation
# Everything below turns a YAML file (plus ``extends:`` parents and ``--set`` overrides) into a
# validated :class:`Recipe`. Every user error is a RecipeError naming the file, the key path,
# the bad value and a suggestion.

KeyPath = tuple[Union[str, int], ...]
RECIPE_FILE_NAME = "recipe.yaml"
_RECIPE_SUFFIXES = (".yaml", ".yml")
_SET = "--set"


def _dotted(path: Sequence[str | int]) -> str:
    return ".".join(str(p) for p in path)


class _Origins:
    """Which file (or ``--set``) wrote each key of the merged recipe, for error messages."""

    def __init__(self, default: str) -> None:
        self.default = default
        self._by_path: dict[KeyPath, str] = {}

    def record(self, data: Any, origin: str, prefix: KeyPath = ()) -> None:
        if prefix:
            self._by_path[prefix] = origin
        if isinstance(data, dict):
            for key, value in data.items():
                self.record(value, origin, prefix + (key,))
        elif isinstance(data, list):
            for index, value in enumerate(data):
                self.record(value, origin, prefix + (index,))

    def drop(self, prefix: KeyPath) -> None:
        """Forget a subtree that a later file or override replaced."""
        for path in [p for p in self._by_path if p[: len(prefix)] == prefix]:
            del self._by_path[path]

    def of(self, path: Sequence[str | int]) -> str:
        """The origin of the deepest recorded prefix of ``path``."""
        path = tuple(path)
        for end in range(len(path), 0, -1):
            if path[:end] in self._by_path:
                return self._by_path[path[:end]]
        return self.default


def _error(origins: _Origins, path: Sequence[str | int], message: str, hint: str | None = None) -> NoReturn:
    prefix = f"{_dotted(path)}: " if path else ""
    raise RecipeError(prefix + message, hint=hint, where=origins.of(path))


# ---------------------------------------------------------------------- reading files
def _read_yaml(path: Path) -> dict[str, Any]:
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(f"cannot read the recipe: {exc.strerror or exc}", where=where, hint="check the path") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"not valid YAML{at}: {problem}", where=where, hint="fix the YAML syntax") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(
            f"a recipe must be a mapping of sections, got {type(data).__name__}",
            where=where,
            hint="start the file with keys such as 'generator:' and 'reconstructor:'",
        )
    return data


def _locate(name_or_path: str | Path, registry) -> Path:
    """A recipe file from a path, or from the name of a shipped recipe."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    text = str(name_or_path)
    if path.suffix in _RECIPE_SUFFIXES or "/" in text or os.sep in text or path.exists():
        raise RecipeError(
            f"recipe file {text} does not exist" if not path.exists() else f"{text} is not a file",
            hint="give the path of a .yaml recipe, or the name of a shipped recipe (ouroboros3d recipes list)",
        )
    try:
        return registry.recipe_path(text)
    except PluginError as exc:
        raise RecipeError(exc.message, hint=exc.hint) from exc


def _resolve_extends(ref: Any, child: Path, registry, origins: _Origins) -> Path:
    """``extends:`` names a file relative to the child recipe, or a shipped recipe."""
    if not isinstance(ref, str) or not ref.strip():
        _error(origins, ("extends",), f"expected a recipe name or relative path, got {show_value(ref)}")
    for candidate in (child.parent / ref, child.parent / f"{ref}.yaml"):
        candidate = Path(os.path.normpath(candidate))
        if candidate.is_file():
            return candidate
    try:
        return registry.recipe_path(ref)
    except PluginError as exc:
        _error(origins, ("extends",), f"{show_value(ref)} is neither a file next to {child.name} nor a shipped recipe", exc.hint)


# ---------------------------------------------------------------------- merging and overrides
def _replaces_component(path: KeyPath, old: dict, new: dict) -> bool:
    """A derived recipe that names another component type replaces the section instead of
    merging into it: the parent's config belongs to the parent's component."""
    return len(path) == 1 and path[0] in ("generator", "reconstructor") and "type" in new and new["type"] != old.get("type")


def deep_merge(base: dict[str, Any], override: dict[str, Any], *, _path: KeyPath = (), _origins: _Origins | None = None) -> dict[str, Any]:
    """``override`` on top of ``base``: mappings merge key by key, lists and scalars replace.

    A ``generator``/``reconstructor`` section with a different ``type`` replaces the parent's
    section whole.
    """
    result = dict(base)
    for key, value in override.items():
        old = result.get(key)
        path = _path + (key,)
        if isinstance(old, dict) and isinstance(value, dict) and not _replaces_component(path, old, value):
            result[key] = deep_merge(old, value, _path=path, _origins=_origins)
        else:
            if _origins is not None:
                _origins.drop(path)
            result[key] = copy.deepcopy(value)
    return result


def _load_tree(path: Path, registry, origins: _Origins, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The merged mapping of ``path`` and its ``extends`` ancestors."""
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in chain + (resolved,))
        raise RecipeError(f"extends: recipes extend each other in a cycle: {cycle}", where=str(path), hint="remove one of the extends")
    data = _read_yaml(path)
    ref = data.pop("extends", None)
    if ref is None:
        origins.record(data, str(path))
        return data
    parent = _resolve_extends(ref, path, registry, _Origins(str(path)))
    base = _load_tree(parent, registry, origins, chain + (resolved,))
    base.pop("name", None)  # a recipe's name is its own, never inherited
    merged = deep_merge(base, data, _origins=origins)
    origins.record(data, str(path))
    return merged


def apply_override(data: dict[str, Any], override: str, origins: _Origins | None = None) -> None:
    """Apply one ``key.path=value`` (value parsed as YAML) in place; list items by index."""
    origins = origins or _Origins(_SET)
    key, sep, raw = override.partition("=")
    key = key.strip()
    where = f"{_SET} {override}"
    if not sep or not key:
        raise RecipeError("expected key.path=value", where=where, hint="for example --set sampler.steps=10")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise RecipeError(f"the value {raw!r} is not valid YAML", where=where, hint="quote strings that contain ':' or '#'") from exc
    parts = key.split(".")
    node: Any = data
    path: KeyPath = ()
    for i, part in enumerate(parts):
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise RecipeError(
                    f"{_dotted(path)} is a list of {len(node)} item(s); {part!r} is not an index in it",
                    where=where,
                    hint=f"use an index from 0 to {len(node) - 1}" if node else "set the whole list instead",
                )
            index: str | int = int(part) % len(node)
        elif isinstance(node, dict):
            index = part
        else:
            raise RecipeError(
                f"{_dotted(path)} is {show_value(node)}, not a mapping, so it has no key {part!r}",
                where=where,
                hint=f"set {_dotted(path)} itself",
            )
        path = path + (index,)
        if i == len(parts) - 1:
            node[index] = value
        else:
            if isinstance(node, dict) and node.get(index) is None:
                node[index] = {}  # --set creates missing sections
            node = node[index]
    origins.drop(path)
    origins.record(value, f"{_SET} {override}", path)


# ---------------------------------------------------------------------- pydantic errors
def _unwrap(annotation: Any) -> list[Any]:
    """The alternatives of an Optional/Union annotation."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _annotation_at(model: type[BaseModel], loc: Sequence[str | int]) -> Any:
    """The type annotation of the field at ``loc`` inside ``model`` (``None`` if unknown)."""
    current: Any = model
    for part in loc:
        nxt = None
        for option in _unwrap(current):
            origin = typing.get_origin(option)
            if isinstance(option, type) and issubclass(option, BaseModel) and isinstance(part, str):
                if part in option.model_fields:
                    nxt = option.model_fields[part].annotation
            elif origin in (list, tuple) and isinstance(part, int):
                args = typing.get_args(option)
                nxt = args[0] if args else None
            elif origin is dict and isinstance(part, str):
                args = typing.get_args(option)
                nxt = args[1] if len(args) == 2 else None
            if nxt is not None:
                break
        if nxt is None:
            return None
        current = nxt
    return current


def _field_names(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    annotation = model if not loc else _annotation_at(model, loc)
    for option in _unwrap(annotation) if annotation is not None else []:
        if isinstance(option, type) and issubclass(option, BaseModel):
            return list(option.model_fields)
    return []


def _literal_choices(annotation: Any) -> list[str]:
    for option in _unwrap(annotation) if annotation is not None else []:
        if typing.get_origin(option) is typing.Literal:
            return [str(a) for a in typing.get_args(option)]
    return []


def _describe(err: dict[str, Any], model: type[BaseModel], prefix: KeyPath) -> tuple[tuple, str, str]:
    """(location inside ``model``, message, hint) of one pydantic error, in the recipe's words."""
    loc = tuple(err["loc"])
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        names = _field_names(model, loc[:-1])
        return loc, f"unknown key (value {show_value(value)})", suggest(str(loc[-1]), names, "key") if names else "remove it"
    if kind == "missing":
        return loc, "required key is missing", f"add '{loc[-1]}' to the recipe"
    if kind == "literal_error":
        choices = _literal_choices(_annotation_at(model, loc))
        return loc, f"{show_value(value)} is not allowed", suggest(str(value), choices, "value")
    return loc, f"{err['msg']} (got {show_value(value)})", f"change the value of {_dotted(prefix + loc) or 'the recipe'}"


def _raise_validation(exc: ValidationError, model: type[BaseModel], prefix: KeyPath, origins: _Origins) -> NoReturn:
    described = [_describe(err, model, prefix) for err in exc.errors(include_url=False)]
    loc, message, hint = described[0]
    path = prefix + loc
    if len(described) == 1:
        _error(origins, path, message, hint)
    # several problems: each carries its own fix, so none is left without one
    parts = [f"{message} (fix: {hint})"]
    parts += [f"also {_dotted(prefix + other_loc)}: {other_message} (fix: {other_hint})" for other_loc, other_message, other_hint in described[1:]]
    _error(origins, path, "; ".join(parts))


# ---------------------------------------------------------------------- the validated recipe
@dataclass
class Recipe:
    """A validated recipe: its sections, the component specs and their validated configs.

    ``model.generator.config`` is what the recipe wrote; ``generator_config`` is the
    component's validated config with the preset applied (what the factory receives).
    """

    model: RecipeModel
    source: Path | None
    generator_spec: ComponentSpec
    reconstructor_spec: ComponentSpec
    feedback_specs: list[ComponentSpec]
    generator_config: GeneratorConfig
    reconstructor_config: ReconstructorConfig
    feedback_configs: list[FeedbackEncoderConfig]

    @property
    def name(self) -> str | None:
        return self.model.name

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved recipe: no ``extends``, overrides applied, full component configs."""
        data = self.model.model_dump(mode="json")
        data["generator"]["config"] = self.generator_config.model_dump(mode="json")
        data["reconstructor"]["config"] = self.reconstructor_config.model_dump(mode="json")
        for entry, config in zip(data["feedback"], self.feedback_configs):
            entry["config"] = config.model_dump(mode="json")
        return data

    def dump(self) -> str:
        """The resolved recipe as YAML; loading it again gives the same recipe."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, directory: str | Path) -> Path:
        """Write ``<directory>/recipe.yaml`` (to a temporary name first, then renamed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / RECIPE_FILE_NAME
        from .io.atomic import atomic_write

        with atomic_write(target) as tmp:
            tmp.write_text(self.dump(), encoding="utf-8")
        return target


def _registry_or_default(registry):
    if registry is not None:
        return registry
    from .registry import get_registry

    return get_registry()


def list_recipes(registry=None) -> dict[str, Path]:
    """Recipes shipped by the installed plugins, name -> file."""
    return _registry_or_default(registry).recipes()


def load_recipe(name_or_path: str | Path, overrides: Iterable[str] = (), registry=None) -> Recipe:
    """Load, merge (``extends``), override (``key.path=value``) and validate a recipe.

    ``name_or_path`` is a ``.yaml`` file or the name of a shipped recipe.
    """
    registry = _registry_or_default(registry)
    path = _locate(name_or_path, registry)
    origins = _Origins(str(path))
    data = _load_tree(path, registry, origins)
    data.setdefault("name", path.stem)
    for override in overrides:
        apply_override(data, override, origins)
    _resolve_relative_weights(data, origins)
    try:
        model = RecipeModel.model_validate(data)
    except ValidationError as exc:
        _raise_validation(exc, RecipeModel, (), origins)
    return _validate_components(model, path, registry, origins)


def _resolve_relative_weights(data: dict[str, Any], origins: _Origins) -> None:
    """``weights: ./x`` or ``../x`` is relative to the recipe file that wrote it (so a recipe
    can ship beside its checkpoints); from ``--set`` it is relative to the working folder."""
    entries: list[tuple[KeyPath, Any]] = [(("generator",), data.get("generator")), (("reconstructor",), data.get("reconstructor"))]
    entries += [(("feedback", i), e) for i, e in enumerate(data.get("feedback") or [])]
    for path, entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("weights"), str):
            continue
        weights = entry["weights"]
        origin = origins.of(path + ("weights",))
        if weights.startswith(("./", "../")) and not origin.startswith(_SET):
            entry["weights"] = str(Path(os.path.normpath(Path(origin).parent / weights)))


def _component(kind: str, entry: ComponentEntry, path: KeyPath, device: str, registry, origins: _Origins):
    """The spec and validated config of one component entry."""
    try:
        spec = registry.get(kind, entry.type)
    except PluginError as exc:
        _error(origins, path + ("type",), exc.message, exc.hint)
    if spec.slot:
        _error(
            origins,
            path + ("type",),
            f"{show_value(entry.type)} is a declared slot, not an implemented {kind}: {spec.slot_message}",
            f"choose another {kind}: " + ", ".join(n for n in registry.names(kind) if not registry.get(kind, n).slot),
        )
    if entry.preset is not None and entry.preset not in spec.presets:
        _error(
            origins,
            path + ("preset",),
            f"{show_value(entry.preset)} is not a preset of {kind} '{spec.name}'",
            suggest(entry.preset, spec.presets, "preset"),
        )
    device_type = device.split(":")[0]
    if device != "auto" and device_type not in spec.devices:
        _error(
            origins,
            ("device",),
            f"{show_value(device)}: {kind} '{spec.name}' runs on {', '.join(spec.devices)} only",
            f"set device to one of {', '.join(spec.devices)} or auto",
        )
    try:
        config = spec.make_config(entry.config, entry.preset)
    except ValidationError as exc:
        _raise_validation(exc, spec.config, path + ("config",), origins)
    return spec, config


def _slots(slots) -> list[tuple[int, int]]:
    return [(s.channels, s.stride) for s in slots]


def _validate_components(model: RecipeModel, source: Path | None, registry, origins: _Origins) -> Recipe:
    gen_spec, gen_cfg = _component("generator", model.generator, ("generator",), model.device, registry, origins)
    rec_spec, rec_cfg = _component("reconstructor", model.reconstructor, ("reconstructor",), model.device, registry, origins)
    fb = [
        _component("feedback", entry, ("feedback", i), model.device, registry, origins) for i, entry in enumerate(model.feedback)
    ]

    # (a) the reconstructor reads views the generator makes
    n = gen_cfg.num_views
    bad = [v for v in rec_cfg.input_views or [] if not 0 <= v < n]
    if bad:
        _error(
            origins,
            ("reconstructor", "config", "input_views"),
            f"{show_value(rec_cfg.input_views)} has view index {bad[0]}, but generator '{gen_spec.name}' makes {n} views",
            f"use indices 0..{n - 1}, or change generator.config.num_views",
        )

    cams = model.cameras
    if cams.azimuths is not None and len(cams.azimuths) != n:
        _error(
            origins,
            ("cameras", "azimuths"),
            f"{show_value(cams.azimuths)} has {len(cams.azimuths)} views, but generator '{gen_spec.name}' makes {n}",
            f"give {n} azimuths, or set generator.config.num_views to {len(cams.azimuths)}",
        )
    if isinstance(cams.elevations, list) and len(cams.elevations) != n:
        _error(
            origins,
            ("cameras", "elevations"),
            f"{show_value(cams.elevations)} has {len(cams.elevations)} values for {n} views",
            "give one elevation per azimuth, or a single number for all views",
        )

    gen_slots = gen_cfg.feedback_slots()
    if model.feedback and not gen_slots and model.sampler.mode == "joint":
        _error(
            origins,
            ("feedback",),
            f"generator '{gen_spec.name}' has no feedback slots, but sampler.mode is 'joint' with {len(model.feedback)} feedback encoder(s)",
            "use a generator with feedback slots, remove the feedback section, or set sampler.mode to 'none' or 'resample'",
        )
    for i, (spec, cfg) in enumerate(fb):
        # (b) the reconstructor renders what the encoder's maps are computed from
        needs = MAP_REQUIREMENTS.get(cfg.map_kind)
        if needs is None:
            _error(origins, ("feedback", i, "config", "map_kind"), f"unknown map kind {show_value(cfg.map_kind)}", suggest(cfg.map_kind, MAP_REQUIREMENTS, "map kind"))
        missing = needs - type(rec_cfg).renders
        if missing:
            _error(
                origins,
                ("feedback", i, "config", "map_kind"),
                f"{show_value(cfg.map_kind)} maps need the render outputs {', '.join(sorted(needs))}, but reconstructor "
                f"'{rec_spec.name}' renders only {', '.join(sorted(type(rec_cfg).renders))}",
                "remove this feedback encoder or choose a reconstructor that renders "
                + ", ".join(sorted(missing)),
            )
        # (c) the encoder's features fit the generator's slots
        if gen_slots and _slots(cfg.output_slots()) != _slots(gen_slots):
            _error(
                origins,
                ("feedback", i, "config"),
                f"encoder '{spec.name}' emits (channels, stride) {_slots(cfg.output_slots())}, but generator "
                f"'{gen_spec.name}' has feedback slots {_slots(gen_slots)}",
                "configure the encoder's channels and strides to match the generator's feedback slots",
            )
    # (d) decoding a subset of views changes them when the decoder mixes views
    sampler = model.sampler
    if sampler.decode_only_input_views and sampler.mode != "none" and rec_cfg.input_views is not None and gen_cfg.decoder_mixes_views():
        key = ("sampler", "decode_only_input_views")
        warnings.warn(
            f"{origins.of(key)}: {_dotted(key)}: generator '{gen_spec.name}' decodes views together (a temporal decoder), so decoding only "
            f"the reconstructor's views {rec_cfg.input_views} gives it different images than decoding all of them: "
            "faster, but the results change (set it to false to reproduce full decoding)",
            UserWarning,
            stacklevel=2,
        )
    return Recipe(
        model=model,
        source=source,
        generator_spec=gen_spec,
        reconstructor_spec=rec_spec,
        feedback_specs=[s for s, _ in fb],
        generator_config=gen_cfg,
        reconstructor_config=rec_cfg,
        feedback_configs=[c for _, c in fb],
    )
