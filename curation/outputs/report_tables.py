"""The report's tables: counts, summaries and clip lists, computed in Arrow from the manifest.

Below the report (curation/outputs/report.py assembles these into report.json) and beside its
figures (curation/outputs/report_figures.py draws from the same helpers); neither imports the
report. Everything here stays in Arrow until the few rows a section shows: a run of millions
of clips never becomes Python rows. `off` says which stages a run's configuration left out,
with the setting that did it: sections of stages that did not run say so instead of showing
nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.core.config import RunConfig
from curation.core.manifest import Layout
from curation.core.schema import NEG_TAGS, judge_column, neg_column

PER_SHEET = 8  # thumbnails per contact sheet: enough to judge a tag, small enough to scan
GALLERY = 16  # accepted clips shown at the top of the report
MAX_GROUPS = 12  # duplicate groups shown with thumbnails


def funnel(sources: pa.Table, clips: pa.Table) -> dict[str, int]:
    src, clip = value_counts(sources.column("status")), value_counts(clips.column("status"))
    return {
        "inputs": sources.num_rows,
        "sources_ok": src["ok"],
        "sources_failed": src["error"],
        "clips": clips.num_rows,
        "accepted": clip["accepted"],
        "rejected": clip["rejected"],
        "clip_errors": clip["error"],
        "captioned": _non_null(clips, "caption"),
        "sharded": _non_null(clips, "shard"),
    }


def _non_null(table: pa.Table, column: str) -> int:
    return table.num_rows - table.column(column).null_count if column in table.column_names else 0


def value_counts(values: pa.ChunkedArray | pa.Array, null_as: str | None = None) -> Counter:
    """Counts of each value, computed in Arrow (no per-row Python objects); most common
    first. Nulls are counted under `null_as`, or left out when it is None."""
    counts = Counter()
    if len(values):
        vc = pc.value_counts(values)
        for v, n in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()):
            if v is not None:
                counts[v] = n
            elif null_as is not None:
                counts[null_as] = n
    return Counter(dict(counts.most_common()))


def count_list_values(table: pa.Table, column: str) -> dict[str, int]:
    col = table.column(column)
    return dict(value_counts(pc.list_flatten(col) if len(col) else pa.array([], pa.string())).most_common())


def float_values(table: pa.Table, column: str) -> np.ndarray:
    """A column as float64 with nulls as NaN (empty when the column is absent)."""
    if column not in table.column_names:
        return np.empty(0)
    return pc.cast(table.column(column), pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)


def _r(x: float) -> float:
    # 6 significant digits: the HTML prints the same digits the JSON holds.
    return float(f"{x:.6g}")


def summarize(values: np.ndarray) -> dict[str, Any]:
    v = values[~np.isnan(values)]
    out: dict[str, Any] = {"count": int(v.size), "nulls": int(values.size - v.size)}
    if v.size:
        p5, p25, p50, p75, p95 = np.percentile(v, [5, 25, 50, 75, 95])
        stats = dict(mean=v.mean(), std=v.std(), min=v.min(), p5=p5, p25=p25, p50=p50, p75=p75, p95=p95, max=v.max())
        out |= {k: _r(float(x)) for k, x in stats.items()}
    return out


def word_counts(texts: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Words per string (as `len(s.split())`), in Arrow; null stays null."""
    trimmed = pc.utf8_trim_whitespace(texts)
    return pc.if_else(pc.equal(pc.utf8_length(trimmed), 0), 0, pc.list_value_length(pc.utf8_split_whitespace(trimmed)))


