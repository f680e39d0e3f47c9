"""Image-to-3D pipeline: load a recipe once, run it on many images, save the results.

In the spirit of diffusers' pipelines, this module only holds components and runs the loop
in :class:`~ouroboros_core.sampler.RecursiveSampler`; the math lives in the components::

    pipe = ImageTo3DPipeline.from_recipe("tiny")
    result = pipe("photo.png", seed=0)
    result.save("outputs/photo")

The CLI's ``generate`` command is a thin layer over this class.
"""

from __future__ import annotations

import json
import platform
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from . import __version__
from .cameras import Cameras
from .build import DTYPES, ComponentInfo, attention_context, build_components, resolve_device
from .interfaces import FeedbackEncoder, MultiViewGenerator, Reconstructor, Representation
from .recipe import Recipe, load_recipe
from .sampler import Callback, ProgressBar, RecursiveSampler, StepInfo


#: The files ``save`` writes into an output folder (glob patterns, relative to it): the only
#: files ``overwrite=True`` ever deletes or replaces there.
RESULT_FILES: tuple[str, ...] = (
    "input.png",
    "views.png",
    "views/view_*.png",
    "model.ply",
    "model.glb",
    "turntable.mp4",
    "turntable.gif",
    "recipe.yaml",
    "manifest.json",
    "steps/step*_*.png",
)


