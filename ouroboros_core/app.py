"""The web app (``ouroboros3d app``): one image in, views, a turntable video and a 3D viewer out.

A page for people who would rather drop an image than type a command. It runs exactly what
``ouroboros3d generate`` runs, in the same order and with the same functions: the input check
and the recipe overrides of :mod:`ouroboros_core.cli`, then
:func:`~ouroboros_core.pipeline.preprocess_for_recipe`, :class:`ImageTo3DPipeline` and its
``save``. The files offered for download are therefore the files ``generate`` writes for the
same recipe, seed and steps (the browser test compares them byte for byte; only
``manifest.json`` differs, in timings, memory and the input's temporary path).

Split in two so that everything but the page can be tested without a browser:

- :class:`GenerationService` (no gradio): validates an upload, keeps loaded models in a
  :class:`ModelCache`, runs one generation at a time and reports every sampling step;
- :func:`build_app` / :func:`serve`: the Gradio page around it.

Models load on the first generation with a recipe and are reused afterwards. Requests queue
(one generation at a time), so a second visitor waits instead of running two models at
once. The server binds to 127.0.0.1 unless told otherwise, shares nothing unless ``--share``,
sends no analytics, and the page loads nothing from outside the server (fonts included).
"""

from __future__ import annotations

import itertools
import os
import queue
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from .errors import UserError

if TYPE_CHECKING:
    import gradio

    from .io.images import PreprocessedImage
    from .pipeline import ImageTo3DPipeline
    from .recipe import Recipe
    from .sampler import StepInfo

#: The shipped example input, in a source checkout (``examples/`` beside the package; a wheel
#: does not ship it, and the page then offers no example).
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "toy-object.png"

#: Small views (the tiny recipe's are 32²) are scaled up to the image boxes with hard pixel
#: edges, so the page shows what the files hold instead of a blur.
PAGE_CSS = "#views img, #preview img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }"

#: The recipe the page starts with: trained weights shipped in the package, seconds on a CPU.
DEFAULT_RECIPE = "tiny"


def import_gradio() -> ModuleType:
    """gradio, imported with its analytics off (it reads the variable at import), or one line
    saying which extra installs it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError:
        raise UserError("the web app needs gradio, which is not installed", hint="pip install 'ouroboros3d[app]'") from None
    return gradio


# ---------------------------------------------------------------------- no gradio below
@dataclass(frozen=True)
class Request:
    """What the page asks for: the options of ``generate`` that the page shows.

    ``plain_background`` is ``--no-remove-background``, ``mesh`` is ``--mesh``,
    ``intermediates`` is ``--save-intermediates``.
    """

    image: str
    recipe: str = DEFAULT_RECIPE
    steps: int | None = None
    seed: int | None = None
    plain_background: bool = False
    mesh: bool = False
    intermediates: bool = False

    @property
    def background(self) -> str:
        return "as-is" if self.plain_background else "auto"


@dataclass
class Outcome:
    """One finished generation: the result folder and the page's view of it."""

    folder: Path
    #: every file in ``folder`` (relative paths), sorted: what the page offers for download
    files: list[Path]
    #: manifest "files": role ("grid", "model", "mesh", "video", ...) -> relative path
    roles: dict[str, str]
    seconds: float
    warnings: list[str] = field(default_factory=list)
    #: names of components that ran with random weights (the CLI prints the same note)
    random_weights: list[str] = field(default_factory=list)

    def path(self, role: str) -> Path | None:
        """The file playing ``role``, if the result has one."""
        name = self.roles.get(role)
        return self.folder / name if name else None

    @property
    def viewer_model(self) -> Path | None:
        """What the 3D viewer shows: the mesh when there is one (any 3D viewer renders a
        mesh; Gaussian splats need WebGL 2), otherwise the Gaussians."""
        return self.path("mesh") or self.path("model")


#: ``(step index, total steps, preview)``: called after every sampling step; ``preview`` is a
#: uint8 ``(H, W, 3)`` grid of the feedback renders when that step reconstructed, else None
StepReport = Callable[[int, int, "np.ndarray | None"], None]


