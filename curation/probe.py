"""Stage: probe each source (container metadata, first frame) into its `sources` row."""

from __future__ import annotations

import fsspec
import pyarrow as pa
from PIL import Image, ImageOps, UnidentifiedImageError

from curation.inputs import is_url
from curation.media import MediaError, file_size, media_type, probe_video, source_id
from curation.schema import SOURCE_COLUMNS, source_schema, to_table
from curation.stage import Stage


def probe_image(uri: str) -> dict:
    if file_size(uri) == 0:
        raise MediaError("empty file (0 bytes)")
    try:
        with fsspec.open(uri, "rb") if is_url(uri) else open(uri, "rb") as f:
            img = Image.open(f)
            fmt = img.format
            img = ImageOps.exif_transpose(img)
            img.load()
            w, h = img.size
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise MediaError(f"not a readable image ({e})") from None
    return {"codec": (fmt or "").lower(), "container": "image", "width": w, "height": h, "rotation": 0, "has_audio": False}


def probe_source(uri: str) -> dict:
    """One `sources` row for `uri`; a problem with the file becomes status=error."""
    row = {"source": uri, "source_id": source_id(uri), "media_type": media_type(uri), "status": "ok", "num_clips": 0}
    try:
        row["size_bytes"] = file_size(uri)
        if row["media_type"] == "image":
            row.update(probe_image(uri))
        else:
            info = probe_video(uri)
            row.update(
                container=info.container,
                codec=info.codec,
                width=info.width,
                height=info.height,
                rotation=info.rotation,
                duration_s=info.duration_s,
                fps=info.avg_fps,
                bit_rate=info.bit_rate,
                has_audio=info.has_audio,
            )
    except MediaError as e:
        row.update(status="error", error=str(e), error_code=e.code)
    except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
        row.update(status="error", error=f"cannot read file ({e.strerror or e})", error_code="unreadable")
    return row


class ProbeSources(Stage):
    reads = ("source",)
    writes = tuple(SOURCE_COLUMNS)
    batch_size = 8

    def __init__(self, cfg: object = None):
        self.cfg = cfg

    def __call__(self, batch: pa.Table) -> pa.Table:
        return to_table([probe_source(u) for u in batch.column("source").to_pylist()], source_schema())
