"""Expand command-line inputs into a sorted, de-duplicated list of source URIs.

An input is a file, a folder (searched recursively), a glob pattern, an ``@list.txt`` file
(one input per line, ``#`` comments), or an fsspec URL (``s3://bucket/dir``, ``gs://...``,
``memory://...``) which may itself be a folder or a glob. Folders and globs keep media files
only (by extension); files named explicitly are kept whatever their extension, so a bad file
a user asked for becomes an error row instead of vanishing.

Names and paths:
* ``@x`` is a list only when no file or folder named ``@x`` exists: an existing file always
  wins (``@beach.mp4`` on disk is a video). To force a list, give it a path: ``@./x.txt``;
  to force the file, ``./@x.txt``.
* Lines of a list (files, folders, globs, nested ``@lists``) are relative to the list's own
  folder, whatever the working directory.
* Folders are walked following symbolic links, each real folder once: a link back up the
  tree (a loop) or a second link to a folder already walked is skipped with a warning, as
  is a folder that cannot be read.
* A source is recorded as the absolute form of the path given (links are not resolved):
  a Hugging Face cache's ``snapshots/rev/photo.jpg`` stays that path (and an image by its
  name), not ``blobs/<hash>``. The same file under two names is two inputs, two rows.
"""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path

import fsspec

log = logging.getLogger("videomill")

VIDEO_EXTS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .flv .wmv .mpg .mpeg .ts .mts .m2ts .3gp .ogv .gif".split()
    # elementary streams and other containers seen in collections
    + ".h264 .264 .h265 .hevc .m2v .vob .mxf .dv .y4m .ivf .nut".split()
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


def _walk(root: str) -> list[str]:
    """Media files under `root`, following folder links, each real folder once."""
    seen: set[tuple[int, int]] = set()
    found: list[str] = []

    def warn(e: OSError) -> None:
        log.warning("skipping folder %s: %s", e.filename, e.strerror or e)

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=warn):
        try:
            st = os.stat(dirpath)
        except OSError as e:
            warn(e)
            dirnames[:] = []
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:  # reached again through a link: a loop, or the same folder twice
            log.warning("skipping folder %s: already walked as another path (symlink loop?)", dirpath)
            dirnames[:] = []
            continue
        seen.add(key)
        dirnames.sort()
        for name in filenames:
            p = os.path.join(dirpath, name)
            if _is_media(name) and os.path.isfile(p):
                found.append(os.path.abspath(p))
    return found


def _expand_local(item: str) -> list[str]:
    if item.startswith("file://"):
        item = item[len("file://") :]
    p = os.path.expanduser(item)
    if os.path.isdir(p):
        return _walk(p)
    if os.path.lexists(p):
        return [os.path.abspath(p)]
    if glob.has_magic(item):
        return [os.path.abspath(f) for f in glob.glob(p, recursive=True) if os.path.isfile(f) and _is_media(f)]
    raise FileNotFoundError(f"input not found: {item}")


def _read_list(path: str, seen_lists: set[str]) -> list[str]:
    key = path if is_url(path) else os.path.realpath(path)
    if key in seen_lists:
        raise ValueError(f"list file includes itself: {path}")
    seen_lists.add(key)
    with fsspec.open(path, "r") as f:
        lines = [ln.strip() for ln in f.read().splitlines()]
    base = os.path.dirname(os.path.abspath(path)) if not is_url(path) else None
    items = [ln for ln in lines if ln and not ln.startswith("#")]
    return expand_inputs(items, _seen_lists=seen_lists, _base=base)


def expand_inputs(items: list[str], _seen_lists: set[str] | None = None, _base: str | None = None) -> list[str]:
    """Return sorted unique source URIs; raise FileNotFoundError naming an input that matches
    nothing. Relative items are relative to `_base` (a list's folder), else the working dir."""
    seen_lists = _seen_lists if _seen_lists is not None else set()
    found: list[str] = []
    for item in items:
        local = item if is_url(item) or _base is None or os.path.isabs(os.path.expanduser(item)) else os.path.join(_base, item)
        if item.startswith("@") and not os.path.lexists(local):
            name = item[1:]
            if not is_url(name) and _base is not None and not os.path.isabs(os.path.expanduser(name)):
                name = os.path.join(_base, name)
            found += _read_list(name, seen_lists)
        elif is_url(item):
            found += _expand_url(item)
        else:
            found += _expand_local(local)
    return sorted(set(found))
