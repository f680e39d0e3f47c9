"""The ``ouroboros3d`` command.

Each top-level command is a ``(name, help, add_arguments)`` entry of :data:`COMMANDS`;
``add_arguments(parser)`` adds the command's options and sets ``func`` (a function taking the
parsed arguments and returning the exit code) with ``parser.set_defaults``. Commands that need
torch import it inside their ``func``, so ``--help`` and ``plugins list`` stay fast.

Exit codes: 0 success, 1 a check found problems, 2 a user error (printed as one line
``error: ...``; the traceback only with ``--debug``), 130 interrupted (Ctrl-C, printed as
``interrupted``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback
from pathlib import Path
from typing import Callable, Sequence

from . import __version__
from .errors import UserError

AddArguments = Callable[[argparse.ArgumentParser], None]
#: exit code after Ctrl-C (128 + SIGINT, what shells report)
EXIT_INTERRUPTED = 130


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, as plain text (the last column is not padded)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row, widths)] + [str(row[-1])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------------- plugins
def _plugins_list(args: argparse.Namespace) -> int:
    from .registry import get_registry

    registry = get_registry()
    if args.json:
        print(json.dumps(registry.as_dict(), indent=2))
        return 0
    rows = [
        (
            c.spec.kind,
            c.spec.name + (" [slot]" if c.spec.slot else ""),
            c.plugin,
            c.provider,
            ",".join(c.spec.devices),
            c.spec.description,
        )
        for c in registry.components()
    ]
    if rows:
        print(_table(("KIND", "NAME", "PLUGIN", "DISTRIBUTION", "DEVICES", "DESCRIPTION"), rows))
    else:
        print("no components installed")
    for failure in registry.failures:
        print(failure.format())
    for conflict in registry.conflicts:
        print(f"{conflict.format()} (fix: {conflict.hint})")
    if registry.disabled:
        print("disabled: " + ", ".join(registry.disabled))
    warning = registry.unmatched_disabled_warning()
    if warning:
        print(warning, file=sys.stderr)
    return 0


def _plugins_check(args: argparse.Namespace) -> int:
    from .registry import get_registry

    registry = get_registry()
    report = registry.check()
    print(report.format())
    warning = registry.unmatched_disabled_warning()
    if warning:
        print(warning, file=sys.stderr)
    return 0 if report.ok else 1


def _add_plugins(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="plugins_command", required=True, metavar="{list,check}")
    p = sub.add_parser("list", help="every installed component with its distribution and version", parents=[_common()])
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_plugins_list)
    p = sub.add_parser("check", help="import every component and report failures", parents=[_common()])
    p.set_defaults(func=_plugins_check)


# ---------------------------------------------------------------------- recipes
def _recipes_list(args: argparse.Namespace) -> int:
    from .recipe import list_recipes

    recipes = list_recipes()
    if not recipes:
        print("no recipes installed")
    for name, path in recipes.items():
        print(f"{name}\t{path}")
    return 0


def _recipes_show(args: argparse.Namespace) -> int:
    from .recipe import load_recipe

    print(load_recipe(args.recipe, args.overrides).dump(), end="")
    return 0


def _recipes_validate(args: argparse.Namespace) -> int:
    from .recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    names = [recipe.generator_spec.name, recipe.reconstructor_spec.name] + [s.name for s in recipe.feedback_specs]
    print(f"{args.recipe}: valid ({' + '.join(names)})")
    model = recipe.model
    if not any(entry.weights for entry in (model.generator, model.reconstructor, *model.feedback)):
        return 0
    if not args.check_weights:
        print("weights: not checked (--check-weights checks that every weights file is local, cached or downloadable)")
        return 0
    from .build import missing_weights
    from .weights import missing_weights_error

    missing = missing_weights(recipe)
    if not missing:
        print("weights: all available (local, cached or downloadable)")
        return 0
    print(f"weights: {missing_weights_error(missing)}")
    return 1


def add_overrides_argument(parser: argparse.ArgumentParser) -> None:
    """``--set key.path=value`` (repeatable), shared by every command that loads a recipe."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set sampler.steps=10 (value parsed as YAML; repeatable)",
    )


