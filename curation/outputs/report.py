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

This module assembles the report; its tables (curation/outputs/report_tables.py) and figures
(curation/outputs/report_figures.py) sit below it and never import it.
"""

from __future__ import annotations

import json
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
from curation.outputs.report_tables import (
    PER_SHEET,
    captions,
    contact_sheets,
    count_list_values,
    duplicates,
    float_values,
    funnel,
    gallery,
    off,
    ranked,
    shards,
    summarize,
    value_counts,
)

REPORT_VERSION = 1
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


def _count(table: pa.Table, column: str, mask: pa.ChunkedArray) -> dict[str, int]:
    return dict(value_counts(table.filter(mask).column(column), null_as="(no reason given)").most_common())


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
