"""Dataset report: what a run kept, what it dropped and why, and what its scores look like.

`write_report(OUT)` reads only the run's outputs (the manifest, config.resolved.json and, when
present, shards/index.json) and writes two files:

* OUT/report.json: the numbers (funnel, counts per reason, summary statistics per column,
  thresholds with percentile rules resolved on this run's clips), for scripts and dashboards;
* OUT/report.html: the same dict rendered through Jinja2, plus histograms and thumbnails. It is
  one self-contained file (images are data URIs, CSS is inline, no JS, no network), so it can
  be mailed or archived next to the data and still open offline.

Rendering the HTML from the dict that is written as JSON keeps the two from ever disagreeing.
Columns later stages add (`caption`, `shard`, `bucket`, `aesthetic_score`, any float score) are
picked up when present and reported as absent otherwise. Model scoring adds the duplicate
groups (kept clip and its rejected twins, with thumbnails) and the tag probe's held-out
figures; the aesthetic columns get histograms (with any rule on them) and rank the top and
bottom contact sheets.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.core.config import RunConfig, from_dict
from curation.decisions.decide import resolve_rules
from curation.core.manifest import Layout, read_dataset, read_scores, read_sources, write_bytes_atomic, write_json_atomic
from curation.core.schema import NEG_TAGS, SCHEMA_VERSION, clip_schema, judge_column, neg_column, source_schema

REPORT_VERSION = 1
PER_SHEET = 8  # thumbnails per contact sheet: enough to judge a tag, small enough to scan
# Float clip columns that describe where a clip is, not how good it is: shown as distributions.
NOT_SCORES = frozenset({"start_s", "end_s", "fps", "caption_start_s", "caption_end_s"})
TINY_WARNING = (
    "Profile 'tiny': models are tiny random-initialised and untrained: "
    "scores that depend on models are meaningless."
)
_TEMPLATES = Path(__file__).resolve().parent / "templates"


def write_report(out: str | Path) -> dict:
    """Write OUT/report.json and OUT/report.html; return the report dict (what the JSON holds)."""
    from curation.outputs.report_figures import render_figures  # matplotlib + decoding: only when rendering

    layout = Layout.at(out)
    sources, clips, scored, cfg_dict = load_run(layout)
    report = build_report(layout, sources, clips, scored, cfg_dict)
    html = render_html(report, render_figures(report, sources, clips, layout.root))
    write_json_atomic(layout.root / "report.json", report)
    write_bytes_atomic(layout.root / "report.html", html.encode())
    return report


def load_run(layout: Layout) -> tuple[pa.Table, pa.Table, pa.Table, dict]:
    """The manifest tables (with whatever columns they carry) and the resolved config."""
    if not layout.resolved_config.exists() or not layout.sources.exists():
        raise FileNotFoundError(f"{layout.root} has no manifest or config.resolved.json; run `videomill run` first")
    # The clip manifest without a schema: a fixed one would project away columns later stages
    # add. Sources and scores: the committed parts only, as decide read them.
    sources = read_sources(layout)
    clips = read_dataset(layout.clip_manifest)
    scored = read_scores(layout)
    sources = sources if sources.num_columns else source_schema().empty_table()
    clips = clips if clips.num_columns else clip_schema().empty_table()
    return sources, clips, scored, json.loads(layout.resolved_config.read_text())


def build_report(layout: Layout, sources: pa.Table, clips: pa.Table, scored: pa.Table, cfg_dict: dict) -> dict:
    """Every number of the report, JSON-ready (no NaN: empty statistics are left out)."""
    cfg = from_dict(cfg_dict)
    ok_sources = sources.filter(pc.equal(sources.column("status"), "ok"))
    videos = clips.filter(pc.equal(clips.column("media_type"), "video"))
    score_cols = [f.name for f in clips.schema if pa.types.is_floating(f.type) and f.name not in NOT_SCORES]
    return {
        "report_version": REPORT_VERSION,
        "schema_version": SCHEMA_VERSION,
        "out": str(layout.root),
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "profile": cfg.profile,
        "warning": TINY_WARNING if cfg.profile == "tiny" else None,
        "funnel": funnel(sources, clips),
        "sources_failed_by_reason": _count(sources, "error", pc.equal(sources.column("status"), "error")),
        "rejected_by_reason": count_list_values(clips, "reject_reasons"),
        "clip_errors_by_reason": _count(clips, "error", pc.equal(clips.column("status"), "error")),
        # the same errors grouped by their short code (curation/media/container.py: empty, not_media, ...)
        "sources_failed_by_code": _count(sources, "error_code", pc.equal(sources.column("status"), "error")),
        "clip_errors_by_code": _count(clips, "error_code", pc.equal(clips.column("status"), "error")),
        "tags_fired": count_list_values(clips, "neg_tags"),
        "stages": stages_run(cfg, clips),
        "columns": {c: summarize(float_values(clips, c)) for c in score_cols},
        "not_computed": not_computed(cfg, clips, score_cols),
        "gallery": gallery(clips),
        "thresholds": thresholds(cfg, scored if scored.num_rows else clips, score_cols),
        "distributions": {
            "clips": _shape_stats(videos, float_values(videos, "end_s") - float_values(videos, "start_s")),
            "sources": _shape_stats(ok_sources, float_values(ok_sources, "duration_s")),
        },
        "captions": captions(clips, cfg),
        "shards": shards(layout, clips),
        "thumbs_per_sheet": PER_SHEET,
        "contact_sheets": contact_sheets(clips, cfg),
        "ranked": ranked(clips, off(cfg).get("aesthetic")),
        "duplicates": duplicates(clips, cfg),
        "probe": probe_section(clips, cfg),
        "model_scoring": {"enabled": cfg.models.enabled, "clip": cfg.models.clip, "clip_pretrained": cfg.models.clip_pretrained,
                          "aesthetic_head": cfg.models.aesthetic_head, "ocr": cfg.models.ocr,
                          "untrained": cfg.models.enabled and cfg.models.clip == "tiny"},
        "models": {k: v for k, v in model_ids(cfg_dict).items() if not (k.startswith("caption.") and not cfg.caption.enabled)},
        "config": cfg_dict,
        "config_rows": config_rows(cfg_dict),
        "calibration": calibration(layout),
    }


def calibration(layout: Layout) -> dict | None:
    """OUT/calibration.json when `videomill calibrate OUT --labels ...` has run (per tag and
    rule precision/recall against labelled clips, curation/decisions/calibrate.py); else None."""
    path = layout.root / "calibration.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return {k: data[k] for k in ("labels_file", "target_precision", "clips", "labelled", "rows", "verdicts", "fire_rate_on_good", "labels_without_clips") if k in data}


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


def _count(table: pa.Table, column: str, mask: pa.ChunkedArray) -> dict[str, int]:
    return dict(value_counts(table.filter(mask).column(column), null_as="(no reason given)").most_common())


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


def _shape_stats(table: pa.Table, duration: np.ndarray) -> dict:
    w, h = table.column("width"), table.column("height")
    known = pc.and_(pc.greater(pc.fill_null(w, 0), 0), pc.greater(pc.fill_null(h, 0), 0))
    sizes = pc.binary_join_element_wise(pc.cast(w.filter(known), pa.string()), pc.cast(h.filter(known), pa.string()), "x")
    return {
        "count": table.num_rows,
        "duration_s": summarize(np.asarray(duration, np.float64)),
        "fps": summarize(float_values(table, "fps")),
        "resolution": dict(value_counts(sizes).most_common()),
    }


def thresholds(cfg: RunConfig, table: pa.Table, score_cols: list[str]) -> dict[str, list[dict]]:
    """Every bound applied to each column. Percentile rules are resolved on the scored clips,
    the same table and code `decide` used, so the numbers are the ones that cut."""
    d = cfg.decide
    out: dict[str, list[dict]] = {c: [] for c in score_cols}
    for tag in NEG_TAGS:
        keep = tag in d.keep_tags
        out.setdefault(neg_column(tag), []).append(
            {"name": f"neg:{tag}", "kind": "tag", "at": d.tag_thresholds[tag], "rejects": not keep,
             "rule": f"tag fires at score >= {d.tag_thresholds[tag]}" + (" (kept: keep_tags)" if keep else "")}
        )
    for q in cfg.judge.questions if cfg.judge.enabled else ():  # VLM-judged tags (captioning/judge.py)
        keep = q.name in cfg.judge.keep
        out.setdefault(judge_column(q.name), []).append(
            {"name": judge_column(q.name), "kind": "tag", "at": q.threshold, "rejects": not keep,
             "rule": f"VLM-judged tag fires at P(yes) >= {q.threshold}" + (" (kept: judge.keep)" if keep else "")}
        )
    for rule in d.rules:
        have = rule.column in table.column_names
        res = resolve_rules(table, (rule,))[0] if have else None
        spec = {k: getattr(rule, k) for k in ("min", "max", "min_pct", "max_pct") if getattr(rule, k) is not None}
        out.setdefault(rule.column, []).append(
            {"name": rule.name, "kind": "rule", "min": res.min if res else rule.min, "max": res.max if res else rule.max, "rejects": True,
             "rule": ", ".join(f"{k} {v}" for k, v in spec.items()) + ("" if have else " (column not in manifest)")}
        )
    return {c: v for c, v in out.items() if v}


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


GALLERY = 16  # accepted clips shown at the top of the report


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


# The stage behind each column family (a column's stage off: it has no values, by design).
_COLUMN_STAGE = (("aesthetic_", "aesthetic"), ("zs_", "clip"), ("dup_", "dedup"), ("ocr_", "ocr"),
                 ("probe_", "probe"), ("caption_", "caption"), ("vlm_", "judge"), ("judge_", "judge"))


def not_computed(cfg: RunConfig, clips: pa.Table, score_cols: list[str]) -> list[dict]:
    """Score columns without a single value, grouped by why: the setting that turned their
    stage off, or "no values" when the stage ran (every clip errored, say)."""
    why = off(cfg)
    groups: dict[str, list[str]] = {}
    for c in score_cols:
        if clips.num_rows and clips.column(c).null_count < clips.num_rows:
            continue
        stage = next((st for prefix, st in _COLUMN_STAGE if c.startswith(prefix)), None)
        groups.setdefault(why.get(stage, "no values in this run") if stage else "no values in this run", []).append(c)
    return [{"reason": r, "columns": cols} for r, cols in groups.items()]


def stages_run(cfg: RunConfig, clips: pa.Table) -> list[dict]:
    """What the run did, stage by stage, and what it did not do with the setting that says so:
    the first thing the report shows."""
    why, m = off(cfg), cfg.models
    def row(name: str, key: str | None, on: str) -> dict:
        reason = why.get(key) if key else None
        return {"stage": name, "on": reason is None, "detail": on if reason is None else f"off ({reason})"}

    head = f"aesthetic head {m.aesthetic_head}" if m.aesthetic_head else "no aesthetic head"
    return [
        row("probe, shots, motion, negative tags", None, "on every source"),
        row("CLIP: aesthetic, zero-shot tags, embeddings", "clip",
            f"{m.clip}" + ("" if m.clip == "tiny" else f" ({m.clip_pretrained})") + f", {head}"),
        row("OCR text score", "ocr", f"PP-OCRv4 on {m.ocr_frames} frames per clip"),
        row("near-duplicates", "dedup", f"cosine >= {cfg.dedup.threshold:g}"),
        row("tag probe", "probe", str(cfg.probe.path)),
        row("decide", None, f"{len(cfg.decide.rules)} rules, {len(cfg.decide.tag_thresholds)} negative tags"
                            + (f" ({', '.join(cfg.decide.keep_tags)} tag only)" if cfg.decide.keep_tags else "")),
        row("VLM-judged tags", "judge", f"{len(cfg.judge.questions)} yes/no questions to {cfg.caption.model}, before its caption"),
        row("captions", "caption", f"{cfg.caption.model} ({cfg.caption.mode}, {cfg.caption.backend})"),
        row("shards", None, "WebDataset, " + ("by training bucket" if cfg.shard.bucketing else "unbucketed")),
    ]


def config_rows(cfg_dict: dict) -> list[dict]:
    """The configuration as rows (section, key, value), each marked when it differs from the
    defaults of the run's profile: the settings that made this run what it is, first."""
    from curation.core.config import load_config, to_dict

    try:  # as JSON has it (lists, not tuples), in RunConfig's order
        base = json.loads(json.dumps(to_dict(load_config(profile=cfg_dict.get("profile") or "cpu")), default=str))
    except ValueError:
        base = {}
    rows = []
    for section in [*base, *(k for k in cfg_dict if k not in base)]:
        values = cfg_dict.get(section)
        if not isinstance(values, dict):
            continue
        for key, value in _flat(values):
            default = _lookup(base.get(section, {}), key)
            rows.append({"section": section, "key": key, "value": _show(value), "changed": default != value})
    return rows


