"""Write the accepted clips as WebDataset shards: OUT/shards/<bucket>/shard-NNNNNN.tar.

A sample per accepted clip, keyed by clip_id: `KEY.mp4` (`KEY.jpg` for images), `KEY.json`
(span, size, every score, tags, caption metadata, bucket), `KEY.txt` when there is a caption.

Resumable without duplicates: shards are planned first from the manifest and file sizes (a
sample's bytes in a tar are known before writing), so a rerun plans the same shards and writes
only those not complete: complete is the tar plus its record (shards/records/..., written after
the tar's rename) holding the same plan digest and size. Tars are written under a dot-prefixed
temporary name and renamed; older plans' shards (they would duplicate samples) and crashed
temporaries are deleted. index.json is removed first and written last: when it exists, it
describes the disk. One writer per OUT at a time (it deletes temporaries it did not write).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import random
import re
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from curation.core.buckets import DEFAULT_FRAME_BUCKETS, DEFAULT_RESOLUTIONS, Resolution, assign_bucket, check_frame_buckets
from curation.media.decode import scaled_size
from curation.outputs.extract_clips import ExtractConfig, output_fps
from curation.core.manifest import Layout, lookup, write_json_atomic


@dataclass(frozen=True, kw_only=True)
class ShardConfig:
    """WebDataset shards of the accepted clips (this module)."""

    # A shard closes before the sample that would pass either limit (None: no limit on
    # that axis); a single sample larger than max_bytes gets a shard of its own.
    max_samples_per_shard: int | None = 1000
    max_bytes_per_shard: int | None = 1 << 30  # 1 GiB: large sequential reads, few files
    bucketing: bool = True  # group shards by training bucket (curation/core/buckets.py)
    resolutions: tuple[Resolution, ...] = DEFAULT_RESOLUTIONS
    frame_buckets: tuple[int, ...] = DEFAULT_FRAME_BUCKETS
    shuffle_seed: int | None = None  # None: clips in clip_id order; else a seeded shuffle across shards

    def __post_init__(self) -> None:
        for f in ("max_samples_per_shard", "max_bytes_per_shard"):
            v = getattr(self, f)
            if v is not None and (not isinstance(v, int) or v <= 0):
                raise ValueError(f"shard.{f} must be a positive integer or null, got {v!r}")
        if self.max_samples_per_shard is None and self.max_bytes_per_shard is None:
            raise ValueError("shard.max_samples_per_shard and shard.max_bytes_per_shard: set at least one")
        object.__setattr__(self, "frame_buckets", check_frame_buckets(self.frame_buckets))
        if self.bucketing:
            if not any(r.media == "video" for r in self.resolutions):
                raise ValueError("shard.resolutions: bucketing needs at least one video resolution")
            if not self.frame_buckets:
                raise ValueError("shard.frame_buckets: bucketing needs at least one frame count")
        if len(set(self.resolutions)) != len(self.resolutions):
            raise ValueError("shard.resolutions: duplicate entries")
        if self.shuffle_seed is not None and not isinstance(self.shuffle_seed, int):
            raise ValueError(f"shard.shuffle_seed must be an integer or null, got {self.shuffle_seed!r}")


log = logging.getLogger("videomill")

INDEX_VERSION = 1
_FORMAT = b"videomill-shards-1"  # part of every plan digest: bump when the sample layout changes
_BLOCK, _RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE
_MTIME = 0  # fixed member mtime, so the same input gives byte-identical tars
# webdataset splits a member name at its first dot into key and extension, and a USTAR name
# holds 100 bytes (`.json` included): keys are plain words.
_KEY = re.compile(r"[A-Za-z0-9_-]{1,90}\Z")
_SHARD_FILE = re.compile(r"shard-\d{6}\.(tar|json)\Z")
_TEMP_FILE = re.compile(r"\.(shard-\d{6}\.(tar|json)|index\.json)\.tmp-\d+\Z")
# Clip facts copied into KEY.json, besides every float (score) column and caption_* column.
_META = tuple("clip_id source media_type start_frame end_frame start_s end_s fps num_frames width height neg_tags".split())


def shards_dir(layout: Layout) -> Path:
    return layout.root / "shards"


def check_key(key: object) -> str:
    if not isinstance(key, str) or not _KEY.match(key):
        raise ValueError(f"clip_id {key!r} cannot be a shard key: use 1-90 letters, digits, '_' or '-' (no '/', no '.')")
    return key


@dataclass(frozen=True)
class _Sample:
    key: str
    media: Path
    ext: str  # "mp4" | "jpg"
    meta: bytes  # KEY.json
    caption: bytes | None  # KEY.txt
    media_bytes: int
    mtime_ns: int  # with the size, what tells a re-extracted clip from the one a shard holds

    @property
    def tar_bytes(self) -> int:
        txt = _member(len(self.caption)) if self.caption is not None else 0
        return _member(len(self.meta)) + _member(self.media_bytes) + txt


@dataclass(frozen=True)
class _Shard:
    path: str  # relative to OUT, as in the manifest's `shard` column
    bucket: str | None
    samples: tuple[_Sample, ...]

    @property
    def digest(self) -> str:
        h = hashlib.sha256(_FORMAT)
        for s in self.samples:
            for part in (s.key, s.ext, s.media_bytes, s.mtime_ns):
                h.update(f"{part}\0".encode())
            h.update(s.meta + b"\0" + (b"\1" + s.caption if s.caption is not None else b"\0"))
        return h.hexdigest()


def _member(n: int) -> int:
    return _BLOCK + -(-n // _BLOCK) * _BLOCK  # header block + data padded to whole blocks


def _tar_size(members: int) -> int:
    return -(-(members + 2 * _BLOCK) // _RECORD) * _RECORD  # two zero blocks, padded to a record


def _file_shape(row: dict, extract: ExtractConfig) -> tuple[int, int, int]:
    """(width, height, frames) of the clip file as curation/outputs/extract_clips.py wrote it."""
    w, h = row["width"] or 0, row["height"] or 0
    if w and h and extract.short_side:
        w, h = scaled_size(w, h, extract.short_side)
    if row["media_type"] == "image":
        return w, h, 1
    frames = row["num_frames"] or 0
    if row["fps"] and row["start_s"] is not None and row["end_s"] is not None:  # the writer's output ticks
        frames = max(1, int(round((row["end_s"] - row["start_s"]) * output_fps(row["fps"], extract.target_fps))))
    return w - w % 2, h - h % 2, frames  # H.264 sizes are even


def _meta(row: dict, bucket: str | None, extra: list[str]) -> bytes:
    d = {c: row.get(c) for c in (*_META, *extra)}
    d = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in d.items()}
    d["bucket"] = bucket
    return json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str).encode()


def _sample(row: dict, root: Path, bucket: str | None, extra: list[str]) -> _Sample:
    media = root / row["clip_path"]
    try:
        st = media.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"accepted clip {row['clip_id']}: {media} is missing; rerun extraction first") from None
    ext, caption = ("jpg" if row["media_type"] == "image" else "mp4"), row.get("caption")  # no caption column yet: None
    return _Sample(key=row["clip_id"], media=media, ext=ext, meta=_meta(row, bucket, extra),
                   caption=None if caption is None else caption.encode(), media_bytes=st.st_size, mtime_ns=st.st_mtime_ns)


def _inside(root: Path, rel: str) -> bool:
    """Whether OUT/`rel` stays inside OUT once `..`, absolute parts and links are resolved."""
    base = root.resolve()
    return (base / rel).resolve().is_relative_to(base)


def plan_shards(
    clips: pa.Table, root: Path, cfg: ShardConfig, extract: ExtractConfig | None = None
) -> tuple[list[_Shard], dict[str, str]]:
    """Plan every shard of the accepted clips: (shards, {clip_id: why it is in none})."""
    extract = extract or ExtractConfig()
    extra = [f.name for f in clips.schema if pa.types.is_floating(f.type) or f.name.startswith("caption_")]
    rows = clips.filter(pc.equal(clips.column("status"), "accepted")).to_pylist()
    twice = [k for k, n in Counter(check_key(r["clip_id"]) for r in rows).items() if n > 1]
    if twice:
        raise ValueError(f"clip_id(s) {twice[:5]} appear more than once among the accepted clips")
    groups: dict[str, list[_Sample]] = {}
    unsharded: dict[str, str] = {}
    for row in rows:
        key, bucket = row["clip_id"], None
        if not row["clip_path"]:
            unsharded[key] = "no clip file"
            continue
        if not _inside(root, row["clip_path"]):  # a manifest is data: never read outside OUT
            unsharded[key] = "clip_path outside OUT (refused)"
            continue
        if cfg.bucketing:
            w, h, frames = _file_shape(row, extract)
            bucket, why = assign_bucket(row["media_type"], w, h, frames, cfg.resolutions, cfg.frame_buckets)
            if bucket is None:
                unsharded[key] = why
                continue
        groups.setdefault(bucket or "", []).append(_sample(row, root, bucket, extra))
    shards = []
    for bucket in sorted(groups):
        samples = sorted(groups[bucket], key=lambda s: s.key)
        if cfg.shuffle_seed is not None:
            # Seeded per bucket by a string, which Python hashes the same on every platform.
            random.Random(f"{cfg.shuffle_seed}:{bucket}").shuffle(samples)
        prefix = f"shards/{bucket}/" if bucket else "shards/"
        for i, part in enumerate(_pack(samples, cfg)):
            shards.append(_Shard(path=f"{prefix}shard-{i:06d}.tar", bucket=bucket or None, samples=tuple(part)))
    return shards, unsharded


def _pack(samples: list[_Sample], cfg: ShardConfig) -> list[list[_Sample]]:
    """Fill shards in order; close one before the sample that would pass a limit."""
    out: list[list[_Sample]] = []
    cur, members = [], 0
    for s in samples:
        too_many = cfg.max_samples_per_shard is not None and len(cur) >= cfg.max_samples_per_shard
        too_big = cfg.max_bytes_per_shard is not None and _tar_size(members + s.tar_bytes) > cfg.max_bytes_per_shard
        if cur and (too_many or too_big):
            out.append(cur)
            cur, members = [], 0
        cur.append(s)
        members += s.tar_bytes
    if cur:
        out.append(cur)
    return out


def _record_path(root: Path, shard_path: str) -> Path:
    return root / "shards" / "records" / Path(shard_path).relative_to("shards").with_suffix(".json")


def _complete(shard: _Shard, root: Path) -> dict | None:
    """The shard's record when its tar on disk is the one this plan would write, else None."""
    tar, record = root / shard.path, _record_path(root, shard.path)
    try:
        rec = json.loads(record.read_text())
        same = rec.get("plan") == shard.digest and tar.stat().st_size == rec.get("bytes")
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet (records are written atomically)
        return None
    return rec if same else None


