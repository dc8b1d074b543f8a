"""Expand command-line inputs into a sorted, de-duplicated list of source URIs.

An input is a file, a folder (searched recursively), a glob pattern, an ``@list.txt`` file
(one input per line, ``#`` comments), or an fsspec URL (``s3://bucket/dir``, ``gs://...``,
``memory://...``) which may itself be a folder or a glob. Folders and globs keep media files
only (by extension); files named explicitly are kept whatever their extension, so a bad file
a user asked for becomes an error row instead of vanishing.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import fsspec

VIDEO_EXTS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .flv .wmv .mpg .mpeg .ts .mts .m2ts .3gp .ogv .gif".split()
)
IMAGE_EXTS = frozenset(".jpg .jpeg .png .webp .bmp .tif .tiff".split())
MEDIA_EXTS = VIDEO_EXTS | IMAGE_EXTS


def is_url(s: str) -> bool:
    return "://" in s and not s.startswith("file://")


def is_image(uri: str) -> bool:
    return Path(uri.split("?")[0]).suffix.lower() in IMAGE_EXTS


def _is_media(p: str) -> bool:
    return Path(p).suffix.lower() in MEDIA_EXTS


def _expand_url(url: str) -> list[str]:
    fs, _, paths = fsspec.get_fs_token_paths(url)
    out: list[str] = []
    for p in paths:
        if fs.isdir(p):
            out += [f for f in fs.find(p) if _is_media(f)]
        elif fs.exists(p):
            out.append(p)
        else:
            raise FileNotFoundError(f"input not found: {url}")
    return [fs.unstrip_protocol(p) for p in out]


def _expand_local(item: str) -> list[str]:
    if item.startswith("file://"):
        item = item[len("file://") :]
    p = Path(item).expanduser()
    if p.is_dir():
        return [str(f.resolve()) for f in p.rglob("*") if f.is_file() and _is_media(f.name)]
    if p.exists():
        return [str(p.resolve())]
    if glob.has_magic(item):
        return [str(Path(f).resolve()) for f in glob.glob(item, recursive=True) if os.path.isfile(f) and _is_media(f)]
    raise FileNotFoundError(f"input not found: {item}")


def _read_list(item: str, seen_lists: set[str]) -> list[str]:
    path = item[1:]
    key = path if is_url(path) else str(Path(path).resolve())
    if key in seen_lists:
        raise ValueError(f"list file includes itself: {path}")
    seen_lists.add(key)
    with fsspec.open(path, "r") as f:
        lines = [ln.strip() for ln in f.read().splitlines()]
    base = Path(path).parent if not is_url(path) else None
    items = []
    for ln in lines:
        if not ln or ln.startswith("#"):
            continue
        # Relative paths in a list file are relative to the list file.
        if base is not None and not is_url(ln) and not ln.startswith("@") and not Path(ln).is_absolute():
            ln = str(base / ln)
        items.append(ln)
    return expand_inputs(items, _seen_lists=seen_lists)


def expand_inputs(items: list[str], _seen_lists: set[str] | None = None) -> list[str]:
    """Return sorted unique source URIs; raise FileNotFoundError naming an input that matches nothing."""
    seen_lists = _seen_lists if _seen_lists is not None else set()
    found: list[str] = []
    for item in items:
        if item.startswith("@"):
            found += _read_list(item, seen_lists)
        elif is_url(item):
            found += _expand_url(item)
        else:
            found += _expand_local(item)
    return sorted(set(found))