def message_for_upload(error: UserError, upload: str | os.PathLike) -> str:
    """The CLI's one line for ``error``, with the upload's temporary path replaced by its file
    name: ``generate bad.png`` run beside the file prints exactly this after ``error: ``."""
    return str(error).replace(str(upload), Path(upload).name)


class ModelCache:
    """Loaded pipelines by recipe, so a recipe's models load once and serve every request.

    The page's options (steps, seed, mesh, background, intermediates) change the sampler and
    the outputs, never the components, so the key is the recipe as chosen on the page. At most
    ``capacity`` recipes stay loaded (least recently used goes first): a full-size recipe takes
    most of a GPU, so by default switching recipes frees the previous one.
    """

    def __init__(self, capacity: int = 1, load: Callable[["Recipe"], "ImageTo3DPipeline"] | None = None):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        from .pipeline import ImageTo3DPipeline

        self.capacity = capacity
        self.load = load or ImageTo3DPipeline.from_recipe
        self.loaded: dict[str, ImageTo3DPipeline] = {}

    def pipeline(self, key: str, recipe: "Recipe") -> "ImageTo3DPipeline":
        """A pipeline running ``recipe`` on the components loaded for ``key`` (loaded now if
        they are not): the sampler and outputs follow ``recipe``, the weights are shared."""
        from .pipeline import ImageTo3DPipeline

        loaded = self.loaded.pop(key, None)
        if loaded is None:
            while len(self.loaded) >= self.capacity:
                self.loaded.pop(next(iter(self.loaded)))
            loaded = self.load(recipe)
        self.loaded[key] = loaded  # most recently used last
        return ImageTo3DPipeline(
            recipe, loaded.generator, loaded.reconstructor, loaded.encoders, loaded.device, loaded.dtype, loaded.components
        )


class GenerationService:
    """Runs ``generate``'s steps for the page, one request at a time, into ``output_root``.

    Each request gets ``<output_root>/<NNNN>/<image name>/``, the folder ``generate -o
    <output_root>/<NNNN>`` would write. Without ``output_root`` the results go to a temporary
    folder removed when the service is garbage-collected or the process exits.
    """

    def __init__(self, default_recipe: str = DEFAULT_RECIPE, output_root: str | os.PathLike | None = None, cache: ModelCache | None = None):
        self.default_recipe = default_recipe
        if output_root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="ouroboros3d-app-")
            output_root = self._tmp.name
        self.output_root = Path(output_root)
        self.cache = cache or ModelCache()
        self.counter = itertools.count(1)
        # the queue runs one generation at a time; this lock also covers a generation whose
        # page was closed (its worker thread finishes while the queue already starts the next)
        self.lock = threading.Lock()

    def recipe_choices(self) -> list[str]:
        """Shipped recipe names, and the default one when it is a file of the user's."""
        from .recipe import list_recipes

        names = list(list_recipes())
        return names if self.default_recipe in names else [self.default_recipe, *names]

    def recipe_defaults(self, recipe: str) -> tuple[int, int]:
        """The recipe's own steps and seed (what ``generate`` uses without ``--steps``/``--seed``)."""
        from .recipe import load_recipe

        model = load_recipe(recipe).model
        return model.sampler.steps, model.seed

    def check(self, request: Request) -> tuple["Recipe", "PreprocessedImage"]:
        """``generate``'s checks before any model loads, in its order: the input path, the
        recipe with the page's options, the mesh libraries, the image itself. Returns the
        recipe and the preprocessed input; raises the same :class:`UserError` the CLI prints."""
        from .cli import check_input_paths, generate_overrides
        from .pipeline import preprocess_for_recipe
        from .recipe import load_recipe

        check_input_paths([request.image])
        recipe = load_recipe(request.recipe, generate_overrides(steps=request.steps, seed=request.seed, mesh=request.mesh))
        if recipe.model.output.mesh:
            from .mesh_from_gaussians import require_mesh_libraries

            require_mesh_libraries()
        return recipe, preprocess_for_recipe(recipe, request.image, request.background)

    def run(self, request: Request, report: StepReport | None = None) -> Outcome:
        """Generate and save one object, calling ``report`` after every sampling step."""
        from .cli import output_folders
        from .io.grid import make_grid

        recipe, pre = self.check(request)
        total = recipe.model.sampler.steps
        columns = recipe.model.output.grid_columns

        def step(info: "StepInfo") -> None:
            if report is None:
                return
            preview = None
            if info.feedback and info.maps:
                maps = info.maps.get("rgb", next(iter(info.maps.values())))
                preview = make_grid(maps[0].detach().float().clamp(0, 1).cpu(), columns=columns)
            report(info.index, total, preview)

        with self.lock:
            start = time.perf_counter()
            pipe = self.cache.pipeline(request.recipe, recipe)
            result = pipe(pre, callbacks=[step], intermediates=request.intermediates)
            folder = pipe.save(result, output_folders([request.image], self.output_root / f"{next(self.counter):04d}")[0])
            seconds = time.perf_counter() - start
        manifest_files = _manifest_files(folder)
        files = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
        random = [c.name for c in pipe.components if c.random_init]
        return Outcome(folder, files, manifest_files, seconds, list(result.warnings), random)


