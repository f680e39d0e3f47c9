"""Weights: find, read, check and convert checkpoint files, for any component.

Nothing here knows a particular model. A component takes part in key conversion by
implementing the small :class:`SupportsWeightConversion` protocol on its module:

- ``convert_state_dict(state_dict) -> state_dict``: rename/drop keys of a foreign checkpoint
  so they match ``module.state_dict()`` (identity when absent). It may raise
  :class:`~ouroboros_core.errors.WeightsError` for a file it recognises as incompatible.
- ``allowed_missing(state_dict) -> set[str]``: module keys that may be absent from *this*
  (converted) state dict and keep their initial values, e.g. zero-initialised layers added on
  top of a published architecture (empty when absent).

Both are called on a module built on the meta device (:func:`inspect_file`), so they must
look only at key names and shapes, never at tensor values.

Sources accepted by :func:`resolve_weights` (what a recipe's ``weights:`` holds):

- a local file (``.safetensors``, ``.pth``, ``.pt``, ``.bin``, ``.ckpt``);
- a local folder, with the component's default file name inside it (or a single weights file);
- a Hugging Face hub id ``owner/name`` (with the component's default file name) or
  ``owner/name:path/in/repo.safetensors``, downloaded through ``huggingface_hub`` into its
  usual cache. Offline, or when the download fails, a :class:`WeightsError` says exactly what
  to download and where to put it.

Safetensors is the only format written (:func:`convert_file`); ``.pth``/``.pt``/``.bin`` are
read with ``torch.load(weights_only=True)``, which refuses arbitrary pickled objects.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol, runtime_checkable

import torch
from torch import nn

from .components import ComponentSpec
from .errors import WeightsError


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
# owner/name, optionally followed by :filename (hub ids never contain a second slash before ':')
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?::(?P<filename>.+))?$")
# keys under which training frameworks nest a plain state dict
_WRAPPER_KEYS = ("state_dict", "model", "module")
_LIST_LIMIT = 5

StateDict = dict[str, torch.Tensor]
AllowMissing = Iterable[str] | Callable[[str], bool]


@runtime_checkable
class SupportsWeightConversion(Protocol):
    """Optional methods of a component module that take part in weight loading (see module doc)."""

    def convert_state_dict(self, state_dict: StateDict) -> StateDict: ...

    def allowed_missing(self, state_dict: Mapping[str, torch.Tensor]) -> set[str]: ...


def convert_for(module: nn.Module, state_dict: StateDict) -> StateDict:
    """The module's own key conversion, or the state dict unchanged."""
    convert = getattr(module, "convert_state_dict", None)
    return convert(state_dict) if callable(convert) else state_dict