def _flat(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _lookup(d: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return object()  # never equal: a key the defaults do not have
        d = d[part]
    return d


def _show(v: Any) -> str:
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, sort_keys=True, default=str)
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


MAX_GROUPS = 12  # duplicate groups shown with thumbnails


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


def probe_section(clips: pa.Table, cfg: RunConfig) -> dict | None:
    """The tag probe's held-out figures (from the PROBE file) and how often each tag fired here."""
    if not cfg.probe.path:
        return None
    from curation.models.tag_probe import load_probe

    try:
        probe = load_probe(cfg.probe.path)
    except ValueError as e:
        return {"path": cfg.probe.path, "error": str(e)}
    return {"path": cfg.probe.path, "model": probe.model, "threshold": probe.threshold, "metrics": probe.metrics,
            "fired": count_list_values(clips, "probe_tags") if "probe_tags" in clips.column_names else {}}


def model_ids(cfg_dict: dict, prefix: str = "") -> dict[str, Any]:
    """Config fields naming a model (any key containing 'model'), by dotted path."""
    found: dict[str, Any] = {}
    for k, v in cfg_dict.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict):
            found |= model_ids(v, f"{path}.")
        elif "model" in k.lower():
            found[path] = v
    return found


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.6g}"
    return str(x)


def render_html(report: dict, figures: dict) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
    )
    env.filters["fmt"] = _fmt
    return env.get_template("report.html.j2").render(r=report, fig=figures)
