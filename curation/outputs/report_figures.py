"""The pictures of the dataset report: histograms and thumbnails, as data URIs.

Everything is embedded as `data:` URIs so report.html stays one self-contained file. Plots use
matplotlib's object API (`Figure`, no pyplot): no global backend or figure state, and nothing
that needs a display, so rendering works on headless servers and inside worker processes.
Thumbnails are decoded with PyAV, one frame per clip, seeking to the middle of the clip.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from curation.media.images import read_image
from curation.media.decode import scaled_size
from curation.media.container import MediaError, display_rotation, open_container
from curation.outputs.report_tables import float_values

THUMB_SHORT_SIDE = 144
_BLUE, _RED, _GREY = "#3b6ea8", "#c0392b", "#7f8c8d"


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def histogram(values: np.ndarray, title: str, lines: list[tuple[float, str, bool]] = (), unit_range: bool = False) -> str:
    """A histogram with each threshold (x, label, rejects) drawn as a vertical line.

    Thresholds far outside the data are listed in the legend as off scale instead of stretching
    the axis until the data is one bar."""
    v = values[~np.isnan(values)]
    fig = Figure(figsize=(4.4, 2.9), layout="constrained")
    ax = fig.add_subplot()
    lo, hi = (0.0, 1.0) if unit_range else ((float(v.min()), float(v.max())) if v.size else (0.0, 1.0))
    pad = (hi - lo) * 0.05 or 0.5
    lo, hi = lo - pad, hi + pad
    if v.size:
        ax.hist(v, bins=np.linspace(lo, hi, 31), color=_BLUE, alpha=0.85)
    else:
        ax.text(0.5, 0.5, "no values", transform=ax.transAxes, ha="center", color=_GREY)
    for x, label, rejects in lines:
        colour, style = (_RED, "-") if rejects else (_GREY, "--")
        if lo - 3 * pad <= x <= hi + 3 * pad:
            lo, hi = min(lo, x - pad), max(hi, x + pad)
            ax.axvline(x, color=colour, linestyle=style, linewidth=1.5, label=f"{label} = {x:.4g}")
        else:
            ax.plot([], [], color=colour, linestyle=style, label=f"{label} = {x:.4g} (off scale)")
    ax.set_xlim(lo, hi)
    ax.set_title(f"{title}  (n={v.size})", fontsize=10)
    ax.set_ylabel("count", fontsize=8)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=8)
    if lines:
        # Below the axes: inside, a legend hides exactly the bars next to a threshold.
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    return _png(fig)


def bars(counts: dict[str, int], title: str, colours: list[str] | None = None) -> str:
    """Horizontal bars, largest on top (funnel stages, resolutions)."""
    labels, values = list(counts)[::-1], list(counts.values())[::-1]
    fig = Figure(figsize=(4.4, 0.6 + 0.28 * max(len(labels), 2)), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(labels, values, color=(colours[::-1] if colours else _BLUE))
    for y, v in enumerate(values):
        ax.text(v, y, f" {v}", va="center", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=8)
    ax.set_xlim(0, max(values + [1]) * 1.15)
    return _png(fig)


def _thresh_lines(specs: list[dict]) -> list[tuple[float, str, bool]]:
    lines = []
    for t in specs:
        for key in ("at", "min", "max"):
            if t.get(key) is not None:
                lines.append((float(t[key]), t["name"] if key == "at" else f"{t['name']} {key}", t["rejects"]))
    return lines


def render_figures(report: dict, sources: pa.Table, clips: pa.Table, root: Path) -> dict:
    f = report["funnel"]
    stages = {k: f[k] for k in ("inputs", "sources_ok", "clips", "accepted", "captioned", "sharded")}
    videos = clips.filter(pc.equal(clips.column("media_type"), "video"))
    ok = sources.filter(pc.equal(sources.column("status"), "ok"))
    figs = {
        "funnel": bars(stages, "funnel"),
        "hist": {
            c: histogram(float_values(clips, c), c, _thresh_lines(report["thresholds"].get(c, [])), c.startswith(("neg_", "vlm_")))
            for c, s in report["columns"].items() if s["count"]  # a column without values gets a line, not a plot
        },
        "dist": {
            "clips_duration": histogram(float_values(videos, "end_s") - float_values(videos, "start_s"), "clip duration (s)"),
            "clips_fps": histogram(float_values(videos, "fps"), "clip fps"),
            "clips_resolution": bars(report["distributions"]["clips"]["resolution"], "clip resolution (video clips)"),
            "sources_duration": histogram(float_values(ok, "duration_s"), "source duration (s)"),
            "sources_fps": histogram(float_values(ok, "fps"), "source fps"),
            "sources_resolution": bars(report["distributions"]["sources"]["resolution"], "source resolution"),
        },
        "captions": None,
        "thumbs": {},
    }
    if report["captions"]["present"] and report["captions"]["count"]:
        cap = report["captions"]
        if "length_tokens" in cap:  # budget tokens (the trainer's tokenizer) against the budget
            lines = [(float(cap["budget"]), "token budget", True)] if cap.get("budget") else []
            figs["captions"] = histogram(float_values(clips, "caption_tokens"), "caption length (budget tokens)", lines)
        else:
            words = [len(t.split()) for t in clips.column("caption").to_pylist() if t is not None]
            figs["captions"] = histogram(np.array(words, np.float64), "caption length (words)")
    rows = {r["clip_id"]: r for r in clips.select(["clip_id", "clip_path", "source", "media_type", "start_s", "end_s"]).to_pylist()}
    shown = report["gallery"]["clips"] + [e for s in report["contact_sheets"] for e in s["clips"]]
    shown += report["ranked"]["top"] + report["ranked"]["bottom"]
    shown += report["captions"].get("samples", [])
    shown += [e for g in report.get("duplicates", {}).get("groups", []) for e in g["clips"]]
    for e in shown:
        if e["clip_id"] not in figs["thumbs"]:
            figs["thumbs"][e["clip_id"]] = thumbnail(root, rows[e["clip_id"]])
    return figs


def thumbnail(root: Path, row: dict) -> dict:
    """{"uri", "note"}: the clip's middle frame, from the extracted file if there is one, else
    from the source. A frame that cannot be read becomes a note, not a failed report."""
    try:
        rgb, note = _middle_frame(root, row)
    except (MediaError, av.error.FFmpegError, OSError) as e:
        return {"uri": None, "note": f"no thumbnail: {e}"}
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=80)
    return {"uri": "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode(), "note": note}


def _middle_frame(root: Path, row: dict) -> tuple[np.ndarray, str]:
    clip = root / row["clip_path"] if row["clip_path"] else None
    if row["media_type"] == "image":
        rgb = read_image(str(clip) if clip else row["source"])
        w, h = scaled_size(rgb.shape[1], rgb.shape[0], THUMB_SHORT_SIDE)
        return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR)), "image"
    half = (row["end_s"] - row["start_s"]) / 2
    if clip is not None and clip.exists():
        return _frame_at(str(clip), half, relative=True), "middle frame, extracted clip"
    return _frame_at(row["source"], row["start_s"] + half, relative=False), "middle frame, from source"


def _frame_at(uri: str, t: float, relative: bool) -> np.ndarray:
    """The first frame at or after `t` seconds (from the stream start when `relative`)."""
    with open_container(uri) as c:
        vs = c.streams.video[0]
        vs.thread_type = "AUTO"
        if relative and vs.start_time is not None:
            t += float(vs.start_time * vs.time_base)
        if t > 0:
            c.seek(int(t / vs.time_base), stream=vs)  # the keyframe at or before t
        frame = None
        for frame in c.decode(vs):
            if frame.time is None or frame.time >= t - 1e-3:
                break
        if frame is None:
            raise MediaError("no frame decodes at that time")
        rot = display_rotation(frame) // 90
        w, h = scaled_size(frame.width, frame.height, THUMB_SHORT_SIDE)
        return np.ascontiguousarray(np.rot90(frame.reformat(width=w, height=h, format="rgb24").to_ndarray(), rot))