def allowed_missing_for(module: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> set[str]:
    """The module keys that may stay at their initial values for this state dict."""
    allowed = getattr(module, "allowed_missing", None)
    return set(allowed(state_dict)) if callable(allowed) else set()


# ----------------------------------------------------------------------------- finding files
def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """``(repo, filename)`` of ``owner/name[:file]``; ``None`` for text that is (or looks like)
    a local path: it starts with ``.``, ``/`` or ``~``, or is ``a/b.pth`` without a colon."""
    match = _HUB_ID.match(text)
    if match is None or text.startswith((".", "/", "~")):
        return None
    if match.group("filename") is None and text.endswith(WEIGHT_SUFFIXES):
        return None
    return match.group("repo"), match.group("filename")


def resolve_weights(source: str | os.PathLike, default_filename: str | None = None) -> Path:
    """Turn a recipe's ``weights:`` value into a local file path (see module doc).

    Raises:
        WeightsError: the file does not exist, the folder holds no usable file, or the hub
            download failed (offline, unknown repository or file); the message names the file
            to fetch and where to put it.
    """
    text = str(source).strip()
    if not text:
        raise WeightsError("empty weights source", hint="give a file, a folder or a hub id like owner/name:file.safetensors")
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        return _file_in_folder(path, default_filename)
    hub = parse_hub_id(text)
    if hub is None:
        raise WeightsError(f"weights file or folder not found: {path}", hint="check the path, or give a hub id like owner/name:file.safetensors")
    repo, filename = hub[0], hub[1] or default_filename
    if not filename:
        raise WeightsError(
            f"hub id {repo!r} names no file and this component has no default file name",
            hint=f"write it as {repo}:FILENAME",
        )
    return _download(repo, filename)


def _file_in_folder(folder: Path, default_filename: str | None) -> Path:
    if default_filename and (folder / default_filename).is_file():
        return folder / default_filename
    candidates = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if len(candidates) == 1 and default_filename is None:
        return candidates[0]
    wanted = f"{default_filename!r}" if default_filename else "a single weights file"
    found = ", ".join(p.name for p in candidates) or "no weights files"
    raise WeightsError(
        f"folder {folder} does not contain {wanted} (found: {found})",
        hint=f"name the file explicitly, e.g. {folder / (candidates[0].name if candidates else 'model.safetensors')}",
    )


def _download(repo: str, filename: str) -> Path:
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import hf_hub_download

    url = f"https://huggingface.co/{repo}/resolve/main/{filename}"
    how = (
        f"download {url} (or run `hf download {repo} {filename}` on a machine with internet and copy "
        f"the Hugging Face cache), then set weights: to the local file path"
    )
    failures = (
        hf_errors.HfHubHTTPError,
        hf_errors.LocalEntryNotFoundError,
        hf_errors.EntryNotFoundError,
        hf_errors.OfflineModeIsEnabled,
        hf_errors.HFValidationError,
        OSError,
    )
    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename))
    except failures as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError(
            f"could not get {filename!r} from hub repository {repo!r} (no local file or folder of that name exists either): {reason}",
            hint=how,
        ) from err


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be reached (``HF_HUB_OFFLINE`` set counts as no)."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def unavailable_reason(source: str | os.PathLike, reachable: Callable[[], bool] | None = None) -> str | None:
    """Why ``source`` can be neither found locally, in the Hugging Face cache, nor downloaded
    now (``None`` when it may resolve). ``reachable`` answers whether the hub is reachable
    (default :func:`hub_reachable`; pass a cached answer when checking several sources)."""
    from huggingface_hub import constants

    text = str(source).strip()
    if Path(text).expanduser().exists():
        return None
    hub = parse_hub_id(text)
    if hub is None:
        return "file or folder not found"
    repo, filename = hub
    cached = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    if cached.is_dir() and (filename is None or any(cached.glob(f"snapshots/*/{filename}"))):
        return None
    if (reachable or hub_reachable)():
        return None
    return "not in the local Hugging Face cache and the hub cannot be reached (offline)"


def check_available(source: str | os.PathLike, where: str | None = None) -> None:
    """Fail fast, before any model is built, when ``source`` can be neither found locally, in
    the Hugging Face cache, nor downloaded (offline). Anything that may still resolve passes;
    the component's own loading gives the detailed errors."""
    reason = unavailable_reason(source)
    if reason is not None:
        raise missing_weights_error([MissingWeights(where or "weights", str(source).strip(), reason)])


@dataclass
class MissingWeights:
    """A weights source of a recipe that is not available: its recipe key path, the source
    as written, and why (:func:`unavailable_reason`)."""

    key: str
    source: str
    reason: str


def missing_weights_error(missing: list[MissingWeights], where: str | None = None) -> WeightsError:
    """One error listing every missing source with the recipe keys that name it, and one
    command that downloads all the hub files."""
    from huggingface_hub import constants

    keys: dict[tuple[str, str], list[str]] = {}
    for m in missing:
        keys.setdefault((m.source, m.reason), []).append(m.key)
    by_reason: dict[str, list[str]] = {}
    for (source, reason), k in keys.items():
        by_reason.setdefault(reason, []).append(f"{', '.join(k)} = {source}")
    listed = ". ".join(f"{reason[0].upper()}{reason[1:]}: {'; '.join(items)}" for reason, items in by_reason.items())
    files: dict[str, list[str]] = {}
    for source, _ in keys:
        hub = parse_hub_id(source)
        if hub is not None:
            files.setdefault(hub[0], [])
            if hub[1] and hub[1] not in files[hub[0]]:
                files[hub[0]].append(hub[1])
    fixes = []
    if files:
        fetch = " && ".join(" ".join(["hf download", repo, *names]) for repo, names in files.items())
        fixes.append(f"on a machine with internet run `{fetch}` and copy the Hugging Face cache ({constants.HF_HUB_CACHE})")
    fixes.append("or set each key to a local file or folder (--set KEY=PATH)")
    count = len(keys)
    return WeightsError(
        f"{count} weights source{'s are' if count > 1 else ' is'} not available. {listed}",
        hint=", ".join(fixes) if files else fixes[-1].removeprefix("or "),
        where=where,
    )


