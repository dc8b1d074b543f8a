"""Calibration: how well each negative tag and each decide rule agrees with labelled clips.

`videomill calibrate OUT --labels LABELS.csv` reads a finished run's clip manifest and a CSV of
labels a person wrote, and reports, per tag and per rule, the confusion (TP/FP/FN/TN),
precision and recall of what fired, and the threshold that would reach a target precision on
these clips. It is the measurement the CogVideoX team made on their 20k labelled clips, for a
user's own few hundred; thresholds and defaults (the stages' Config classes, listed in
curation/core/config.py) were chosen with it on the real development set (bench/realset.py,
tests/data/realset_labels.csv).

Labels CSV, one row per labelled clip or span (header required; `#` lines are comments):

    source,start_s,end_s,clip_id,verdict,must_fire,must_not_fire,reason
    vtest.avi,,,,accept,,,static camera; people walking
    Megamind_bugy.avi,1.3,3.3,,reject,incoherent_motion,,green macroblock glitch at 2.5 s

* source: the input's file name (or its full path/URL, as in the manifest's `source`).
* start_s, end_s (optional): the row labels the clips whose midpoint lies in [start_s, end_s);
  without them it labels every clip of the source. start_frame, end_frame (optional columns)
  do the same in frame indices, which do not move when timestamps are read differently.
  clip_id (optional) labels one clip exactly. When several rows match a clip, the most
  specific wins (clip_id, then a span, the shortest first).
* verdict: accept | reject. An accepted clip is a negative for every tag and rule.
* must_fire, must_not_fire: tag names (`low_quality`) or rule names (`motion_too_low`),
  separated by `;`. `*` in must_not_fire means every tag and rule but those in must_fire.
* reason: one line saying why (shown beside misses).

A tag is judged on the clips where the labels say it must or must not fire; clips whose label
says nothing about it are left out of its row. "fired" for a tag is score >= its threshold
(also when the tag is in `keep_tags`, so a tag-only tag still gets its precision); for a rule,
its name among the clip's `reject_reasons`. Precision is TP / (TP + FP); recall TP / (TP + FN);
both are null when their denominator is 0.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curation.core.config import RunConfig, from_dict
from curation.decisions.decide import resolve_rules
from curation.core.manifest import Layout, read_dataset, write_json_atomic
from curation.core.schema import NEG_TAGS, judge_column, neg_column

VERDICTS = ("accept", "reject")
CALIBRATION_FILE = "calibration.json"


@dataclass(frozen=True)
class Label:
    source: str
    verdict: str
    must_fire: frozenset[str]
    must_not_fire: frozenset[str]  # "*" stands for every other tag and rule
    reason: str = ""
    start_s: float | None = None
    end_s: float | None = None
    clip_id: str | None = None
    line: int = 0
    frames: bool = False  # the span is in frame indices (start_frame/end_frame), not seconds

    def matches(self, clip: dict) -> bool:
        if self.clip_id is not None:
            return clip["clip_id"] == self.clip_id
        src = str(clip["source"])
        if src != self.source and src.rsplit("/", 1)[-1] != self.source:
            return False
        if self.start_s is None and self.end_s is None:
            return True
        if self.frames:
            mid = (int(clip["start_frame"]) + int(clip["end_frame"]) - 1) / 2
        else:
            mid = (float(clip["start_s"]) + float(clip["end_s"])) / 2
        return (self.start_s is None or mid >= self.start_s) and (self.end_s is None or mid < self.end_s)

    def specificity(self) -> tuple[int, float]:
        if self.clip_id is not None:
            return (2, 0.0)
        if self.start_s is None and self.end_s is None:
            return (0, 0.0)
        return (1, -((self.end_s if self.end_s is not None else 1e12) - (self.start_s or 0.0)))

    def expects(self, name: str) -> bool | None:
        """True: `name` must fire on this clip; False: must not; None: the label does not say."""
        if name in self.must_fire:
            return True
        if self.verdict == "accept" or name in self.must_not_fire or "*" in self.must_not_fire:
            return False
        return None


def _names(cell: str | None) -> frozenset[str]:
    return frozenset(x.strip() for x in (cell or "").replace(",", ";").split(";") if x.strip())


def _float(cell: str | None, where: str) -> float | None:
    cell = (cell or "").strip()
    if not cell:
        return None
    try:
        return float(cell)
    except ValueError:
        raise ValueError(f"{where}: not a number: {cell!r}") from None


def read_labels(path: str | Path, known: set[str] | None = None) -> list[Label]:
    """Parse a labels CSV. Raises ValueError naming the file, line and field of a bad row
    (unknown verdict, unknown tag or rule name when `known` is given, a span with end <= start)."""
    path = Path(path)
    kept = [(n, line) for n, line in enumerate(path.read_text().splitlines(keepends=True), start=1) if not line.lstrip().startswith("#")]
    file_line = [n for n, _ in kept]  # line in the file of each line csv reads
    reader = csv.DictReader(io.StringIO("".join(line for _, line in kept)))
    need = {"source", "verdict"}
    if not reader.fieldnames or not need <= set(reader.fieldnames):
        raise ValueError(f"{path}: the header must name at least {sorted(need)}, got {reader.fieldnames}")
    labels = []
    for row in reader:
        i = file_line[reader.line_num - 1]
        where = f"{path}:{i}"
        verdict = (row.get("verdict") or "").strip().lower()
        if verdict not in VERDICTS:
            raise ValueError(f"{where}: verdict must be accept or reject, got {row.get('verdict')!r}")
        fire, not_fire = _names(row.get("must_fire")), _names(row.get("must_not_fire"))
        if known is not None:
            bad = (fire | not_fire) - known - {"*"}
            if bad:
                raise ValueError(f"{where}: unknown tag or rule {sorted(bad)}; known: {sorted(known)}")
        if verdict == "accept" and fire:
            raise ValueError(f"{where}: an accepted clip cannot have must_fire {sorted(fire)}")
        start, end = _float(row.get("start_s"), f"{where} start_s"), _float(row.get("end_s"), f"{where} end_s")
        f0, f1 = _float(row.get("start_frame"), f"{where} start_frame"), _float(row.get("end_frame"), f"{where} end_frame")
        frames = f0 is not None or f1 is not None
        if frames and (start is not None or end is not None):
            raise ValueError(f"{where}: give a span in seconds or in frames, not both")
        if frames:
            start, end = f0, f1
        if start is not None and end is not None and end <= start:
            raise ValueError(f"{where}: span end {end} <= start {start}")
        source = (row.get("source") or "").strip()
        clip_id = (row.get("clip_id") or "").strip() or None
        if not source and clip_id is None:
            raise ValueError(f"{where}: give a source or a clip_id")
        labels.append(Label(source, verdict, fire, not_fire, (row.get("reason") or "").strip(), start, end, clip_id, i, frames))
    return labels


def match_labels(clips: list[dict], labels: list[Label]) -> list[Label | None]:
    """The most specific label of each clip (None: unlabelled)."""
    out = []
    for c in clips:
        hits = [lb for lb in labels if lb.matches(c)]
        out.append(max(hits, key=Label.specificity) if hits else None)
    return out


@dataclass
class Row:
    """One tag's or rule's agreement with the labels."""

    name: str
    kind: str  # "tag" | "rule"
    column: str
    threshold: str  # how it fires now, e.g. ">= 0.5" or "< 0.005"
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    drops: bool = True  # False for a tag in keep_tags: it tags, it does not reject
    threshold_for_target: float | None = None
    recall_at_target: float | None = None
    misses: list[dict] = field(default_factory=list)

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "column": self.column, "threshold": self.threshold,
            "drops": self.drops, "tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn,
            "precision": self.precision, "recall": self.recall,
            "threshold_for_target": self.threshold_for_target, "recall_at_target": self.recall_at_target,
            "misses": self.misses,
        }


def threshold_for_precision(scores: np.ndarray, positive: np.ndarray, target: float, fire_below: bool = False) -> tuple[float | None, float | None]:
    """The threshold with the highest recall whose precision on these clips is >= target, and
    that recall; (None, None) when no threshold reaches it. A tag fires at score >= t; a
    min-rule (`fire_below`) rejects at value < t, so its candidates sit just above values."""
    ok = ~np.isnan(scores)
    s, y = scores[ok], positive[ok]
    if not y.any():
        return None, None
    if fire_below:
        s = -s
    best: tuple[float, float] | None = None
    for t in np.unique(s[y]):
        fired = s >= t
        tp = int((fired & y).sum())
        prec = tp / int(fired.sum())
        rec = tp / int(y.sum())
        if prec >= target and (best is None or rec > best[1] or (rec == best[1] and t > best[0])):
            best = (float(t), rec)
    if best is None:
        return None, None
    t, rec = best
    if fire_below:  # rejects value < t': the smallest bound above the positives' largest value
        t = float(np.nextafter(-t, np.inf))
    return t, rec


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


def calibrate(clips: pa.Table, labels: list[Label], cfg: RunConfig, target_precision: float = 0.9) -> dict[str, Any]:
    """Per tag and per rule agreement of a decided clip table with `labels` (see module doc)."""
    if not 0 < target_precision <= 1:
        raise ValueError(f"target_precision must be within (0, 1], got {target_precision}")
    rows_all = clips.to_pylist()
    matched = match_labels(rows_all, labels)
    pairs = [(c, lb) for c, lb in zip(rows_all, matched) if lb is not None and c.get("status") != "error"]
    rules = resolve_rules(clips, cfg.decide.rules) if clips.num_rows else []
    table: list[Row] = []

    def judge(row: Row, name: str, fired_of, value_of, fire_below: bool = False) -> None:
        vals, pos = [], []
        for c, lb in pairs:
            want = lb.expects(name)
            if want is None:
                continue
            fired = fired_of(c)
            vals.append(_num(value_of(c)))
            pos.append(want)
            if want and fired:
                row.tp += 1
            elif want:
                row.fn += 1
                row.misses.append({"clip_id": c["clip_id"], "miss": "did not fire", "value": value_of(c), "reason": lb.reason})
            elif fired:
                row.fp += 1
                row.misses.append({"clip_id": c["clip_id"], "miss": "fired", "value": value_of(c), "reason": lb.reason})
            else:
                row.tn += 1
        row.threshold_for_target, row.recall_at_target = threshold_for_precision(
            np.asarray(vals, np.float64), np.asarray(pos, bool), target_precision, fire_below
        )
        table.append(row)

    for tag in NEG_TAGS:
        col, thr = neg_column(tag), cfg.decide.tag_thresholds[tag]
        row = Row(tag, "tag", col, f">= {thr:g}", drops=tag not in cfg.decide.keep_tags)
        judge(row, tag, lambda c, col=col, thr=thr: c.get(col) is not None and c[col] >= thr, lambda c, col=col: c.get(col))
    for q in cfg.judge.questions if cfg.judge.enabled else ():  # VLM-judged tags, named vlm_<name> in labels and reasons
        col = judge_column(q.name)
        row = Row(col, "tag", col, f">= {q.threshold:g}", drops=q.name not in cfg.judge.keep)
        judge(row, col, lambda c, col=col, thr=q.threshold: c.get(col) is not None and c[col] >= thr, lambda c, col=col: c.get(col))
    for r in rules:
        bounds = " and ".join(b for b in (f"< {r.min:.4g}" if r.min is not None else "", f"> {r.max:.4g}" if r.max is not None else "") if b)
        row = Row(r.name, "rule", r.column, bounds or "none")
        fire_below = r.min is not None and r.max is None
        judge(row, r.name, lambda c, n=r.name: n in (c.get("reject_reasons") or []), lambda c, col=r.column: c.get(col),
              fire_below=fire_below)
        if r.min is not None and r.max is not None:  # a band has no single threshold to move
            row.threshold_for_target = row.recall_at_target = None

    verdict = {"accept->accepted": 0, "accept->rejected": 0, "reject->rejected": 0, "reject->accepted": 0, "reject->wrong_reason": 0}
    clip_rows = []
    for c, lb in pairs:
        got = "accepted" if c["status"] == "accepted" else "rejected"
        reasons = [x.removeprefix("neg:") for x in (c.get("reject_reasons") or [])]
        key = f"{lb.verdict}->{got}"
        if lb.verdict == "reject" and got == "rejected" and lb.must_fire and not (lb.must_fire & set(reasons)):
            key = "reject->wrong_reason"
        verdict[key] += 1
        clip_rows.append({
            "clip_id": c["clip_id"], "source": str(c["source"]).rsplit("/", 1)[-1], "span": [c["start_s"], c["end_s"]],
            "label": lb.verdict, "expected": sorted(lb.must_fire), "status": c["status"], "reasons": reasons,
            "tags": list(c.get("neg_tags") or []), "ok": key in ("accept->accepted", "reject->rejected"), "reason": lb.reason,
        })
    # A labelled source with no clip at all (every shot shorter than split.min_clip_s, or an
    # error row) contributed nothing to the data set: right for a defect, a loss for good footage.
    without = [lb for lb in labels if not any(lb is m for m in matched)]
    verdict["reject->no_clips"] = sum(1 for lb in without if lb.verdict == "reject")
    verdict["accept->no_clips"] = sum(1 for lb in without if lb.verdict == "accept")
    good = [c for c, lb in pairs if lb.verdict == "accept"]
    fire_on_good = {
        t: (sum(1 for c in good if t in (c.get("neg_tags") or [])) / len(good) if good else None) for t in NEG_TAGS
    }
    return {
        "target_precision": target_precision,
        "clips": len(rows_all),
        "labelled": len(pairs),
        "unlabelled": len(rows_all) - len(pairs),
        "labels_without_clips": [f"line {lb.line}: {lb.source or lb.clip_id} ({lb.verdict})" for lb in without],
        "rows": [r.as_dict() for r in table],
        "verdicts": verdict,
        "fire_rate_on_good": fire_on_good,
        "per_clip": clip_rows,
    }


def known_names(cfg: RunConfig) -> set[str]:
    judged = {judge_column(q.name) for q in cfg.judge.questions} if cfg.judge.enabled else set()
    return set(NEG_TAGS) | judged | {r.name for r in cfg.decide.rules}


def calibrate_run(out: str | Path, labels_path: str | Path, target_precision: float = 0.9) -> dict[str, Any]:
    """Calibrate the run in OUT against LABELS; writes OUT/calibration.json and returns it."""
    layout = Layout.at(out)
    if not layout.resolved_config.exists() or not layout.clip_manifest.exists():
        raise FileNotFoundError(f"{layout.root} has no manifest or config.resolved.json; run `videomill run` first")
    cfg = from_dict(json.loads(layout.resolved_config.read_text()))
    labels = read_labels(labels_path, known_names(cfg))
    clips = read_dataset(layout.clip_manifest)
    result = calibrate(clips, labels, cfg, target_precision)
    result["labels_file"] = str(labels_path)
    write_json_atomic(layout.root / CALIBRATION_FILE, result)
    return result


def _f(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def format_table(result: dict[str, Any]) -> str:
    """The calibration as a plain-text table (what `videomill calibrate` prints)."""
    tp = result["target_precision"]
    lines = [
        f"{result['labelled']} labelled clips of {result['clips']} ({result['unlabelled']} unlabelled); "
        f"threshold column: highest-recall threshold with precision >= {tp:g} on these clips",
        f"{'name':20s} {'kind':4s} {'fires at':>12s} {'TP':>4s} {'FP':>4s} {'FN':>4s} {'TN':>4s} {'prec':>5s} {'recall':>6s} "
        f"{'thr@P':>8s} {'rec@P':>6s}",
        "-" * 92,
    ]
    for r in result["rows"]:
        kind = r["kind"] + ("" if r["drops"] else "*")
        lines.append(
            f"{r['name']:20s} {kind:4s} {r['threshold']:>12s} {r['tp']:4d} {r['fp']:4d} {r['fn']:4d} {r['tn']:4d} "
            f"{_f(r['precision']):>5s} {_f(r['recall']):>6s} {_f(r['threshold_for_target'], '.4g'):>8s} {_f(r['recall_at_target']):>6s}"
        )
    lines.append("(* tag-only: in decide.keep_tags, it tags clips and does not reject them)")
    v = result["verdicts"]
    lines.append(
        f"verdicts: good accepted {v['accept->accepted']}, good rejected {v['accept->rejected']}; "
        f"defects rejected for a labelled reason {v['reject->rejected']}, for another reason {v['reject->wrong_reason']}, "
        f"defects accepted {v['reject->accepted']}; "
        f"labels with no clip: defects {v['reject->no_clips']}, good {v['accept->no_clips']}"
    )
    rates = ", ".join(f"{t} {x:.0%}" for t, x in result["fire_rate_on_good"].items() if x)
    lines.append(f"tags firing on good clips: {rates or 'none'}")
    bad = [c for c in result["per_clip"] if not c["ok"]]
    for c in bad:
        lines.append(
            f"  miss {c['clip_id']} ({c['source']} {c['span'][0]:.1f}-{c['span'][1]:.1f} s): label {c['label']}"
            f"{' ' + ','.join(c['expected']) if c['expected'] else ''}, got {c['status']} {','.join(c['reasons'])}  # {c['reason']}"
        )
    for x in result["labels_without_clips"]:
        lines.append(f"  label matched no clip: {x}")
    return "\n".join(lines)
