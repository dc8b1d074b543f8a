"""Stage: probe each source (container metadata, first frame) into its `sources` row."""

from __future__ import annotations

import fsspec
import pyarrow as pa
from PIL import Image, ImageOps, UnidentifiedImageError

from curation.media.decode import DecodeConfig
from curation.media.inputs import is_url
from curation.media.container import MediaError, check_pixels, check_regular_file, check_side, file_size, media_type, probe_video, source_id
from curation.core.schema import SOURCE_COLUMNS, source_schema, to_table
from curation.core.stage import Stage, item_error


def probe_image(uri: str, max_pixels: int = DecodeConfig.max_pixels, min_side: int = DecodeConfig.min_side) -> dict:
    """Read the header, refuse sizes over `max_pixels` or under `min_side` (not decoded), then
    decode once to know the image is whole. MediaError codes: empty, too_large, too_small,
    not_media."""
    check_regular_file(uri)
    if file_size(uri) == 0:
        raise MediaError("empty file (0 bytes)", code="empty")
    try:
        with fsspec.open(uri, "rb") if is_url(uri) else open(uri, "rb") as f:
            img = Image.open(f)
            fmt = img.format
            check_pixels(img.width, img.height, max_pixels, "image")
            check_side(img.width, img.height, min_side, "image")
            img = ImageOps.exif_transpose(img)
            img.load()
            w, h = img.size
    except Image.DecompressionBombError as e:  # Pillow's own limit (~179 Mpx), when below ours
        raise MediaError(f"image too large (over the {max_pixels / 1e6:.0f} Mpx limit, [decode] max_pixels): {e}", code="too_large") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise MediaError(f"not a readable image ({e})", code="not_media") from None
    return {"codec": (fmt or "").lower(), "container": "image", "width": w, "height": h, "rotation": 0, "has_audio": False}


def probe_source(uri: str, decode: DecodeConfig | None = None) -> dict:
    """One `sources` row for `uri`; a problem with the file becomes status=error with an
    `error_code` (see curation/media/container.py)."""
    decode = decode or DecodeConfig()
    max_pixels, min_side = decode.max_pixels, decode.min_side
    row = {"source": uri, "source_id": source_id(uri), "media_type": media_type(uri), "status": "ok", "num_clips": 0}
    try:
        check_regular_file(uri)  # a FIFO would block the open; a dangling link is not found
        row["size_bytes"] = file_size(uri)
        if row["media_type"] == "image":
            row.update(probe_image(uri, max_pixels, min_side))
        else:
            info = probe_video(uri, max_pixels, min_side)
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
        """`cfg`: the RunConfig (its [decode] limits apply) or None for the defaults."""
        self.cfg = cfg

    def __call__(self, batch: pa.Table) -> pa.Table:
        decode = getattr(self.cfg, "decode", None)
        return to_table([self.probe(u, decode) for u in batch.column("source").to_pylist()], source_schema())

    def probe(self, uri: str, decode: DecodeConfig | None = None) -> dict:
        """`probe_file`, with any unexpected exception made this source's error row."""
        try:
            return self.probe_file(uri, decode)
        except Exception as e:  # noqa: BLE001 - per-item fault isolation (stage.item_error)
            return {"source": uri, "source_id": source_id(uri), "media_type": media_type(uri), "status": "error",
                    "num_clips": 0, **item_error(e)}

    def probe_file(self, uri: str, decode: DecodeConfig | None) -> dict:
        return probe_source(uri, decode)