def _add_recipes(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="recipes_command", required=True, metavar="{list,show,validate}")
    p = sub.add_parser("list", help="recipes shipped with the installed plugins", parents=[_common()])
    p.set_defaults(func=_recipes_list)
    p = sub.add_parser("show", help="print a recipe fully resolved (extends and overrides applied)", parents=[_common()])
    p.add_argument("recipe", help="shipped recipe name or .yaml file")
    add_overrides_argument(p)
    p.set_defaults(func=_recipes_show)
    p = sub.add_parser("validate", help="check a recipe against the installed plugins", parents=[_common()])
    p.add_argument("recipe", help=".yaml file or shipped recipe name")
    p.add_argument("--check-weights", action="store_true", help="also check that every weights file is local, cached or downloadable")
    add_overrides_argument(p)
    p.set_defaults(func=_recipes_validate)


# ---------------------------------------------------------------------- weights
def _component_spec(name: str, kind: str | None):
    """The spec for ``--component NAME`` (``--kind`` only needed when the name is ambiguous)."""
    from .registry import get_registry

    return get_registry().get(kind, name)


def _weights_inspect(args: argparse.Namespace) -> int:
    weights = importlib.import_module("ouroboros_core.weights")
    report = weights.inspect_file(args.file, _component_spec(args.component, args.kind), args.preset)
    print(report.format())
    return 0 if report.ok else 1


def _weights_convert(args: argparse.Namespace) -> int:
    weights = importlib.import_module("ouroboros_core.weights")
    out = weights.convert_file(args.file, args.output, _component_spec(args.component, args.kind), args.preset)
    print(f"wrote {out}")
    return 0


def _add_weights(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="weights_command", required=True, metavar="{inspect,convert}")

    def component_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("file", help="checkpoint file (.safetensors, .pth, .ckpt)")
        p.add_argument("--component", required=True, metavar="NAME", help="component the weights belong to (see plugins list)")
        p.add_argument("--kind", choices=("generator", "reconstructor", "feedback"), help="needed when NAME is used by several kinds")
        p.add_argument("--preset", help="the component preset the weights were trained with")

    p = sub.add_parser("inspect", help="compare a checkpoint's keys and shapes with a component", parents=[_common()])
    component_options(p)
    p.set_defaults(func=_weights_inspect)
    p = sub.add_parser("convert", help="convert a checkpoint to the component's safetensors layout", parents=[_common()])
    component_options(p)
    p.add_argument("-o", "--output", required=True, help="output .safetensors file")
    p.set_defaults(func=_weights_convert)


# ---------------------------------------------------------------------- the parser
#: top-level commands: (name, help, add_arguments). Other modules' commands are added here.
# ---------------------------------------------------------------------- generate
def output_folders(images: Sequence[str], out_dir: Path) -> list[Path]:
    """One folder per input, named after the file; repeated stems get a numeric suffix (the
    web app names its result folders this way too)."""
    used: dict[str, int] = {}
    folders = []
    for image in images:
        stem = Path(image).name.rsplit(".", 1)[0] or "image"
        n = used.get(stem, 0)
        used[stem] = n + 1
        folders.append(out_dir / (stem if n == 0 else f"{stem}-{n}"))
    return folders


def check_input_paths(images: Sequence[str]) -> None:
    """Each input is an existing file (not a folder): the first check of ``generate`` and of
    the web app, so both report the same one line."""
    from .errors import InputError

    for image in images:
        path = Path(image)
        if path.is_dir():
            raise InputError("is a folder, not an image file", where=image, hint="give image files (several may be listed, e.g. folder/*.png)")
        if not path.is_file():
            raise InputError("input image not found", where=image, hint="check the path")


def generate_overrides(
    overrides: Sequence[str] = (),
    steps: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    mesh: bool = False,
) -> list[str]:
    """``generate``'s options as recipe overrides, after the ``--set`` ones and in this order:
    the web app builds its recipe with the same list, so its ``recipe.yaml`` is the same file."""
    result = list(overrides)
    if steps is not None:
        result.append(f"sampler.steps={steps}")
    if seed is not None:
        result.append(f"seed={seed}")
    if device is not None:
        result.append(f"device={device}")
    if dtype is not None:
        result.append(f"dtype={dtype}")
    if mesh:
        result.append("output.mesh=true")
    return result