# ----------------------------------------------------------------------------- reading files
def read_state_dict(path: str | os.PathLike, device: str | torch.device = "cpu", meta: bool = False) -> StateDict:
    """Read a checkpoint into ``{name: tensor}``.

    ``.safetensors`` is read with safetensors; ``.pth``/``.pt``/``.bin``/``.ckpt`` with
    ``torch.load(weights_only=True, mmap=True)`` (a checkpoint nesting its tensors under
    ``state_dict``/``model``/``module`` is unwrapped). With ``meta=True`` the tensors are
    meta tensors (names, shapes and dtypes only): safetensors reads only the header, and a
    torch file is memory-mapped without touching its data.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path, device, meta)
    if path.suffix in _TORCH_SUFFIXES:
        return _read_torch(path, device, meta)
    raise WeightsError(
        f"unsupported weights format {path.suffix!r}: {path}",
        hint=f"use one of {', '.join(WEIGHT_SUFFIXES)}",
    )


def _read_safetensors(path: Path, device: str | torch.device, meta: bool) -> StateDict:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        if not meta:
            return load_file(str(path), device=str(device))
        out: StateDict = {}
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                piece = f.get_slice(key)
                dtype = _SAFETENSORS_DTYPES.get(piece.get_dtype())
                if dtype is None:
                    raise WeightsError(f"{path}: tensor {key!r} has unsupported dtype {piece.get_dtype()}")
                out[key] = torch.empty(piece.get_shape(), dtype=dtype, device="meta")
        return out
    except SafetensorError as err:
        raise WeightsError(f"cannot read {path} as safetensors: {err}", hint="the file may be truncated; download it again") from err


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


#: The last memory-mapped torch checkpoint read, keyed by (path, size, mtime, device, meta): a
#: published file that several components load from (the official ``mv_model_unet.pth``
#: holds the generator and both adapters) is read once. Only memory-mapped reads are kept, so
#: the cache holds no copy of the data in RAM.
_MMAP_CACHE: dict[tuple, StateDict] = {}


def _read_torch(path: Path, device: str | torch.device, meta: bool) -> StateDict:
    location = "meta" if meta else device
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, str(location))
    if key in _MMAP_CACHE:
        return dict(_MMAP_CACHE[key])
    try:
        try:
            obj = torch.load(path, map_location=location, weights_only=True, mmap=True)
            state_dict = _as_state_dict(obj, path)
            _MMAP_CACHE.clear()
            _MMAP_CACHE[key] = state_dict
            return dict(state_dict)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            obj = torch.load(path, map_location=location, weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as err:
        raise WeightsError(
            f"{path} holds objects other than tensors and is not loaded (weights_only=True)",
            hint="convert it on a trusted machine to .safetensors",
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise WeightsError(f"cannot read {path}: {err}", hint="the file may be truncated; download it again") from err
    return _as_state_dict(obj, path)


def _as_state_dict(obj: object, path: Path) -> StateDict:
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        nested = [k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
        if len(nested) == 1:
            obj = obj[nested[0]]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} is not a state dict (a mapping of names to tensors)")
    return dict(obj)


def nonfinite_tensors(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or infinite values (in order)."""
    return [k for k, v in state_dict.items() if v.is_floating_point() and v.device.type != "meta" and not bool(torch.isfinite(v).all())]


