"""Atomic outputs: a failure leaves neither a complete-looking result nor temporary debris."""

import os

import pytest

from ouroboros_core.errors import UserError
from ouroboros_core.io.atomic import atomic_output_dir, atomic_result_dir, atomic_write, check_result_dir


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


# ---------------------------------------------------------------- folders shared with the user
OWNED = ("model.ply", "manifest.json", "views/view_*.png", "steps/*.png")


def _tree(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_result_dir_refuses_a_folder_holding_foreign_files(tmp_path):
    final = tmp_path / "shapes"
    final.mkdir()
    (final / "notes.txt").write_text("mine")
    (final / "model.ply").write_text("ours")
    with pytest.raises(UserError, match=r"already exists and holds files ouroboros3d did not write: notes.txt \(fix") as err:
        with atomic_result_dir(final, OWNED) as work:
            (work / "model.ply").write_text("new")
    assert "--overwrite" in str(err.value)
    assert _tree(final) == ["model.ply", "notes.txt"] and (final / "notes.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["shapes"]  # no temporary folder left
    (final / "notes.txt").unlink()
    with pytest.raises(UserError, match="already exists and holds a previous result"):
        check_result_dir(final, owned=OWNED)
    check_result_dir(final, overwrite=True, owned=OWNED)


def test_result_dir_overwrite_replaces_only_owned_files(tmp_path):
    final = tmp_path / "shapes"
    (final / "views").mkdir(parents=True)
    (final / "steps").mkdir()
    for name in ("model.ply", "manifest.json", "views/view_00.png", "views/view_01.png", "steps/step00.png"):
        (final / name).write_text("old")
    (final / "notes.txt").write_text("mine")
    (final / "views" / "my-edit.png").write_text("mine")
    with atomic_result_dir(final, OWNED, overwrite=True, marker="manifest.json") as work:
        (work / "views").mkdir()
        (work / "views" / "view_00.png").write_text("new")
        (work / "model.ply").write_text("new")
        (work / "manifest.json").write_text("new")
    assert _tree(final) == ["manifest.json", "model.ply", "notes.txt", "views/my-edit.png", "views/view_00.png"]
    assert [(final / n).read_text() for n in ("manifest.json", "model.ply", "views/view_00.png")] == ["new"] * 3
    assert (final / "notes.txt").read_text() == "mine" and (final / "views" / "my-edit.png").read_text() == "mine"
    assert not (final / "steps").exists()  # emptied by removing our own old files
    assert [p.name for p in tmp_path.iterdir()] == ["shapes"]


def test_result_dir_new_and_empty_folders_need_no_overwrite(tmp_path):
    for final in (tmp_path / "a" / "new", tmp_path / "empty"):
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.name == "empty":
            final.mkdir()
        with atomic_result_dir(final, OWNED, marker="manifest.json") as work:
            (work / "manifest.json").write_text("{}")
        assert _tree(final) == ["manifest.json"]


def test_result_dir_failure_keeps_previous_files(tmp_path):
    final = tmp_path / "shapes"
    final.mkdir()
    (final / "model.ply").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_result_dir(final, OWNED, overwrite=True) as work:
            (work / "model.ply").write_text("half")
            raise KeyboardInterrupt
    assert (final / "model.ply").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["shapes"]


@pytest.mark.parametrize("sub", ["", "sub", "sub/deeper"])
def test_result_dir_under_a_file_is_refused_before_anything_is_written(tmp_path, sub):
    blocker = tmp_path / "somefile"
    blocker.write_text("x")
    final = blocker / sub if sub else blocker
    with pytest.raises(UserError) as err:
        check_result_dir(final)
    message = str(err.value)
    assert message.startswith(f"{final}: ")
    assert ("is not a folder" in message) if not sub else (f"{blocker} is a file" in message)
    assert blocker.read_text() == "x" and [p.name for p in tmp_path.iterdir()] == ["somefile"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits (the /proc test below runs as root)")
def test_result_dir_in_an_unwritable_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(UserError, match="cannot write into folder"):
            check_result_dir(locked / "out" / "shapes")
    finally:
        locked.chmod(0o700)


def test_result_dir_where_even_root_cannot_write_is_refused():
    """/proc takes no new folders from anyone, root included (os.access says root may write
    there): the check tries for real, and leaves nothing behind."""
    with pytest.raises(UserError, match="cannot write into folder /proc ") as err:
        check_result_dir("/proc/ouroboros3d-out/shapes")
    assert err.value.where == "/proc/ouroboros3d-out/shapes"


def test_the_writability_check_leaves_nothing_behind(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    check_result_dir(tmp_path / "new" / "shapes")
    check_result_dir(final)
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and list(final.iterdir()) == []
