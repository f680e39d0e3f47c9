"""Atomic outputs: a crash never leaves a file or folder that looks complete.

Everything is first written under a hidden temporary name next to its final place (same
folder, so the same file system) and renamed onto the final name only when writing succeeded.
A run killed so hard that no cleanup runs (SIGKILL, power loss) can leave a hidden
``.NAME.tmp-XXXXXXXX`` entry behind, but never a ``NAME`` that is half written.

Two kinds of folders: :func:`atomic_output_dir` is for folders that belong to this program
as a whole (a training checkpoint) and replaces them whole; :func:`atomic_result_dir` is for
folders a user may also keep files in (``generate``'s outputs): nothing it did not write is
ever deleted.
"""

from __future__ import annotations

import fnmatch
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import UserError


def _temporary_sibling(final: Path, tag: str) -> Path:
    """A hidden name beside ``final`` that keeps its suffix (tools pick formats by extension)."""
    return final.parent / f".{final.stem}.{tag}-{secrets.token_hex(4)}{final.suffix}"


@contextmanager
def atomic_output_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``final``, on any exception it is deleted.

    Only for folders that belong to this program as a whole (checkpoints): an existing
    ``final`` is replaced with everything in it. An existing ``final`` folder is replaced only after the new one is complete (it is moved
    aside, the new folder renamed into place, then the old one deleted), so an interrupted run
    keeps the previous results. The parent folder is created if needed.
    """
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise UserError(
            "the output path exists and is not a folder",
            where=str(final),
            hint="choose another output folder or remove that file",
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(final, "tmp")
    os.mkdir(tmp)  # plain mkdir: the folder gets the usual umask permissions, unlike mkdtemp
    try:
        yield tmp
    except BaseException:  # KeyboardInterrupt included: nothing complete-looking may remain
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not final.exists():
        os.rename(tmp, final)
        return
    old = _temporary_sibling(final, "old")
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(old, final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _nearest_existing(path: Path) -> Path:
    """``path`` itself or its closest ancestor that exists (``exists()`` is False below a file)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable(folder: Path, final: Path) -> None:
    """Raise a :class:`UserError` unless a folder can be made in ``folder``, found by making one
    (hidden, removed at once): permission bits do not tell, since root ignores them while
    read-only mounts and /proc refuse root too."""
    probe = folder / f".write-test-{secrets.token_hex(4)}"
    try:
        os.mkdir(probe)
    except OSError as err:
        raise UserError(
            f"cannot write into folder {folder}" + ("" if folder == final else f" (to create {final})"),
            where=str(final),
            hint="choose an output folder you can write to (-o), or fix its permissions",
        ) from err
    os.rmdir(probe)


def check_result_dir(final: str | os.PathLike, overwrite: bool = False, owned: Sequence[str] = ()) -> None:
    """Raise a :class:`UserError` unless :func:`atomic_result_dir` can write ``final``.

    Checks, leaving nothing behind, that ``final`` and every existing ancestor are folders
    (not files), that the folder where writing starts is writable, and that an existing
    ``final`` is empty unless ``overwrite``; the message names the files there that do not
    match ``owned``. Callers run it before any expensive work.
    """
    final = Path(final)
    found = _nearest_existing(final)
    if not found.is_dir():
        if found == final:
            raise UserError("the output path exists and is not a folder", where=str(final), hint="choose another output folder (-o) or remove that file")
        raise UserError(
            f"{found} is a file, so the output folder cannot be created inside it",
            where=str(final),
            hint="choose another output folder (-o)",
        )
    if found != final:
        _check_writable(found, final)
        return
    _check_writable(final.parent, final)
    _check_writable(final, final)
    if overwrite or not any(final.iterdir()):
        return
    foreign = [name for name in _files_under(final) if not _owned(name, owned)]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        what = f"holds files ouroboros3d did not write: {shown}"
    else:
        what = "holds a previous result"
    raise UserError(
        f"output folder already exists and {what}",
        where=str(final),
        hint="choose another output folder (-o), or pass --overwrite (Python: overwrite=True) to replace "
        "only the files ouroboros3d writes there; other files are never deleted",
    )


def _owned(relative: str, owned: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(relative, pattern) for pattern in owned)


def _files_under(folder: Path) -> list[str]:
    """Relative POSIX paths of the regular files (and links) below ``folder``."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir() or p.is_symlink())


@contextmanager
def atomic_result_dir(
    final: str | os.PathLike,
    owned: Sequence[str],
    overwrite: bool = False,
    marker: str | None = None,
) -> Iterator[Path]:
    """Yield a temporary folder whose files end up in ``final``, a folder the user may share.

    ``owned`` are glob patterns (``fnmatch``, on paths relative to ``final``) of the files this
    kind of result consists of; every file written into the temporary folder must match one.
    Rules (what ``generate`` promises):

    - a new or empty ``final``: the temporary folder is renamed onto it (atomic);
    - a non-empty ``final`` is refused (:func:`check_result_dir`) unless ``overwrite``;
    - with ``overwrite``, the existing files matching ``owned`` are deleted, the new files
      moved in, and **every other file is kept**. ``marker`` (e.g. ``manifest.json``) is
      deleted first and moved in last, so an interrupted merge never looks complete.

    On any exception inside the block the temporary folder is deleted and ``final`` untouched.
    """
    final = Path(final)
    check_result_dir(final, overwrite, owned)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(final, "tmp")
    os.mkdir(tmp)
    try:
        yield tmp
        new = _files_under(tmp)
        stray = [name for name in new if not _owned(name, owned)]
        if stray:
            raise ValueError(f"files {stray} are not among the owned patterns {list(owned)}")
        if not final.exists():
            os.rename(tmp, final)
            return
        check_result_dir(final, overwrite, owned)  # it may have changed while the block ran
        _merge(tmp, final, new, owned, marker)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _merge(tmp: Path, final: Path, new: list[str], owned: Sequence[str], marker: str | None) -> None:
    old = [name for name in _files_under(final) if _owned(name, owned)]
    if marker is not None and marker in old:  # first: from here on the folder is incomplete
        (final / marker).unlink()
        old.remove(marker)
    try:
        for name in old:
            (final / name).unlink()
        for name in old:  # folders emptied by the deletion (views/, steps/), never others
            parent = (final / name).parent
            while parent != final and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
        for name in sorted(new, key=lambda n: n == marker):  # the marker last
            target = final / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / name, target)
    except OSError as err:
        raise UserError(
            f"could not replace the previous result in the output folder ({err})",
            where=str(final),
            hint="remove or rename what is in the way, or choose another output folder (-o)",
        ) from err


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; it replaces ``path`` only on success.

    The temporary name keeps the extension of ``path``, so writers that choose the format from
    the extension (Pillow, imageio, plyfile) behave as they would on the final name. The
    caller writes the file itself; on an exception the partial file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path, "tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