class _Hashing:
    """A write-only file that hashes and counts what passes through it (no second read)."""

    def __init__(self, f) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, b) -> int:
        self.sha.update(b)
        self.size += len(b)
        return self.f.write(b)


def _write_shard(shard: _Shard, root: Path) -> dict:
    # Imported here: webdataset imports torch (~6 s), and every config load imports this module
    # (curation/core/config.py composes ShardConfig).
    import webdataset as wds

    tar, record = root / shard.path, _record_path(root, shard.path)
    record.unlink(missing_ok=True)  # a record must never vouch for a tar it did not see written
    tar.parent.mkdir(parents=True, exist_ok=True)
    tmp = tar.with_name(f".{tar.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            out = _Hashing(f)
            # Not wds.ShardWriter: it picks shard boundaries while writing and writes final
            # names directly. Boundaries are planned up front and each tar is renamed into
            # place when complete, so one TarWriter per planned shard on a temporary file.
            with wds.TarWriter(out, encoder=False, mtime=_MTIME) as writer:
                for s in shard.samples:
                    sample = {"__key__": s.key, "json": s.meta, s.ext: s.media.read_bytes()}
                    if s.caption is not None:
                        sample["txt"] = s.caption
                    writer.write(sample)
        planned = _tar_size(sum(s.tar_bytes for s in shard.samples))
        if out.size != planned:  # a clip file changed under us, or the size model is wrong
            raise RuntimeError(f"{shard.path}: wrote {out.size} bytes, planned {planned}")
        os.replace(tmp, tar)
    finally:
        tmp.unlink(missing_ok=True)  # on failure, the partial tar; after the rename, nothing
    rec = {"path": shard.path, "bucket": shard.bucket, "samples": len(shard.samples), "bytes": out.size,
           "sha256": out.sha.hexdigest(), "keys": [s.key for s in shard.samples], "plan": shard.digest}
    write_json_atomic(record, rec)
    return rec


def _remove_stale(sdir: Path, keep: set[Path]) -> int:
    """Delete shard files and records outside the plan, and crashed temporaries; only names we write."""
    removed = 0
    for p in sorted(sdir.rglob("*"), reverse=True):  # children before their folders
        if p.is_file() and p not in keep and (_SHARD_FILE.match(p.name) or _TEMP_FILE.match(p.name)):
            p.unlink()
            removed += 1
        elif p.is_dir() and not any(p.iterdir()):
            p.rmdir()
    return removed


def _totals(entries: list[dict]) -> dict:
    return {"shards": len(entries), "samples": sum(e["samples"] for e in entries), "bytes": sum(e["bytes"] for e in entries)}


def _index(shards: list[_Shard], recs: dict[str, dict], unsharded: dict[str, str], cfg: ShardConfig) -> dict:
    """index.json: every shard (path, bucket, samples, bytes, sha256, keys), per-bucket and total counts."""
    entries = [{k: v for k, v in recs[s.path].items() if k != "plan"} for s in shards]
    return {
        "version": INDEX_VERSION,
        "bucketing": cfg.bucketing,
        "shards": entries,
        "buckets": {b: _totals([e for e in entries if e["bucket"] == b]) for b in sorted({e["bucket"] for e in entries} - {None})},
        "unsharded": dict(sorted(unsharded.items())),  # accepted clips in no shard: {clip_id: why}
        "totals": _totals(entries) | {"unsharded": len(unsharded)},
    }


def write_shards(
    clips: pa.Table, layout: Layout, cfg: ShardConfig, *, extract: ExtractConfig | None = None, map_fn: Callable | None = None
) -> tuple[pa.Table, dict]:
    """Shard the accepted clips of the final clips manifest into OUT/shards.

    `extract` is the config the clip files were written with (their frame count and size
    decide the bucket). `map_fn(fn, shards)` writes the shards (default: `map`, one by one).
    Returns the table with `bucket` and `shard` set, and the index
    written to OUT/shards/index.json. Rerunning completes missing shards and reuses the rest.
    """
    root, sdir = layout.root, shards_dir(layout)
    shards, unsharded = plan_shards(clips, root, cfg, extract)
    recs = {s.path: rec for s in shards if (rec := _complete(s, root)) is not None}
    (sdir / "index.json").unlink(missing_ok=True)  # from here until the end the set is in flux
    keep = {root / s.path for s in shards} | {_record_path(root, s.path) for s in shards}
    removed = _remove_stale(sdir, keep) if sdir.exists() else 0
    todo = [s for s in shards if s.path not in recs]
    log.info("shards: %d planned, %d complete, %d to write, %d stale files removed", len(shards), len(recs), len(todo), removed)
    # Shards are independent files (planned up front, each renamed into place when whole), so
    # they are written in parallel: `map_fn(fn, items)` is the flow's (Ray tasks across the
    # cluster, flows/run_ray.py map_tasks), plain `map` here. The index is merged after.
    for s, rec in zip(todo, (map_fn or map)(functools.partial(_write_shard, root=root), todo)):
        recs[s.path] = rec
        log.info("wrote %s: %d samples, %d bytes", s.path, len(s.samples), rec["bytes"])
    index = _index(shards, recs, unsharded, cfg)
    write_json_atomic(sdir / "index.json", index)
    placed = pa.table({
        "clip_id": pa.array([s.key for sh in shards for s in sh.samples], pa.string()),
        "bucket": pa.array([sh.bucket for sh in shards for _ in sh.samples], pa.string()),
        "shard": pa.array([sh.path for sh in shards for _ in sh.samples], pa.string()),
    })
    found = lookup(clips.column("clip_id").cast(pa.string()), placed, "clip_id")
    for name in ("bucket", "shard"):
        arr, i = found.column(name), clips.schema.get_field_index(name)
        clips = clips.set_column(i, name, arr) if i >= 0 else clips.append_column(name, arr)
    return clips, index
