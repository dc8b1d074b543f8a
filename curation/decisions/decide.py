"""The decision step: scores in, verdicts out. Cheap, global, and separate from scoring.

It reads only manifest columns, so re-deciding with new thresholds (absolute or per-run
percentiles) never re-decodes a frame: `videomill decide OUT --config new.toml`.
Percentile bounds are computed over every scored clip of the run (status != error), as the
CogVideoX team tuned their filters on the distribution of the whole pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from curation.core.schema import NEG_TAGS, judge_column, neg_column

if TYPE_CHECKING:  # annotations only: the decisions layer does not import captioning
    from captioning.judge import JudgeConfig


@dataclass(frozen=True, kw_only=True)
class Rule:
    """Keep a clip only if `column` lies within [min, max].

    Bounds are absolute (`min`/`max`) or percentiles of this run's scored clips
    (`min_pct`/`max_pct`, 0-100), the "dynamic thresholds" CogVideoX tuned theirs with.
    A clip whose value is null passes a rule unless `drop_null` is set.
    """

    column: str
    name: str = ""
    min: float | None = None
    max: float | None = None
    min_pct: float | None = None
    max_pct: float | None = None
    drop_null: bool = False

    def __post_init__(self) -> None:
        if self.min is not None and self.min_pct is not None:
            raise ValueError(f"rule {self.column}: give min or min_pct, not both")
        if self.max is not None and self.max_pct is not None:
            raise ValueError(f"rule {self.column}: give max or max_pct, not both")
        for f in ("min_pct", "max_pct"):
            v = getattr(self, f)
            if v is not None and not 0 <= v <= 100:
                raise ValueError(f"rule {self.column}: {f} must be within 0-100, got {v}")
        if not self.name:
            object.__setattr__(self, "name", self.column)


@dataclass(frozen=True, kw_only=True)
class TagSignal:
    """A model signal for a negative tag: the tag also fires when `column` >= `at`.

    The combined rule (`decide` below): a tag fires when its heuristic score reaches its
    threshold OR any of its signals reaches its own; a null or absent signal never fires."""

    tag: str
    column: str
    at: float

    def __post_init__(self) -> None:
        if self.tag not in NEG_TAGS:
            raise ValueError(f"decide.tag_signals: unknown tag {self.tag!r}; known: {list(NEG_TAGS)}")


def _default_tag_signals() -> tuple[TagSignal, ...]:
    # OCR text area of a slide of text: 0.37-0.65 of the frame; natural photographs: 0
    # (tests/curation/test_model_scoring.py); a line of subtitles ~0.03-0.08 must not fire.
    # CLIP zero-shot scores (zs_*) are not a default signal: add them per run once measured.
    return (TagSignal(tag="text_dominated", column="ocr_text_area", at=0.2),)


def _default_tag_thresholds() -> dict[str, float]:
    return {t: 0.5 for t in NEG_TAGS}


def _default_rules() -> tuple[Rule, ...]:
    return (
        Rule(column="motion_score", name="motion_too_low", min=0.005),
        Rule(column="motion_score", name="motion_too_high", max=1.5),
    )


@dataclass(frozen=True, kw_only=True)
class DecideConfig:
    # A negative tag fires when its score >= threshold; a fired tag rejects the clip
    # unless the tag is listed in `keep_tags` (tagged, not dropped).
    tag_thresholds: dict[str, float] = field(default_factory=_default_tag_thresholds)
    keep_tags: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = field(default_factory=_default_rules)
    tag_signals: tuple[TagSignal, ...] = field(default_factory=_default_tag_signals)
    drop_duplicates: bool = True  # a near-duplicate (dup_of set, curation/decisions/dedup.py) is rejected
    keep_probe_tags: tuple[str, ...] = ()  # tag-probe tags that tag a clip without rejecting it

    def __post_init__(self) -> None:
        unknown = set(self.tag_thresholds) - set(NEG_TAGS)
        if unknown:
            raise ValueError(f"decide.tag_thresholds: unknown tags {sorted(unknown)}; known: {list(NEG_TAGS)}")
        object.__setattr__(self, "tag_thresholds", {**_default_tag_thresholds(), **self.tag_thresholds})
        bad = set(self.keep_tags) - set(NEG_TAGS)
        if bad:
            raise ValueError(f"decide.keep_tags: unknown tags {sorted(bad)}")
        tag_cols = {neg_column(t) for t in NEG_TAGS}
        for r in self.rules:
            if r.column in tag_cols:
                raise ValueError(f"decide.rules: use decide.tag_thresholds for {r.column}")


DUPLICATE = "duplicate"  # the reject reason of a near-duplicate; its kept clip is in `dup_of`


@dataclass(frozen=True)
class ResolvedRule:
    name: str
    column: str
    min: float | None
    max: float | None
    drop_null: bool


def _values(table: pa.Table, column: str) -> np.ndarray:
    if column not in table.column_names:
        raise ValueError(f"decide: rule column {column!r} is not in the manifest")
    return np.asarray(table.column(column).to_numpy(zero_copy_only=False), dtype=np.float64)


def _errored(table: pa.Table) -> np.ndarray:
    return np.asarray(table.column("error").is_valid(), dtype=bool)


def resolve_rules(table: pa.Table, rules: tuple[Rule, ...]) -> list[ResolvedRule]:
    """Turn percentile bounds into numbers for this run's clips (those without an error)."""
    scored = ~_errored(table)
    out = []
    for r in rules:
        vals = _values(table, r.column)[scored]
        vals = vals[~np.isnan(vals)]
        lo, hi = r.min, r.max
        if r.min_pct is not None:
            lo = float(np.percentile(vals, r.min_pct)) if vals.size else None
        if r.max_pct is not None:
            hi = float(np.percentile(vals, r.max_pct)) if vals.size else None
        out.append(ResolvedRule(r.name, r.column, lo, hi, r.drop_null))
    return out