def _manifest_files(folder: Path) -> dict[str, str]:
    import json

    return json.loads((folder / "manifest.json").read_text())["files"]


# ---------------------------------------------------------------------- the page
def _status(outcome: Outcome) -> str:
    """The result's summary line, and what the CLI would print to stderr about it."""
    lines = [f"Done in {outcome.seconds:.1f} s (with loading the models on a recipe's first run): {len(outcome.files)} files."]
    if outcome.random_weights:
        lines.append(f"note: {', '.join(outcome.random_weights)} use RANDOM weights (no weights in the recipe): outputs are not meaningful")
    lines += [f"warning: {w}" for w in outcome.warnings]
    return "\n\n".join(lines)


def build_app(service: GenerationService) -> "gradio.Blocks":
    """The page: inputs on the left, progress and results on the right."""
    gr = import_gradio()

    choices = service.recipe_choices()
    default_steps, default_seed = service.recipe_defaults(service.default_recipe)

    def user_error(error: UserError, upload: str) -> gr.Error:
        return gr.Error(message_for_upload(error, upload), duration=None, print_exception=False)

    def show_input(image: str | None, recipe: str, plain: bool) -> np.ndarray | None:
        """The upload as the generator will see it (recentred, on white), or the error now."""
        if image is None:
            return None
        try:
            _, pre = service.check(Request(image, recipe, plain_background=plain))
        except UserError as error:
            raise user_error(error, image) from None
        return pre.input_rgb()

    def generate(
        image: str | None,
        recipe: str,
        steps: float,
        seed: float,
        plain: bool,
        mesh: bool,
        intermediates: bool,
        progress: gr.Progress = gr.Progress(),
    ) -> Iterator[dict[Any, Any]]:
        """Generation runs in a worker thread and reports each step through a queue, so this
        generator can move the progress bar and show the step's renders while it samples."""
        if image is None:
            raise gr.Error("upload an image first", duration=None, print_exception=False)
        request = Request(image, recipe, int(steps), int(seed), plain, mesh, intermediates)
        events: queue.Queue[tuple[str, Any]] = queue.Queue()

        def work() -> None:
            try:
                events.put(("done", service.run(request, lambda i, n, view: events.put(("step", (i, n, view))))))
            except Exception as error:  # handed to the page's thread, which raises it
                events.put(("failed", error))

        progress(0, desc="checking the input and loading the models")
        threading.Thread(target=work, name="ouroboros3d-generate", daemon=True).start()
        while True:
            kind, payload = events.get()
            if kind == "step":
                index, total, view = payload
                progress((index + 1, total), desc=f"sampling step {index + 1}/{total}", unit="steps")
                if view is not None:
                    yield {preview: view}
                continue
            if kind == "failed":
                if isinstance(payload, UserError):
                    raise user_error(payload, image) from None
                raise payload
            outcome: Outcome = payload
            video = outcome.path("video")
            yield {
                grid: str(outcome.path("grid")),
                turntable: str(video) if video is not None and video.suffix == ".mp4" else None,
                viewer: str(outcome.viewer_model) if outcome.viewer_model else None,
                downloads: [str(outcome.folder / f) for f in outcome.files],
                status: _status(outcome),
            }
            return

    with gr.Blocks(title="ouroboros3d", analytics_enabled=False) as app:
        gr.Markdown(
            "## ouroboros3d: image to 3D\n"
            "A multi-view diffusion generator and a 3D reconstructor in one denoising loop. "
            "The same run and the same files as `ouroboros3d generate`."
        )
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.File(label="Input image (RGBA uses its alpha)", elem_id="input-image")
                if EXAMPLE.is_file():
                    gr.Examples([[str(EXAMPLE)]], inputs=[image], label="Example")
                seen = gr.Image(label="Input as the generator sees it", interactive=False, format="png", elem_id="input-seen")
                recipe = gr.Dropdown(choices, value=service.default_recipe, label="Recipe", elem_id="recipe")
                steps = gr.Slider(1, 100, value=default_steps, step=1, label="Steps", elem_id="steps")
                seed = gr.Number(value=default_seed, precision=0, label="Seed", elem_id="seed")
                plain = gr.Checkbox(label="Plain background, no background removal (--no-remove-background)")
                mesh = gr.Checkbox(label="Also a mesh, model.glb (--mesh)")
                intermediates = gr.Checkbox(label="Save every step's feedback maps (--save-intermediates)")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                preview = gr.Image(
                    label="Current step: renders of the 3D feedback", interactive=False, format="png", height=220, elem_id="preview"
                )
                grid = gr.Image(label="Generated views", interactive=False, format="png", height=300, elem_id="views")
                with gr.Row():
                    turntable = gr.Video(label="Turntable", interactive=False, autoplay=True, loop=True, elem_id="turntable")
                    viewer = gr.Model3D(label="3D (drag to turn)", interactive=False, clear_color=(1.0, 1.0, 1.0, 1.0), elem_id="viewer")
                downloads = gr.File(label="Downloads", file_count="multiple", interactive=False, height=320, elem_id="downloads")
                status = gr.Markdown(elem_id="status")

        for trigger in (image.change, plain.change):
            trigger(show_input, [image, recipe, plain], [seen])
        recipe.change(service.recipe_defaults, [recipe], [steps, seed])
        run.click(generate, [image, recipe, steps, seed, plain, mesh, intermediates], [preview, grid, turntable, viewer, downloads, status])
    return app