def nonfinite_tensors_in_file(path: str | os.PathLike) -> list[str]:
    """:func:`nonfinite_tensors` of a checkpoint file, reading one tensor at a time
    (safetensors) or memory-mapped (torch files), so a large file is never held in memory."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return nonfinite_tensors(read_state_dict(path))  # torch.load(mmap=True): pages in on demand
    from safetensors import safe_open

    bad = []
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            if f.get_slice(key).get_dtype() in ("F64", "F32", "F16", "BF16") and nonfinite_tensors({key: f.get_tensor(key)}):
                bad.append(key)
    return bad


def nonfinite_error(names: list[str], source: object, where: str | None = None) -> WeightsError:
    """The error for weights holding NaN/Inf (they would silently produce empty or NaN outputs)."""
    return WeightsError(
        f"weights {source} hold NaN or infinite values in {len(names)} tensor(s): {_few(names)}",
        hint="the file is damaged or came from a diverged training run; use another checkpoint "
        "(`ouroboros3d weights inspect` lists the tensors)",
        where=where,
    )


# ----------------------------------------------------------------------------- comparing
@dataclass
class KeyDiff:
    """How a state dict differs from what a module expects."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    #: (key, shape in the file, shape in the module)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    #: module keys absent from the file but allowed to keep their initial values
    allowed_missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self) -> list[str]:
        """One line per kind of problem, listing the first few keys and the count."""
        lines = []
        if self.missing:
            lines.append(f"missing {len(self.missing)} key(s): {_few(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected {len(self.unexpected)} key(s): {_few(self.unexpected)}")
        if self.mismatched:
            shown = [f"{k} (file {list(a)} vs model {list(b)})" for k, a, b in self.mismatched[:_LIST_LIMIT]]
            more = f", ... and {len(self.mismatched) - _LIST_LIMIT} more" if len(self.mismatched) > _LIST_LIMIT else ""
            lines.append(f"{len(self.mismatched)} shape mismatch(es): {', '.join(shown)}{more}")
        return lines


def _few(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    return shown + (f", ... and {len(keys) - _LIST_LIMIT} more" if len(keys) > _LIST_LIMIT else "")


def _allow_predicate(allow: AllowMissing) -> Callable[[str], bool]:
    if callable(allow):
        return allow
    prefixes = tuple(allow)
    return lambda key: key.startswith(prefixes)


def compare_state_dicts(
    expected: Mapping[str, torch.Tensor],
    got: Mapping[str, torch.Tensor],
    allow_missing: AllowMissing = (),
) -> KeyDiff:
    """Compare names and shapes of ``got`` (a file) against ``expected`` (a module)."""
    allowed = _allow_predicate(allow_missing)
    diff = KeyDiff()
    for key, tensor in expected.items():
        if key not in got:
            (diff.allowed_missing if allowed(key) else diff.missing).append(key)
        elif tuple(got[key].shape) != tuple(tensor.shape):
            diff.mismatched.append((key, tuple(got[key].shape), tuple(tensor.shape)))
    diff.unexpected = [k for k in got if k not in expected]
    return diff


def load_strict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    allow_missing: AllowMissing = (),
    *,
    source: str | os.PathLike | None = None,
    assign: bool = False,
) -> KeyDiff:
    """Load ``state_dict`` into ``module``, refusing any missing, unexpected or mis-shaped key.

    ``allow_missing`` is a set of key prefixes (an exact key is its own prefix) or a predicate
    on module keys: those keys may be absent and keep their current values. Returns the
    difference (its ``allowed_missing`` says what kept its initial value).

    Raises:
        WeightsError: listing the first few offending keys of each kind and their counts.
    """
    diff = compare_state_dicts(module.state_dict(), state_dict, allow_missing)
    if not diff.ok:
        where = f"weights {source}" if source is not None else "weights"
        raise WeightsError(
            f"{where} do not match {type(module).__name__}: " + "; ".join(diff.problems()),
            hint="check that the component's config/preset matches the checkpoint (`ouroboros3d weights inspect`)",
        )
    module.load_state_dict(dict(state_dict), strict=False, assign=assign)
    return diff


def load_file(module: nn.Module, path: str | os.PathLike) -> KeyDiff:
    """Read ``path``, apply the module's key conversion and load strictly (the module's
    ``allowed_missing`` keys may be absent). The usual body of a ``load_weights`` method."""
    state_dict = convert_for(module, read_state_dict(path))
    bad = nonfinite_tensors(state_dict)
    if bad:
        raise nonfinite_error(bad, path)
    return load_strict(module, state_dict, allowed_missing_for(module, state_dict), source=path)


