import pytest

from pipeline.artifacts import fingerprint, staged_dir, write_text


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path):
    target = write_text(tmp_path / "a.txt", "old")
    with pytest.raises(ZeroDivisionError):
        from pipeline.artifacts import atomic_path

        with atomic_path(target) as tmp:
            tmp.write_text("half")
            1 / 0
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_staged_dir_swaps_in_only_on_success(tmp_path):
    final = tmp_path / "stage"
    with staged_dir(final) as out:
        (out / "x").write_text("1")
    assert (final / "x").read_text() == "1"
    with pytest.raises(RuntimeError):
        with staged_dir(final) as out:
            (out / "x").write_text("2")
            raise RuntimeError("killed")
    assert (final / "x").read_text() == "1"  # the finished output is untouched


def test_fingerprint_sees_renames_and_content(tmp_path):
    (tmp_path / "a").write_text("1")
    before = fingerprint(tmp_path, content=True)
    (tmp_path / "a").rename(tmp_path / "b")
    assert fingerprint(tmp_path, content=True) != before