def decide(table: pa.Table, cfg: DecideConfig, judge: JudgeConfig | None = None) -> tuple[pa.Table, list[ResolvedRule]]:
    """Set `neg_tags`, `status` and `reject_reasons` on a table of scored clips.

    A clip with an `error` keeps status `error`; the others are `accepted` when no fired tag
    (outside `keep_tags`), no rule, no probe tag (outside `keep_probe_tags`) and no duplicate
    verdict (`dup_of`, with `drop_duplicates`) rejects them. A negative tag fires when its
    heuristic score, any of its `tag_signals` (OCR, CLIP zero-shot) or the tag probe says so;
    probe tags outside the six are listed in `neg_tags` too and reject as `probe:<tag>`. With
    `judge` enabled, a VLM-judged tag fires when its `vlm_<name>` score reaches the question's
    threshold: listed in `neg_tags` as `vlm_<name>`, rejecting as `vlm_<name>` unless kept (a
    clip not judged yet, null, passes: the judge runs on the clips this decision accepts)."""
    n = table.num_rows
    errored = _errored(table)
    table = table.drop_columns([c for c in ("neg_tags", "status", "reject_reasons") if c in table.column_names])

    tags: list[list[str]] = [[] for _ in range(n)]
    reasons: list[list[str]] = [[] for _ in range(n)]
    probe = table.column("probe_tags").to_pylist() if "probe_tags" in table.column_names else [None] * n
    for tag in NEG_TAGS:
        vals = _values(table, neg_column(tag))
        hit = np.nan_to_num(vals, nan=-1.0) >= cfg.tag_thresholds[tag]
        # Combined rule: heuristic OR any model signal (decide.tag_signals) OR the tag probe.
        for sig in cfg.tag_signals:
            if sig.tag == tag and sig.column in table.column_names:
                hit |= np.nan_to_num(_values(table, sig.column), nan=-np.inf) >= sig.at
        hit |= np.array([tag in (p or ()) for p in probe], bool)
        fired = np.flatnonzero(hit)
        for i in fired:
            tags[i].append(tag)
            if tag not in cfg.keep_tags:
                reasons[i].append(f"neg:{tag}")
    resolved = resolve_rules(table, cfg.rules)
    for r in resolved:
        vals = _values(table, r.column)
        null = np.isnan(vals)
        fail = np.zeros(n, bool)
        with np.errstate(invalid="ignore"):
            if r.min is not None:
                fail |= vals < r.min
            if r.max is not None:
                fail |= vals > r.max
        fail = np.where(null, r.drop_null, fail)
        for i in np.flatnonzero(fail):
            reasons[i].append(r.name)

    for i, p in enumerate(probe):  # probe tags that are not one of the six reject by name
        for tag in p or ():
            if tag not in NEG_TAGS:
                tags[i].append(tag)
                if tag not in cfg.keep_probe_tags:
                    reasons[i].append(f"probe:{tag}")
    for i, (t, r) in enumerate(judge_verdicts(table, judge)):
        tags[i] += t
        reasons[i] += r
    if cfg.drop_duplicates and "dup_of" in table.column_names:  # one reason; the kept twin is in `dup_of`
        for i, twin in enumerate(table.column("dup_of").to_pylist()):
            if twin is not None:
                reasons[i].append(DUPLICATE)

    status = ["error" if e else ("rejected" if rs else "accepted") for e, rs in zip(errored, reasons)]
    table = table.append_column("neg_tags", pa.array([[] if e else t for e, t in zip(errored, tags)], pa.list_(pa.string())))
    table = table.append_column("status", pa.array(status, pa.string()))
    table = table.append_column("reject_reasons", pa.array([[] if e else r for e, r in zip(errored, reasons)], pa.list_(pa.string())))
    return table, resolved


