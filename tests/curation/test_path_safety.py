"""Security of paths and inputs: output names come from sanitised ids, a source path cannot
steer a write outside OUT, the shard writer reads no clip_path outside OUT, and the code
builds no shell from file names, unpickles no input and binds nothing beyond loopback."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pyarrow as pa
import pytest

from curation.outputs.extract_clips import ExtractConfig, clip_file, extract_video
from curation.core.manifest import Layout
from curation.core.schema import clip_schema
from curation.corpora.synthetic import moving, write_video
from curation.outputs.write_shards import ShardConfig, write_shards

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("bad", ["../x", "/etc/x", "a/b", "..", "", "x.mp4", "a b"])
def test_clip_files_are_named_from_plain_ids_only(bad, tmp_path):
    with pytest.raises(ValueError, match="unsafe clip_id"):
        clip_file(tmp_path, bad, "video")


def test_a_source_path_with_dotdot_and_absolute_parts_writes_only_under_out(tmp_path):
    """The source's name never becomes an output path: clips are named by clip id."""
    deep = tmp_path / "in" / "a" / "b"
    deep.mkdir(parents=True)
    write_video(deep / "v.mp4", moving(30, (64, 48)), 25, options={"preset": "ultrafast"})
    source = str(tmp_path / "in" / "a" / "b" / ".." / ".." / "a" / "b" / "v.mp4")
    out = tmp_path / "out" / "clips"
    out.mkdir(parents=True)
    before = {p for p in tmp_path.rglob("*")}
    (res,) = extract_video(source, [{"clip_id": "0123abcd_0000000_0000030", "start_s": 0.0, "end_s": 1.2, "fps": 25.0}], out, ExtractConfig())
    assert res["error"] is None
    new = {p for p in tmp_path.rglob("*")} - before
    assert new == {out / "0123abcd_0000000_0000030.mp4"}


def test_shard_writer_never_reads_a_clip_path_outside_out(tmp_path):
    out = tmp_path / "out"
    (out / "clips").mkdir(parents=True)
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"SECRET-BYTES" * 100)
    (out / "clips" / "link.mp4").symlink_to(secret)
    write_video(out / "clips" / "good.mp4", moving(50, (64, 48)), 25, options={"preset": "ultrafast"})
    base = {"source": "/in/x.mp4", "media_type": "video", "start_frame": 0, "end_frame": 50, "start_s": 0.0, "end_s": 2.0,
            "num_frames": 50, "fps": 25.0, "width": 64, "height": 48, "status": "accepted", "neg_tags": [], "reject_reasons": []}
    rows = [
        base | {"clip_id": "good_0_50", "clip_path": "clips/good.mp4"},
        base | {"clip_id": "dotdot_0_50", "clip_path": "../secret.mp4"},
        base | {"clip_id": "absolute_0_50", "clip_path": str(secret)},
        base | {"clip_id": "link_0_50", "clip_path": "clips/link.mp4"},
    ]
    table = pa.Table.from_pylist(rows, schema=clip_schema())
    _, index = write_shards(table, Layout.at(out), ShardConfig(bucketing=False))
    assert [k for s in index["shards"] for k in s["keys"]] == ["good_0_50"]
    assert set(index["unsharded"]) == {"dotdot_0_50", "absolute_0_50", "link_0_50"}
    assert all("outside OUT" in why for why in index["unsharded"].values())
    for tar in (out / "shards").rglob("*.tar"):
        assert b"SECRET-BYTES" not in tar.read_bytes()
    assert json.loads((out / "shards" / "index.json").read_text())["totals"]["samples"] == 1


def _python_files() -> list[Path]:
    return [p for d in ("curation", "flows", "captioning", "training") if (REPO / d).exists() for p in (REPO / d).rglob("*.py")]


def test_no_shell_no_unpickling_of_inputs_no_wildcard_bind():
    """Static: no `shell=True`/os.system/os.popen (nothing builds a shell line from a file name),
    no pickle.load(s)/marshal of data, `torch.load` only with weights_only=True, and no
    0.0.0.0 / "::" bind address in the code."""
    bad = []
    for path in _python_files():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
                kw = {k.arg: k.value for k in node.keywords}
                if "shell" in kw and not (isinstance(kw["shell"], ast.Constant) and kw["shell"].value is False):
                    bad.append(f"{where}: shell=")
                if (owner, name) in {("os", "system"), ("os", "popen"), ("pickle", "load"), ("pickle", "loads"), ("marshal", "loads")}:
                    bad.append(f"{where}: {owner}.{name}")
                if (owner, name) == ("torch", "load"):
                    wo = kw.get("weights_only")
                    if not (isinstance(wo, ast.Constant) and wo.value is True):
                        bad.append(f"{where}: torch.load without weights_only=True")
            if isinstance(node, ast.Constant) and node.value in ("0.0.0.0", "::"):
                bad.append(f"{where}: binds {node.value!r}")
    assert not bad
