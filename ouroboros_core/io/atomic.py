"""Atomic outputs: a crash never leaves a file or folder that looks complete.

Everything is first written under a hidden temporary name next to its final place (same
folder, so the same file system) and renamed onto the final name only when writing succeeded.
A run killed so hard that no cleanup runs (SIGKILL, power loss) can leave a hidden
``.NAME.tmp-XXXXXXXX`` entry behind, but never a ``NAME`` that is half written.
"""

from __future__ import annotations

import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import UserError


def _temporary_sibling(final: Path, tag: str) -> Path:
    """A hidden name beside ``final`` that keeps its suffix (tools pick formats by extension)."""
    return final.parent / f".{final.stem}.{tag}-{secrets.token_hex(4)}{final.suffix}"


@contextmanager
def atomic_output_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``final``, on any exception it is deleted.

    An existing ``final`` folder is replaced only after the new one is complete (it is moved
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
