"""Atomic outputs: a failure leaves neither a complete-looking result nor temporary debris."""

import pytest

from ouroboros_core.errors import UserError
from ouroboros_core.io.atomic import atomic_output_dir, atomic_write


def test_success_renames_the_folder(tmp_path):
    final = tmp_path / "out" / "object"
    with atomic_output_dir(final) as work:
        assert work.parent == final.parent and work.name.startswith(".") and not final.exists()
        (work / "views.png").write_bytes(b"png")
    assert (final / "views.png").read_bytes() == b"png"
    assert [p.name for p in final.parent.iterdir()] == ["object"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_exception_leaves_no_final_and_no_temporary_folder(tmp_path, error):
    final = tmp_path / "object"
    with pytest.raises(error):
        with atomic_output_dir(final) as work:
            (work / "views.png").write_bytes(b"half")
            raise error("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_is_replaced_only_on_success(tmp_path):
    final = tmp_path / "object"
    final.mkdir()
    (final / "old.txt").write_text("previous run")
    with pytest.raises(RuntimeError):
        with atomic_output_dir(final) as work:
            (work / "new.txt").write_text("new")
            raise RuntimeError("crash")
    assert [p.name for p in tmp_path.iterdir()] == ["object"]
    assert [p.name for p in final.iterdir()] == ["old.txt"]

    with atomic_output_dir(final) as work:
        (work / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["object"]
    assert [p.name for p in final.iterdir()] == ["new.txt"]


def test_output_path_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "object"
    target.write_text("not a folder")
    with pytest.raises(UserError, match="not a folder") as err:
        with atomic_output_dir(target):
            pass
    assert str(target) in str(err.value)


def test_atomic_write_keeps_suffix_and_replaces_on_success(tmp_path):
    path = tmp_path / "model.ply"
    path.write_text("old")
    with atomic_write(path) as tmp:
        assert tmp.suffix == ".ply" and tmp.parent == tmp_path and tmp != path
        tmp.write_text("new")
        assert path.read_text() == "old"
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["model.ply"]


def test_atomic_write_failure_keeps_old_file_and_removes_partial(tmp_path):
    path = tmp_path / "model.ply"
    path.write_text("old")
    with pytest.raises(OSError):
        with atomic_write(path) as tmp:
            tmp.write_text("partial")
            raise OSError("disk full")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.ply"]