@dataclass
class GenerationResult:
    """One generated object.

    views: ``(V, 3, H, W)`` in [0, 1]; representation: batch of one; input: the preprocessed
    input (``ouroboros_core.io.images.PreprocessedImage``); timings: seconds per stage.
    """

    views: torch.Tensor
    representation: Representation
    input: Any
    cameras: Cameras
    timings: dict[str, float]
    manifest: dict[str, Any] = field(default_factory=dict)
    pipeline: "ImageTo3DPipeline | None" = None
    #: per-step feedback maps ("step03_rgb" -> (V, 3, H, W)) when asked for
    intermediates: dict[str, torch.Tensor] = field(default_factory=dict)
    #: problems with the result that do not stop it (also in the manifest; the CLI prints them)
    warnings: list[str] = field(default_factory=list)

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write every output into ``folder`` atomically (see :meth:`ImageTo3DPipeline.save`)."""
        if self.pipeline is None:
            raise ValueError("this result has no pipeline to save it with")
        return self.pipeline.save(self, folder, overwrite)


class ImageTo3DPipeline:
    """A loaded recipe: generator, reconstructor, feedback encoders and the sampler."""

    def __init__(
        self,
        recipe: Recipe,
        generator: MultiViewGenerator,
        reconstructor: Reconstructor,
        encoders: Sequence[FeedbackEncoder],
        device: torch.device,
        dtype: torch.dtype,
        components: list[ComponentInfo],
    ):
        self.recipe = recipe
        self.generator = generator
        self.reconstructor = reconstructor
        self.encoders = list(encoders)
        self.device = device
        self.dtype = dtype
        self.components = components
        autocast = recipe.model.autocast_dtype
        self.sampler = RecursiveSampler(
            generator, reconstructor, self.encoders, recipe.model.sampler, recipe.model.maps, DTYPES[autocast] if autocast else None
        )

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_recipe(
        cls,
        recipe: str | Path | Recipe = "svd-lgm",
        overrides: Iterable[str] = (),
        device: str | None = None,
        dtype: str | None = None,
        registry=None,
    ) -> "ImageTo3DPipeline":
        """Build and load every component of a recipe (a name, a file or a loaded Recipe).

        ``device``/``dtype`` override the recipe's. Components whose recipe entry has no
        ``weights`` keep their random initialisation, which is logged and recorded.
        """
        overrides = list(overrides)
        if device is not None:
            overrides.append(f"device={device}")
        if dtype is not None:
            overrides.append(f"dtype={dtype}")
        if not isinstance(recipe, Recipe):
            recipe = load_recipe(recipe, overrides, registry=registry)
        elif overrides:
            raise ValueError("overrides apply when loading a recipe; pass a recipe name or path")
        parts = build_components(recipe, registry=registry)
        for module in (parts.generator, parts.reconstructor, *parts.encoders):
            module.eval()
        model = recipe.model
        pipe = cls(recipe, parts.generator, parts.reconstructor, parts.encoders, resolve_device(model.device), DTYPES[model.weights_dtype], parts.infos)
        if model.compile:
            pipe.compile()
        return pipe

    def compile(self) -> None:
        """``torch.compile`` each component in place (a component may name its hot submodules
        with a ``compile_targets()`` method; otherwise the component itself is compiled)."""
        for module in (self.generator, self.reconstructor, *self.encoders):
            targets = module.compile_targets() if hasattr(module, "compile_targets") else [module]
            for target in targets:
                target.compile()

    # ------------------------------------------------------------------ running
    def cameras(self, batch_size: int = 1) -> Cameras:
        """The generation cameras of the recipe (``cameras`` section)."""
        c = self.recipe.model.cameras
        return Cameras.orbit(c.azimuths_for(self.generator.num_views), c.elevations, c.radius, c.fov_deg, batch_size, dtype=torch.float32, device=self.device)

    def preprocess(self, image: Any, background: str = "auto"):
        """Load, segment, recentre and resize an input for this pipeline's generator."""
        return preprocess_for_recipe(self.recipe, image, background)

    @torch.no_grad()
    def __call__(
        self,
        image: Any,
        *,
        seed: int | None = None,
        background: str = "auto",
        progress: bool = False,
        callbacks: Sequence[Callback] = (),
        intermediates: bool = False,
    ) -> GenerationResult:
        """Generate views and 3D for one image (a path, PIL image, array, tensor, or the
        result of :meth:`preprocess`). ``intermediates`` keeps the feedback maps of every
        step that reconstructed (saved as ``steps/stepNN_<kind>.png``)."""
        from .io.images import PreprocessedImage

        model = self.recipe.model
        seed = model.seed if seed is None else seed
        timings: dict[str, float] = {}
        start = time.perf_counter()
        pre = image if isinstance(image, PreprocessedImage) else self.preprocess(image, background)
        timings["preprocess"] = time.perf_counter() - start
        cams = self.cameras()
        rng = torch.Generator(device=self.device).manual_seed(seed)
        steps: list[Callback] = list(callbacks)
        kept: dict[str, torch.Tensor] = {}
        if intermediates:
            steps.append(MapRecorder(kept))
        if progress:
            steps.append(ProgressBar(model.sampler.steps, desc=Path(pre.source).name))
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        with attention_context(model.attention_backend):
            out = self.sampler(pre.image[None].to(self.device, self.dtype), cams, generator=rng, callbacks=steps)
        timings.update({f"sampler.{k}": v for k, v in out.timings.items()})
        timings["total"] = time.perf_counter() - start
        warnings = []
        if out.representation.is_empty(0):
            warnings.append(
                f"the 3D result is empty (a {type(out.representation).__name__} with nothing to save), so no "
                f"model{out.representation.file_suffix} is written; check the reconstructor's weights"
            )
        manifest = self._manifest(seed, timings, pre, out.num_reconstructions)
        manifest["warnings"] = warnings
        return GenerationResult(out.views[0].float().cpu(), out.representation, pre, cams, timings, manifest, self, kept, warnings)

    def _manifest(self, seed: int, timings: dict[str, float], pre, num_reconstructions: int) -> dict[str, Any]:
        if self.device.type == "cuda":
            peak = {"gpu_bytes": torch.cuda.max_memory_allocated(self.device)}
        else:
            peak = {"cpu_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
        random = [c.name for c in self.components if c.random_init]
        return {
            "ouroboros3d": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "recipe": self.recipe.name,
            "components": [c.as_dict() for c in self.components],
            "random_weights": random,
            "note": (f"components {', '.join(random)} ran with RANDOM weights: outputs are not meaningful" if random else None),
            "seed": seed,
            "device": str(self.device),
            "dtype": self.recipe.model.dtype,
            "autocast": self.recipe.model.autocast_dtype is not None,
            "input": {"source": pre.source, "mask_source": pre.mask_source, "notes": pre.notes},
            "num_reconstructions": num_reconstructions,
            "timings_s": timings,
            "peak_memory": peak,
        }

    # ------------------------------------------------------------------ saving
    def save(self, result: GenerationResult, folder: str | Path, overwrite: bool = False) -> Path:
        """Write input.png, views/*.png, views.png, the 3D model (model.ply, or model.glb for a
        mesh), turntable video, recipe.yaml and manifest.json into ``folder``.

        Everything is written into a temporary folder first, so an interrupted run leaves
        nothing complete-looking. A ``folder`` that exists and is not empty is refused
        (:class:`~ouroboros_core.errors.UserError`) unless ``overwrite``, which replaces only
        the files listed in :data:`RESULT_FILES` and keeps every other file
        (``manifest.json`` is written last).
        """
        from .io.atomic import atomic_result_dir
        from .io.grid import save_grid, save_views
        from .io.video import turntable_cameras, write_video

        out_cfg = self.recipe.model.output
        folder = Path(folder)
        timings = dict(result.timings)
        with atomic_result_dir(folder, RESULT_FILES, overwrite, marker="manifest.json") as tmp:
            result.input.save_input(tmp / "input.png")
            if out_cfg.save_views:
                save_views(result.views, tmp / "views")
            save_grid(result.views, tmp / "views.png", columns=out_cfg.grid_columns)
            files = {"input": "input.png", "grid": "views.png"}
            if out_cfg.ply and not result.representation.is_empty(0):  # an empty file is never written
                start = time.perf_counter()
                rep = result.representation
                files["model"] = rep.save(tmp / f"model{rep.file_suffix}", index=0).name
                timings["save.model"] = time.perf_counter() - start
            if out_cfg.mesh:
                mesh_file = self._save_mesh(result, tmp / "model.glb", timings)
                if mesh_file:
                    files["mesh"] = mesh_file
            if out_cfg.video:
                start = time.perf_counter()
                frames = self.render_turntable(result, turntable_cameras(result.cameras, out_cfg.video_frames))
                files["video"] = write_video(frames, tmp / "turntable.mp4", fps=out_cfg.video_fps).name
                timings["save.video"] = time.perf_counter() - start
            for name, maps in result.intermediates.items():
                save_grid(maps, tmp / "steps" / f"{name}.png", columns=out_cfg.grid_columns)
            self.recipe.save(tmp)
            files["recipe"] = "recipe.yaml"
            manifest = dict(result.manifest, timings_s=timings, files=files, warnings=list(result.warnings))
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        return folder

    def _save_mesh(self, result: GenerationResult, path: Path, timings: dict[str, float]) -> str | None:
        """``output.mesh``: write the Gaussians as a vertex-coloured mesh (``model.glb``).
        Gaussians that give no mesh (all transparent, say) add a warning instead of failing
        the whole result; a representation that is already a mesh has its .glb already."""
        from .gaussians import GaussianCloud
        from .mesh_from_gaussians import MeshExportError, mesh_from_gaussians

        rep = result.representation
        if not isinstance(rep, GaussianCloud) or rep.is_empty(0):
            return None
        out_cfg = self.recipe.model.output
        start = time.perf_counter()
        try:
            mesh = mesh_from_gaussians(
                rep, index=0, resolution=out_cfg.mesh_resolution, views=out_cfg.mesh_views, faces=out_cfg.mesh_faces or None
            )
        except MeshExportError as exc:
            warning = f"no model.glb: {exc}"
            if warning not in result.warnings:
                result.warnings.append(warning)
            return None
        finally:
            timings["save.mesh"] = time.perf_counter() - start
        return mesh.save(path).name

    @torch.no_grad()
    def render_turntable(self, result: GenerationResult, cameras: Cameras, chunk: int = 8) -> torch.Tensor:
        """Frames ``(T, H, W, 3)`` in [0, 1] of the representation seen from ``cameras``."""
        size = self.recipe.model.output.video_size
        rep = result.representation
        frames = []
        for start in range(0, cameras.num_views, chunk):
            sub = cameras.select_views(range(start, min(start + chunk, cameras.num_views)))
            render = rep.render(sub.to(rep_device(rep)), size, size, background=1.0)
            frames.append(render.rgb[0].float().clamp(0, 1).permute(0, 2, 3, 1).cpu())
        return torch.cat(frames)


def preprocess_for_recipe(recipe: Recipe, image: Any, background: str = "auto"):
    """What :meth:`ImageTo3DPipeline.preprocess` does, from the recipe alone: ``generate``
    checks every input this way before any model is built."""
    from .io.images import preprocess

    output = recipe.model.output
    return preprocess(
        image, recipe.generator_config.image_size, output.border_ratio, background, recentre_object=output.recentre, method=output.preprocess
    )


class MapRecorder:
    """A step callback keeping the feedback maps of the first object at every step that
    reconstructed (the maps the next step will see), on the CPU."""

    def __init__(self, store: dict[str, torch.Tensor]):
        self.store = store

    def __call__(self, info: StepInfo) -> None:
        if info.feedback:
            for kind, maps in info.maps.items():
                self.store[f"step{info.index:02d}_{kind}"] = maps[0].detach().float().clamp(0, 1).cpu()


def rep_device(representation: Representation) -> torch.device:
    """The device a representation's tensors live on (CPU when it does not say)."""
    return getattr(representation, "device", torch.device("cpu"))
