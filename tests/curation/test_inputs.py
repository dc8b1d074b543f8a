from pathlib import Path

import fsspec
import pytest

from curation.media.inputs import expand_inputs


@pytest.fixture
def tree(tmp_path):
    for rel in ("a/one.mp4", "a/b/two.MKV", "a/b/notes.txt", "c/three.jpg", "c/four.mov"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    return tmp_path


def names(paths):
    return sorted(Path(p).name for p in paths)


def test_folder_is_recursive_and_keeps_media_only(tree):
    assert names(expand_inputs([str(tree / "a")])) == ["one.mp4", "two.MKV"]


def test_glob_and_dedupe(tree):
    got = expand_inputs([str(tree / "**" / "*.mp4"), str(tree / "a" / "one.mp4"), str(tree / "c")])
    assert names(got) == ["four.mov", "one.mp4", "three.jpg"]
    assert got == sorted(got)


def test_explicit_file_is_kept_whatever_its_extension(tree):
    assert names(expand_inputs([str(tree / "a/b/notes.txt")])) == ["notes.txt"]


def test_list_file_with_comments_and_relative_paths(tree):
    lst = tree / "inputs.txt"
    lst.write_text("# my inputs\na/one.mp4\n\nc\n")
    assert names(expand_inputs([f"@{lst}"])) == ["four.mov", "one.mp4", "three.jpg"]


def test_fsspec_url():
    fs = fsspec.filesystem("memory")
    fs.pipe("/vm-test/x/1.mp4", b"x")
    fs.pipe("/vm-test/x/y/2.webm", b"x")
    fs.pipe("/vm-test/x/y/readme.md", b"x")
    assert expand_inputs(["memory://vm-test/x"]) == ["memory:///vm-test/x/1.mp4", "memory:///vm-test/x/y/2.webm"]


def test_missing_input_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        expand_inputs([str(tmp_path / "nope.mp4")])


# ---- issue 12, row 10: names and paths ----------------------------------------------------


def test_existing_file_named_like_a_list_is_the_file(tmp_path, monkeypatch):
    """`@beach.mp4` on disk is a video, on the command line and inside a list; `@./x.txt`
    forces a list, `./@x` forces the file (the documented escapes)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "@beach.mp4").write_bytes(b"x")
    assert expand_inputs(["@beach.mp4"]) == [str(tmp_path / "@beach.mp4")]
    assert expand_inputs(["./@beach.mp4"]) == [str(tmp_path / "@beach.mp4")]
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "@beach.mp4").write_bytes(b"x")
    (tmp_path / "lists" / "l.txt").write_text("@beach.mp4\n")
    assert expand_inputs(["@lists/l.txt"]) == [str(tmp_path / "lists" / "@beach.mp4")]
    (tmp_path / "x.txt").write_text("lists/@beach.mp4\n")
    (tmp_path / "@x.txt").write_text("not a list\n")
    assert expand_inputs(["@x.txt"]) == [str(tmp_path / "@x.txt")]
    assert expand_inputs(["@./x.txt"]) == [str(tmp_path / "lists" / "@beach.mp4")]


def test_nested_lists_resolve_from_their_own_folder(tmp_path, monkeypatch):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "v.mp4").write_bytes(b"x")
    (tmp_path / "a" / "b" / "sub.txt").write_text("v.mp4\n")
    (tmp_path / "a" / "top.txt").write_text("@b/sub.txt\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert expand_inputs([f"@{tmp_path / 'a' / 'top.txt'}"]) == [str(tmp_path / "a" / "b" / "v.mp4")]


def test_symlinked_folders_followed_once_and_loops_stop(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "v.mp4").write_bytes(b"x")
    root = tmp_path / "root"
    root.mkdir()
    (root / "linked").symlink_to(real)  # a symlinked sub-folder: followed
    (root / "again").symlink_to(real)  # the same folder through a second link: once
    (root / "up").symlink_to(root)  # a loop
    got = expand_inputs([str(root)])
    assert len(got) == 1 and Path(got[0]).name == "v.mp4" and Path(got[0]).parent.parent == root


def test_source_is_the_path_given_and_its_type_comes_from_that_name(tmp_path):
    """A Hugging Face cache: snapshots/rev/photo.jpg -> ../../blobs/<hash>. The source is the
    snapshot path (not the blob), and it is an image by its name."""
    from curation.media.container import media_type

    blobs = tmp_path / "hub" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / "3f2a9c").write_bytes(b"jpeg bytes")
    snap = tmp_path / "hub" / "snapshots" / "rev"
    snap.mkdir(parents=True)
    (snap / "photo.jpg").symlink_to("../../blobs/3f2a9c")
    for given in ([str(tmp_path / "hub" / "snapshots")], [str(snap / "photo.jpg")]):
        assert expand_inputs(given) == [str(snap / "photo.jpg")]
    assert media_type(str(snap / "photo.jpg")) == "image"


def test_unreadable_folder_is_skipped_not_fatal(tmp_path, caplog, monkeypatch):
    import os

    (tmp_path / "ok.mp4").write_bytes(b"x")
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "v.mp4").write_bytes(b"x")
    os.chmod(locked, 0)
    if os.geteuid() == 0:  # root reads any folder: make listing it fail as it would for a user
        real_scandir = os.scandir

        def scandir(path="."):
            if os.fspath(path) == str(locked):
                raise PermissionError(13, "Permission denied", str(locked))
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", scandir)
    try:
        got = expand_inputs([str(tmp_path)])
    finally:
        os.chmod(locked, 0o755)
    assert got == [str(tmp_path / "ok.mp4")]
    assert "skipping folder" in caplog.text and "Permission denied" in caplog.text