def captions(clips: pa.Table, cfg: RunConfig | None = None) -> dict:
    """Caption counts, lengths (words, characters, budget tokens) against the token budget,
    gate flags and errors by kind, and a sample of captioned clips (shown with thumbnails).
    Computed in Arrow: only the sampled rows become Python objects."""
    if cfg is not None and not cfg.caption.enabled:
        return {"present": False, "count": 0, "off": off(cfg)["caption"]}
    if "caption" not in clips.column_names:
        return {"present": False, "count": 0, "off": None}
    rows = clips.filter(pc.is_valid(clips.column("caption")))
    texts = rows.column("caption").cast(pa.string())
    out = {
        "present": True,
        "off": None,
        "count": rows.num_rows,
        "budget": cfg.caption.max_tokens if cfg is not None else None,
        "length_words": summarize(np.asarray(word_counts(texts), np.float64)),
        "length_chars": summarize(np.asarray(pc.utf8_length(texts), np.float64)),
    }
    if "caption_tokens" in clips.column_names:
        out["length_tokens"] = summarize(float_values(clips, "caption_tokens"))
        out["flags"] = count_list_values(clips, "caption_flags") if "caption_flags" in clips.column_names else {}
        errors = clips.column("caption_error").cast(pa.string()).drop_null()
        out["errors"] = len(errors)
        kinds = pc.utf8_slice_codeunits(pc.list_element(pc.split_pattern(errors, ":", max_splits=1), 0), 0, 80) if len(errors) else errors
        out["errors_by_reason"] = dict(value_counts(kinds).most_common())
        for key, column in (("models", "caption_model"), ("prompt_versions", "caption_prompt_version")):
            values = rows.column(column) if column in rows.column_names else pa.array([], pa.string())
            out[key] = {k: n for k, n in value_counts(values).items() if k}
        step = max(1, rows.num_rows // PER_SHEET)  # spread over the run, in clip_id order
        order = pc.sort_indices(rows, [("clip_id", "ascending")])
        picked = rows.take(order[::step][:PER_SHEET]).to_pylist()
        out["samples"] = [{"clip_id": r["clip_id"], "source": Path(r["source"]).name, "caption": r["caption"],
                           "tokens": r.get("caption_tokens"), "flags": r.get("caption_flags") or []} for r in picked]
    return out


def shards(layout: Layout, clips: pa.Table) -> dict:
    index = layout.root / "shards" / "index.json"
    out: dict[str, Any] = {"index": None, "index_entries": None, "sharded_clips": _non_null(clips, "shard")}
    if index.exists():  # written by curation/outputs/write_shards.py; read defensively, it may evolve
        data = json.loads(index.read_text())
        entries = data.get("shards", data) if isinstance(data, dict) else data
        out |= {"index": str(index.relative_to(layout.root)), "index_entries": len(entries)}
        if isinstance(data, dict) and isinstance(data.get("totals"), dict):
            out["index_totals"] = data["totals"]
        if isinstance(data, dict) and isinstance(data.get("unsharded"), dict):
            out["unsharded_by_reason"] = dict(Counter(map(str, data["unsharded"].values())).most_common())
    if "shard" in clips.column_names:
        out["distinct_shards"] = len(value_counts(clips.column("shard")))
    if "bucket" in clips.column_names:
        out["by_bucket"] = {str(b): n for b, n in value_counts(clips.column("bucket")).items()}
    return out


def _entry(row: dict, column: str) -> dict:
    v = row.get(column)
    return {"clip_id": row["clip_id"], "source": Path(row["source"]).name, "status": row["status"],
            "column": column, "value": None if v is None else _r(v), "reasons": row.get("reject_reasons") or []}


def _rows_with(clips: pa.Table, list_column: str, value: str) -> pa.Table:
    """The rows whose list column holds `value` (Arrow: flatten, match, parent rows)."""
    col = clips.column(list_column).combine_chunks()
    if not len(col):
        return clips.slice(0, 0)
    hit = pc.equal(pc.list_flatten(col), value)
    parents = pc.unique(pc.filter(pc.list_parent_indices(col), hit))
    return clips.take(parents)


def _top(table: pa.Table, column: str, k: int, descending: bool = True) -> list[dict]:
    """The k rows with the highest (lowest) `column`, as dicts: only those rows leave Arrow."""
    if not table.num_rows or k <= 0:
        return []
    idx = pc.select_k_unstable(table, k, [(column, "descending" if descending else "ascending")])
    return table.take(idx).to_pylist()


def contact_sheets(clips: pa.Table, cfg: RunConfig) -> list[dict]:
    """Per negative tag, the clips where it fired, highest score first."""
    sheets = []
    for tag in NEG_TAGS:
        col = neg_column(tag)
        fired = _rows_with(clips, "neg_tags", tag)
        top = sorted(_top(fired, col, PER_SHEET), key=lambda r: -(r.get(col) or 0.0)) if col in clips.column_names else fired.slice(0, PER_SHEET).to_pylist()
        sheets.append({"tag": tag, "column": col, "threshold": cfg.decide.tag_thresholds[tag], "fired": fired.num_rows,
                       "clips": [_entry(r, col) for r in top]})
    for q in cfg.judge.questions if cfg.judge.enabled else ():  # VLM-judged tags: listed in neg_tags as vlm_<name>
        col = judge_column(q.name)
        fired = _rows_with(clips, "neg_tags", col)
        top = sorted(_top(fired, col, PER_SHEET), key=lambda r: -(r.get(col) or 0.0)) if col in clips.column_names else []
        sheets.append({"tag": col, "column": col, "threshold": q.threshold, "fired": fired.num_rows,
                       "clips": [_entry(r, col) for r in top]})
    return sheets


def ranked(clips: pa.Table, off_because: str | None = None) -> dict:
    """Top and bottom clips by aesthetic score. When the run computed none (`off_because`
    names the setting, or no clip has a value), the section is one line and the gallery of
    accepted clips shows the pictures."""
    column = "aesthetic_score"
    rows = clips.filter(pc.not_equal(clips.column("status"), "error")) if column in clips.column_names else clips.slice(0, 0)
    rows = rows.filter(pc.is_valid(rows.column(column))) if rows.num_rows else rows
    if off_because or not rows.num_rows:
        note = f"not computed in this run ({off_because})" if off_because else "no clip has an aesthetic score"
        return {"column": column, "note": note, "top": [], "bottom": []}
    k_top = min(PER_SHEET, (rows.num_rows + 1) // 2)  # top and bottom never show the same clip
    k_bottom = min(PER_SHEET, rows.num_rows - k_top)
    # One order for both ends (clip_id breaks ties), so a tie never puts a clip in both.
    order = pc.sort_indices(rows, [(column, "descending"), ("clip_id", "ascending")])
    top = rows.take(order[:k_top]).to_pylist()
    bottom = rows.take(order[rows.num_rows - k_bottom:][::-1]).to_pylist()
    return {"column": column, "note": None, "top": [_entry(r, column) for r in top], "bottom": [_entry(r, column) for r in bottom]}


def gallery(clips: pa.Table, k: int = GALLERY) -> dict:
    """Up to `k` accepted clips, spread evenly over the run (clip_id order: clip ids start with
    a hash of their source, so the spread crosses sources), whatever models ran."""
    acc = clips.filter(pc.equal(clips.column("status"), "accepted"))
    if not acc.num_rows:
        return {"accepted": 0, "clips": []}
    order = pc.sort_indices(acc, [("clip_id", "ascending")])
    step = max(1, acc.num_rows // k)
    rows = acc.take(order[::step][:k]).to_pylist()
    column = "aesthetic_score" if any(r.get("aesthetic_score") is not None for r in rows) else "motion_score"
    return {"accepted": acc.num_rows, "clips": [_entry(r, column) for r in rows]}


def off(cfg: RunConfig) -> dict[str, str]:
    """Stages this run's configuration left out, each with the setting that did it."""
    m, out = cfg.models, {}
    if not m.enabled:
        out["clip"] = out["aesthetic"] = "[models] enabled = false"
        out["dedup"] = "no embeddings to compare: [models] enabled = false"
    else:
        if not m.aesthetic_head:
            out["aesthetic"] = '[models] aesthetic_head = ""'
        if not cfg.dedup.enabled:
            out["dedup"] = "[dedup] enabled = false"
    if not m.ocr:
        out["ocr"] = "[models] ocr = false"
    if not cfg.caption.enabled:
        out["caption"] = "[caption] enabled = false"
    if not cfg.caption.enabled:  # the judge asks the caption model: off with captioning (RunConfig)
        out["judge"] = "[caption] enabled = false (the judge asks the caption model)"
    elif not cfg.judge.enabled:
        out["judge"] = "[judge] enabled = false"
    if not cfg.probe.path:
        out["probe"] = "[probe] path is not set"
    return out


def duplicates(clips: pa.Table, cfg: RunConfig) -> dict:
    """Near-duplicate groups (curation/decisions/dedup.py): each kept clip with the clips rejected as its
    twins. Grouped in Arrow: only the rows shown become Python objects. A run that looked for
    none says which setting turned them off (`off`)."""
    if reason := off(cfg).get("dedup"):
        return {"present": False, "off": reason, "groups": [], "rejected": 0, "groups_total": 0}
    if "dup_of" not in clips.column_names:
        return {"present": False, "off": None, "groups": [], "rejected": 0, "groups_total": 0}
    dup_of = clips.column("dup_of")
    twins = clips.filter(pc.and_(pc.is_valid(dup_of), pc.not_equal(dup_of, "")))
    groups = twins.group_by("dup_of").aggregate([("clip_id", "list"), ("clip_id", "count")])
    groups = groups.sort_by([("clip_id_count", "descending"), ("dup_of", "ascending")]).slice(0, MAX_GROUPS)
    shown_ids = pa.concat_arrays([groups.column("dup_of").combine_chunks().cast(pa.string()),
                                  pc.list_flatten(groups.column("clip_id_list")).combine_chunks().cast(pa.string())])
    rows = {r["clip_id"]: r for r in clips.filter(pc.is_in(clips.column("clip_id"), shown_ids)).to_pylist()}
    shown = []
    for kept, dups in zip(groups.column("dup_of").to_pylist(), groups.column("clip_id_list").to_pylist()):
        entries = [_entry(rows[kept], "aesthetic_score") | {"role": "kept"}] if kept in rows else []
        entries += [_entry(rows[d], "dup_sim") | {"role": "duplicate"} for d in sorted(dups)[: PER_SHEET - 1]]
        shown.append({"kept": kept, "size": 1 + len(dups), "clips": entries})
    judged = _non_null(clips, "dedup")
    return {"present": True, "off": None, "threshold": cfg.dedup.threshold, "enabled": cfg.dedup.enabled, "judged": judged,
            "rejected": twins.num_rows, "groups_total": len(pc.unique(twins.column("dup_of"))), "groups": shown}
