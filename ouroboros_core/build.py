"""Build a recipe's components: modules from their plugins, weights loaded, provenance recorded.

Shared by inference (``pipeline.py``) and training (``runs.py``), so both load components in
exactly the same way.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .errors import PluginError, UserError, WeightsError
from .interfaces import FeedbackEncoder, MultiViewGenerator, Reconstructor
from .recipe import Recipe

if TYPE_CHECKING:
    from .weights import MissingWeights

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str) -> torch.device:
    """"auto" means CUDA when available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} was asked for, but CUDA is not available", hint="use --device cpu or auto")
    return dev


def attention_context(backend: str) -> contextlib.AbstractContextManager:
    """The scaled-dot-product attention kernels a recipe's ``attention_backend`` allows, for
    sampling and training alike ("sdpa": PyTorch chooses). On the CPU "math" can be the faster
    one for small models: ``benchmarks/train_step.py`` measures it."""
    if backend == "sdpa":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernels = {
        "math": SDPBackend.MATH,
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
    }
    return sdpa_kernel(kernels[backend])


#: local weights files up to this size are hashed into manifests (bigger ones would cost seconds)
HASH_LIMIT = 512 * 2**20


def file_sha256(source: str) -> str | None:
    """sha256 of ``source`` when it is a local file of at most :data:`HASH_LIMIT` bytes."""
    import hashlib

    path = Path(source)
    if not path.is_file() or path.stat().st_size > HASH_LIMIT:
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ComponentInfo:
    """What manifests record about one loaded component."""

    kind: str
    name: str
    distribution: str
    version: str
    weights: str | None
    random_init: bool
    #: sha256 of a local weights file (None for folders, hub ids and files over HASH_LIMIT)
    sha256: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Components:
    generator: MultiViewGenerator
    reconstructor: Reconstructor
    encoders: list[FeedbackEncoder]
    infos: list[ComponentInfo]

    @property
    def random_init(self) -> list[str]:
        return [i.name for i in self.infos if i.random_init]


def missing_weights(recipe: Recipe) -> list["MissingWeights"]:
    """Every weights source of ``recipe`` that is neither a local path, in the Hugging Face
    cache, nor downloadable now, with its recipe key path (``generator.weights``,
    ``generator.config.base_weights``, ...). A component's config-named sources (a base
    model) count only when its entry has ``weights``: otherwise it keeps a random init."""
    from .weights import MissingWeights, hub_reachable, unavailable_reason

    model = recipe.model
    entries = [("generator", model.generator, recipe.generator_config), ("reconstructor", model.reconstructor, recipe.reconstructor_config)]
    entries += [(f"feedback.{i}", e, c) for i, (e, c) in enumerate(zip(model.feedback, recipe.feedback_configs))]
    reachable: list[bool] = []

    def hub_up() -> bool:  # asked at most once (a network timeout each time otherwise)
        if not reachable:
            reachable.append(hub_reachable())
        return reachable[0]

    missing = []
    for where, entry, config in entries:
        if not entry.weights:
            continue
        sources = [(f"{where}.weights", entry.weights)]
        values = config.model_dump()
        for source in config.weights_sources():
            field = next((k for k, v in values.items() if v == source), None)
            sources.append((f"{where}.config.{field}" if field else f"{where}.config", source))
        for key, source in sources:
            reason = unavailable_reason(source, hub_up)
            if reason is not None:
                missing.append(MissingWeights(key, str(source).strip(), reason))
    return missing


def build_components(
    recipe: Recipe,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    registry=None,
) -> Components:
    """Build every component of ``recipe`` and load the weights its entries name.

    Entries without ``weights`` keep their (seeded) random initialisation, which is logged
    and recorded in ``infos``. ``device``/``dtype`` default to the recipe's (fp32 weights
    under ``autocast``).
    """
    if registry is None:
        from .registry import get_registry

        registry = get_registry()
    model = recipe.model
    device = device or resolve_device(model.device)
    dtype = dtype or DTYPES[model.weights_dtype]
    # every weights source is checked before anything is built: building a full-size model
    # takes long, and an offline user should learn at once everything there is to download
    from .weights import missing_weights_error, nonfinite_error, nonfinite_tensors

    missing = missing_weights(recipe)
    origin = recipe.source or "recipe"
    if missing:
        raise missing_weights_error(missing, where=str(origin))
    torch.manual_seed(model.seed)  # random initialisation is reproducible too
    infos: list[ComponentInfo] = []

    def build(kind: str, path: str, spec, config, entry) -> nn.Module:
        module = spec.build(config)
        if entry.weights:
            loader = getattr(module, "load_weights", None)
            if loader is None:
                raise PluginError(
                    f"{kind} '{spec.name}' cannot load weights (it has no load_weights method)",
                    where=f"recipe {kind}.weights",
                    hint="remove the weights entry or update the plugin",
                )
            key = f"{origin}: {path}.weights ({kind} '{spec.name}')"
            try:
                loader(entry.weights)
            except WeightsError as err:
                if err.where is None:  # name the recipe entry the file came from
                    raise type(err)(err.message, hint=err.hint, where=key) from err
                raise
            # whatever the plugin's loader read (files, diffusers folders): NaN/Inf weights
            # would give NaN views or an empty 3D model much later, so they stop here
            bad = nonfinite_tensors(module.state_dict())
            if bad:
                raise nonfinite_error(bad, entry.weights, where=key)
        else:
            log.info("%s %r has no weights in the recipe: using random initialisation", kind, spec.name)
        reg = registry.entry(kind, spec.name)
        digest = file_sha256(entry.weights) if entry.weights else None
        infos.append(ComponentInfo(kind, spec.name, reg.distribution, reg.version, entry.weights, not entry.weights, digest))
        return module.to(device=device, dtype=dtype)

    generator = build("generator", "generator", recipe.generator_spec, recipe.generator_config, model.generator)
    reconstructor = build("reconstructor", "reconstructor", recipe.reconstructor_spec, recipe.reconstructor_config, model.reconstructor)
    encoders = [
        build("feedback", f"feedback.{i}", spec, cfg, entry)
        for i, (spec, cfg, entry) in enumerate(zip(recipe.feedback_specs, recipe.feedback_configs, model.feedback))
    ]
    return Components(generator, reconstructor, encoders, infos)