# ----------------------------------------------------------------------------- reports
@dataclass
class WeightsReport:
    """What ``ouroboros3d weights inspect`` prints: does a file load strictly into a component?"""

    path: Path
    component: str
    preset: str | None
    file_tensors: int
    file_parameters: int
    file_dtypes: list[str]
    model_tensors: int
    model_parameters: int
    diff: KeyDiff
    #: problems that stopped the comparison (e.g. the component refused the file)
    errors: list[str] = field(default_factory=list)
    #: tensors of the file holding NaN or infinite values
    nonfinite: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.nonfinite and self.diff.ok

    def format(self) -> str:
        preset = f" (preset {self.preset})" if self.preset else ""
        lines = [
            f"file:      {self.path} — {self.file_tensors} tensors, {self.file_parameters:,} values, dtype {'/'.join(self.file_dtypes) or '-'}",
            f"component: {self.component}{preset} — {self.model_tensors} tensors, {self.model_parameters:,} values",
        ]
        lines += [f"error:     {e}" for e in self.errors]
        lines += [f"problem:   {p}" for p in self.diff.problems()]
        if self.nonfinite:
            lines.append(f"problem:   {len(self.nonfinite)} tensor(s) hold NaN or infinite values: {_few(self.nonfinite)}")
        if self.diff.allowed_missing:
            lines.append(
                f"note:      {len(self.diff.allowed_missing)} module tensor(s) absent from the file keep their "
                f"initial values: {_few(self.diff.allowed_missing)}"
            )
        lines.append("result:    OK, loads strictly" if self.ok else "result:    does NOT load")
        return "\n".join(lines)


def _build_on_meta(spec: ComponentSpec, preset: str | None) -> nn.Module:
    if preset is not None and preset not in spec.presets:
        known = ", ".join(spec.presets) or "none"
        raise WeightsError(f"component {spec.name!r} has no preset {preset!r}", hint=f"use one of: {known}")
    with torch.device("meta"):
        return spec.build(preset=preset)


def inspect_file(path: str | os.PathLike, spec: ComponentSpec, preset: str | None = None) -> WeightsReport:
    """Check, without allocating the model (meta device), whether ``path`` loads strictly.

    The component is built from ``spec`` (and ``preset``) on the meta device; the file's
    names and shapes are passed through the component's own key conversion and compared.
    The file's values are read one tensor at a time to find NaN or infinite values.
    """
    path = Path(path)
    module = _build_on_meta(spec, preset)
    file_sd = read_state_dict(path, meta=True)
    expected = module.state_dict()
    report = WeightsReport(
        path=path,
        component=f"{spec.kind} {spec.name!r}",
        preset=preset,
        file_tensors=len(file_sd),
        file_parameters=sum(t.numel() for t in file_sd.values()),
        file_dtypes=sorted({str(t.dtype).removeprefix("torch.") for t in file_sd.values()}),
        model_tensors=len(expected),
        model_parameters=sum(t.numel() for t in expected.values()),
        diff=KeyDiff(),
    )
    report.nonfinite = nonfinite_tensors_in_file(path)
    try:
        converted = convert_for(module, file_sd)
    except WeightsError as err:
        report.errors.append(str(err))
        return report
    report.diff = compare_state_dicts(expected, converted, allowed_missing_for(module, converted))
    return report


def convert_file(
    path: str | os.PathLike,
    out: str | os.PathLike,
    spec: ComponentSpec,
    preset: str | None = None,
) -> Path:
    """Write ``path`` as ``.safetensors`` with the component's key names, after a strict check.

    Tensors keep their dtype. The file is written under a temporary name and renamed, so an
    interrupted conversion never leaves a file that looks complete.
    """
    from safetensors.torch import save_file

    out = Path(out)
    if out.suffix != ".safetensors":
        raise WeightsError(f"output {out} must end in .safetensors")
    report = inspect_file(path, spec, preset)
    if not report.ok:
        raise WeightsError(f"{path} does not match component {spec.name!r}:\n{report.format()}")
    module = _build_on_meta(spec, preset)
    tensors = convert_for(module, read_state_dict(path))
    # safetensors refuses tensors sharing memory; a private contiguous copy of each is always safe
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    metadata = {"format": "pt", "component": spec.name, "preset": preset or "", "converted_from": Path(path).name}
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