def serve(recipe: str = DEFAULT_RECIPE, host: str = "127.0.0.1", port: int = 7860, share: bool = False, block: bool = True) -> "gradio.Blocks":
    """Start the page on ``host:port``; with ``block`` it serves until Ctrl-C, which reaches
    the caller as ``KeyboardInterrupt`` after the server is closed (the CLI then prints
    ``interrupted``, as every command does).

    The recipe is checked now (one line if it is unknown or invalid); its models load at the
    first generation. Without ``block`` returns the running app (``app.close()`` stops it).
    """
    import_gradio()
    from .recipe import load_recipe

    load_recipe(recipe)
    service = GenerationService(recipe)
    app = build_app(service)
    # one generation at a time; everyone else waits in the queue with their position shown
    app.queue(default_concurrency_limit=1)
    try:
        app.launch(
            server_name=host,
            server_port=port,
            share=share,
            prevent_thread_lock=True,
            ssr_mode=False,
            mcp_server=False,
            css=PAGE_CSS,
            allowed_paths=[str(service.output_root)],
        )
    except OSError as error:  # gradio's own message names its environment variables, not our options
        raise UserError(
            f"cannot serve on {host}:{port}: the port is in use or the address is not this machine's",
            hint="pass another --port, or --host 127.0.0.1",
        ) from error
    if block:
        try:
            while True:
                time.sleep(3600)
        finally:
            app.close()
    return app