def _generate(args: argparse.Namespace) -> int:
    from .io.atomic import check_result_dir
    from .pipeline import RESULT_FILES, ImageTo3DPipeline, preprocess_for_recipe
    from .recipe import load_recipe

    # everything that can be checked is checked before any model loads: the recipe, every
    # input image, every output folder; a full-size model takes long to load
    check_input_paths(args.images)
    overrides = generate_overrides(args.overrides, args.steps, args.seed, args.device, args.dtype, args.mesh)
    recipe = load_recipe(args.recipe, overrides)
    if recipe.model.output.mesh:
        from .mesh_from_gaussians import require_mesh_libraries

        require_mesh_libraries()
    folders = output_folders(args.images, Path(args.output or recipe.model.output.dir))
    for folder in folders:
        check_result_dir(folder, args.overwrite, RESULT_FILES)
    background = "as-is" if args.no_remove_background else "auto"
    inputs = [preprocess_for_recipe(recipe, image, background) for image in args.images]
    pipe = ImageTo3DPipeline.from_recipe(recipe)
    random = [c.name for c in pipe.components if c.random_init]
    if random:
        print(f"note: {', '.join(random)} use RANDOM weights (no weights in the recipe): outputs are not meaningful", file=sys.stderr)
    for image, pre, folder in zip(args.images, inputs, folders):
        result = pipe(pre, progress=not args.quiet, intermediates=args.save_intermediates)
        pipe.save(result, folder, overwrite=args.overwrite)
        for warning in result.warnings:
            print(f"warning: {image}: {warning}", file=sys.stderr)
        print(f"{image} -> {folder} ({result.timings['total']:.1f} s)")
    return 0


def _add_generate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="input images (RGBA uses its alpha; RGB needs rembg or --no-remove-background)")
    parser.add_argument("--recipe", default="svd-lgm", help="shipped recipe name or .yaml file (default: svd-lgm)")
    parser.add_argument("-o", "--output", default=None, help="output folder (default: the recipe's output.dir)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into an existing, non-empty result folder: replaces only the files generate writes, keeps all others",
    )
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (sampler.steps)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or auto")
    parser.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"])
    parser.add_argument(
        "--no-remove-background",
        action="store_true",
        help="use an RGB image as is: the object mask is estimated from a plain background colour",
    )
    parser.add_argument("--save-intermediates", action="store_true", help="also save every step's feedback maps (steps/*.png)")
    parser.add_argument(
        "--mesh", action="store_true", help="also write model.glb, a vertex-coloured mesh of the Gaussians (output.mesh; the 'mesh' extra)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_overrides_argument(parser)
    parser.set_defaults(func=_generate)


# ---------------------------------------------------------------------- train / evaluate
def _recipe_with_device(args: argparse.Namespace):
    """The recipe of ``--recipe`` with ``--set`` overrides and ``--device`` applied."""
    from .recipe import load_recipe

    return load_recipe(args.recipe, list(args.overrides) + ([f"device={args.device}"] if args.device else []))


def _train(args: argparse.Namespace) -> int:
    import os

    from .runs import dry_run, train

    recipe = _recipe_with_device(args)
    if args.dry_run:
        report = dry_run(recipe)
        groups = ", ".join(f"{prefix} {count:,}" for prefix, count in report["trainable_groups"].items())
        parts = ", ".join(f"{name} {c['trainable']:,}/{c['total']:,}" for name, c in report["parameters"].items())
        memory = f"peak RSS {report['peak_rss_gib']:.2f} GiB" + (f", peak GPU {report['peak_gpu_gib']:.2f} GiB" if "peak_gpu_gib" in report else "")
        print(f"dry run of {report['recipe']} on {report['device']} ({report['processes']} process(es)); nothing written")
        print(f"trainable parameters by trainer.trainable: {groups}")
        print(f"parameters trainable/total: {parts}")
        print(f"one optimiser step (the first, warm-up included): {report['step_s']:.3f} s/step (build {report['build_s']:.1f} s); {memory}")
        print(f"losses: " + ", ".join(f"{k} {v:.4g}" for k, v in report["losses"].items()))
        return 0
    main_process = int(os.environ.get("RANK", "0")) == 0  # under `accelerate launch`, print once
    run_dir = Path(args.output or recipe.model.trainer.output_dir)
    if main_process:
        print(f"logs: {run_dir / 'log.jsonl'}", end="")
        if recipe.model.trainer.tensorboard:
            print(f"; TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}")
        else:
            print(" (TensorBoard: --set trainer.tensorboard=true)")
    run_dir = train(recipe, args.output, resume=args.resume, max_steps=args.max_steps, progress=not args.quiet)
    if main_process:
        print(f"trained -> {run_dir} (generate with: ouroboros3d generate IMAGE --recipe {run_dir / 'trained.yaml'})")
    return 0


def _add_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="shipped recipe name or .yaml file (its trainer section)")
    parser.add_argument("-o", "--output", default=None, help="run folder (default: the recipe's trainer.output_dir)")
    parser.add_argument("--resume", default=None, metavar="CHECKPOINT", help="a checkpoint folder, or 'latest' of this run folder")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps (trainer.max_steps)")
    parser.add_argument("--device", default=None, help="cpu, cuda or auto (multi-GPU: launch with `accelerate launch`)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--dry-run", action="store_true", help="build everything, run one step, print parameter counts, memory and s/step; write nothing")
    add_overrides_argument(parser)
    parser.set_defaults(func=_train)


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate, markdown_table, parse_variants

    compare = parse_variants(args.compare)
    recipe = _recipe_with_device(args)
    lpips_net = None if args.lpips == "none" else args.lpips
    if lpips_net:  # a missing backbone download fails now, not after generating every object
        from .preflight import check_lpips

        check_lpips(lpips_net, args.lpips_random_trunk)
    result = evaluate(recipe, args.limit, args.output, lpips_net, args.lpips_random_trunk, compare=compare, progress=not args.quiet)
    if compare:
        print(markdown_table(result), end="")
    else:
        means = {name: method["mean"] for name, method in result["methods"].items()}
        print(json.dumps({"objects": result["objects"], "mean": means, "lpips": result["lpips"]}, indent=2))
    return 0


