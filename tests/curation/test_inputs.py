from pathlib import Path

import fsspec
import pytest

from curation.inputs import expand_inputs


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