def judge_verdicts(table: pa.Table, judge: JudgeConfig | None) -> list[tuple[list[str], list[str]]]:
    """Per row, the VLM-judged tags that fire (`vlm_<name>` >= the question's threshold) and
    those of them that reject (not in `judge.keep`). Null (not judged) fires nothing."""
    out: list[tuple[list[str], list[str]]] = [([], []) for _ in range(table.num_rows)]
    if judge is None or not judge.enabled:
        return out
    for q in judge.questions:
        col = judge_column(q.name)
        if col not in table.column_names:
            continue
        for i in np.flatnonzero(np.nan_to_num(_values(table, col), nan=-1.0) >= q.threshold):
            out[i][0].append(col)
            if q.name not in judge.keep:
                out[i][1].append(col)
    return out


def apply_judge(table: pa.Table, judge: JudgeConfig | None) -> pa.Table:
    """A decided table with its judge answers (`vlm_*`) applied: the tags that fire added to
    `neg_tags`, the rejecting ones to `reject_reasons`, an accepted clip they reject now
    `rejected`. Equal to `decide` with the judge on the same table (the judge moves no other
    verdict: percentiles are over every clip without an error, whatever its status), so the
    flow can decide before the judge has answered and apply its answers after."""
    verdicts = judge_verdicts(table, judge)
    if not any(t for t, _ in verdicts):
        return table
    errored = _errored(table)
    tags, status, reasons = (table.column(c).to_pylist() for c in ("neg_tags", "status", "reject_reasons"))
    for i, (t, r) in enumerate(verdicts):
        if errored[i]:
            continue
        tags[i] = list(tags[i] or []) + [x for x in t if x not in (tags[i] or [])]
        reasons[i] = list(reasons[i] or []) + [x for x in r if x not in (reasons[i] or [])]
        if reasons[i] and status[i] == "accepted":
            status[i] = "rejected"
    for name, values in (("neg_tags", pa.array(tags, pa.list_(pa.string()))), ("status", pa.array(status, pa.string())),
                         ("reject_reasons", pa.array(reasons, pa.list_(pa.string())))):
        table = table.set_column(table.schema.get_field_index(name), name, values)
    return table