def _add_evaluate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="recipe whose trainer.data names the evaluation objects")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N objects")
    parser.add_argument("-o", "--output", default=None, help="write the metrics to this JSON file")
    parser.add_argument("--lpips", default="alex", choices=["alex", "vgg", "none"], help="LPIPS backbone (downloaded at first use)")
    parser.add_argument("--lpips-random-trunk", action="store_true", help="offline smoke tests only: LPIPS with a random backbone")
    parser.add_argument(
        "--compare", default=None, metavar="VARIANTS",
        help="ablation on the same weights: comma-separated sampler variants from none, resample, joint-rgb, joint-ccm, joint (or all); "
        "writes a markdown table and a bar chart beside the -o JSON",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--device", default=None)
    add_overrides_argument(parser)
    parser.set_defaults(func=_evaluate)


# ---------------------------------------------------------------------- data
def _data_synth(args: argparse.Namespace) -> int:
    from .data.synth import synthesize

    root = synthesize(args.output, args.objects, args.seed, args.split, args.size, args.workers, progress=not args.quiet)
    print(f"{args.objects} {args.split} objects in {root} (official layout: trainer.data.kind=official trainer.data.root={root})")
    return 0


def _add_data(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="{synth}")
    p = sub.add_parser(
        "synth", parents=[_common()],
        help="write procedural objects (16-view orbit renders + meta.json) in the official dataset layout",
    )
    p.add_argument("-o", "--output", required=True, help="dataset folder (created; finished objects are kept and skipped)")
    p.add_argument("--objects", type=int, required=True, help="number of objects")
    p.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    p.add_argument("--split", default="train", choices=["train", "heldout"], help="train and heldout objects never overlap")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--workers", type=int, default=1, help="processes rendering in parallel")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_data_synth)


# ---------------------------------------------------------------------- mesh
def _mesh(args: argparse.Namespace) -> int:
    import time

    from .errors import InputError
    from .mesh import MESH_FORMATS
    from .mesh_from_gaussians import require_mesh_libraries

    source = Path(args.ply)
    if source.is_dir():
        raise InputError("is a folder, not a .ply file", where=args.ply, hint="give a 3D Gaussian Splatting .ply (e.g. outputs/NAME/model.ply)")
    if not source.is_file():
        raise InputError("Gaussian .ply not found", where=args.ply, hint="check the path")
    target = Path(args.output) if args.output else source.with_suffix(".glb")
    if target.suffix.lower() not in MESH_FORMATS:
        raise UserError(f"cannot write a mesh as {target.name!r}: unknown extension {target.suffix!r}", hint=f"use one of {', '.join(MESH_FORMATS)}")
    if target.is_dir():
        raise UserError("the output is a folder", where=str(target), hint="give a file name such as model.glb")
    if target.exists() and not args.overwrite:
        raise UserError("the output file already exists", where=str(target), hint="pass --overwrite to replace it, or choose another -o")
    require_mesh_libraries()

    from .build import resolve_device
    from .gaussians import GaussianCloud
    from .mesh_from_gaussians import mesh_from_gaussians

    start = time.perf_counter()
    cloud = GaussianCloud.load_ply(source, raw_quaternions=args.raw_quaternions).to(resolve_device(args.device))
    info: dict = {}
    mesh = mesh_from_gaussians(
        cloud, resolution=args.resolution, views=args.views, faces=args.faces or None, render_size=args.render_size, info=info
    )
    mesh.save(target)
    if info["simplification"] == "resample":
        print("note: fast-simplification is not installed: simplified by a coarser grid (pip install 'ouroboros3d[mesh]')", file=sys.stderr)
    print(f"{source} -> {target} ({info['faces']} faces, {info['vertices']} vertices, {time.perf_counter() - start:.1f} s)")
    return 0


def _add_mesh(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ply", help="3D Gaussian Splatting .ply (what generate writes as model.ply)")
    parser.add_argument("-o", "--output", default=None, help="mesh file: .glb (default: the .ply's name with .glb), .obj or .ply")
    parser.add_argument("--resolution", type=int, default=128, help="TSDF grid points per axis (default 128)")
    parser.add_argument("--views", type=int, default=64, help="rendered views on a sphere fused into the TSDF (default 64)")
    parser.add_argument("--faces", type=int, default=20000, help="simplify to at most this many faces; 0 keeps all (default 20000)")
    parser.add_argument("--render-size", type=int, default=None, help="pixels per side of each view (default: the resolution)")
    parser.add_argument(
        "--raw-quaternions", action="store_true", help="build covariances from un-normalised quaternions (Gaussians from the published LGM weights)"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: CUDA when available; gsplat renders there)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.set_defaults(func=_mesh)


# ---------------------------------------------------------------------- app
def _app(args: argparse.Namespace) -> int:
    from .app import serve

    serve(args.recipe, args.host, args.port, args.share)
    return 0


def _add_app(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", default="tiny", help="recipe selected when the page opens (default: tiny; the page lists every shipped one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default; needs internet)")
    parser.set_defaults(func=_app)


COMMANDS: list[tuple[str, str, AddArguments]] = [
    ("generate", "turn images into multi-view images, a 3D model and a turntable video", _add_generate),
    ("train", "train a recipe's components jointly (self-conditioned feedback)", _add_train),
    ("evaluate", "score generated views and 3D renders against ground truth (PSNR, SSIM, LPIPS)", _add_evaluate),
    ("plugins", "list and check installed plugins", _add_plugins),
    ("recipes", "list, show and validate recipes", _add_recipes),
    ("weights", "inspect and convert checkpoints", _add_weights),
    ("data", "make training and evaluation data", _add_data),
    ("mesh", "turn 3D Gaussians (.ply) into a vertex-coloured mesh (.glb) by TSDF fusion of rendered views", _add_mesh),
    ("app", "serve a web page (Gradio) that runs generate on an uploaded image and shows the views, video and 3D", _add_app),
]


def _common() -> argparse.ArgumentParser:
    """Options every (sub)command accepts, so ``--debug`` works before or after the command."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of errors")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ouroboros3d",
        description="Image-to-3D with a multi-view generator and a 3D reconstructor in one recursive denoising loop.",
    )
    parser.add_argument("--version", action="version", version=f"ouroboros3d {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, add_arguments in COMMANDS:
        add_arguments(sub.add_parser(name, help=help_text, description=help_text, parents=[_common()]))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C: every writer cleans up its temporary files on the way out (io/atomic.py),
        # so nothing complete-looking is left; a training run keeps its last checkpoint
        if args.debug:
            traceback.print_exc()
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
