"""A run's bookkeeping: which sources are done, which lost their worker, and the counts said.

* Resume. A source is done when OUT's committed manifest parts hold its row (`settle`,
  curation/core/manifest.py): a rerun, or Prefect's retry of the scoring step, streams only
  the others, and its progress line starts from the done ones' counts. OUT records the scoring
  settings its scores were made under (`check_fingerprint`), so a rerun never mixes two.
* Worker death. Ray retries a block whose worker died WORKER_RETRIES times, then drops it. The
  sources it held run once more, each alone in a block, so one source that kills its worker
  cannot take its block-mates with it; those still missing become `worker_died` error rows,
  and the manifest accounts for every input.
* Counts. The scoring step's progress line (flows/progress.py) counts batches as they finish;
  at the end the manifest's truth replaces them (a batch Ray retried was counted twice). The
  run's funnel goes to summary.json, the log and a Prefect artifact.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
from prefect.artifacts import create_markdown_artifact

from curation.core.config import RunConfig
from curation.core.manifest import Layout, WriteParts, committed_parts, read_parts, settle, write_bytes_atomic, write_part
from curation.core.schema import SOURCE_ROW, analyzed_clip_schema, source_schema
from curation.core.stage import Stage
from curation.media.container import media_type, source_id
from curation.models.embeddings import embeddings_dir
from curation.outputs.report_tables import count_list_values, funnel as funnel_counts
from flows.logs import run_logger
from flows.preflight import check_scores, scores_conflict, scoring_fingerprint
from flows.progress import Live, Progress, count_model_scored, count_scored

# Ray's retries of a block whose worker died, before the flow retries its sources one by one.
WORKER_RETRIES = 2


def check_fingerprint(layout: Layout, cfg: RunConfig, rescore: bool) -> None:
    """Refuse to mix scores made under different settings in one OUT (unless --rescore, which
    discards the old ones); then record this run's scoring fingerprint."""
    if scores_conflict(layout, cfg):
        check_scores(layout, cfg, rescore)
        for d in (layout.sources, layout.scores, layout.clip_manifest, layout.clips, embeddings_dir(layout)):
            for p in d.glob("*"):
                if p.is_file():
                    p.unlink()
    write_bytes_atomic(layout.fingerprint_file, (scoring_fingerprint(cfg) + "\n").encode())


def stream_sources(
    stream: Callable[..., Iterator[pa.Table]], block_size: Callable[[int], int], sources: list[str], layout: Layout,
    cfg: RunConfig, stages: Sequence[Stage], clip: Sequence[Stage],
) -> dict:
    """Run `stream` over every source of `sources` that OUT does not hold complete yet, until
    each has its rows in the manifest: scored, or a `worker_died` error row. Says progress
    while it runs; returns the step's counts."""
    log = run_logger()
    done = settle(layout)
    todo = [s for s in sources if s not in done]
    log.info("%d sources already done, %d to score", len(sources) - len(todo), len(todo))
    writer = WriteParts(layout.root)
    rows, k = cfg.runtime.partition_size, block_size(len(todo))
    already = source_counts(layout, done & set(sources))
    with Progress("scoring", len(sources), log, model_stages=bool(clip), **already) as progress:
        live = {"live": Live(count_scored, progress.add), "live_models": Live(count_model_scored, progress.add_scored)}
        for _ in stream(todo, stages, clip, writer, rows_per_part=rows, sources_per_block=k, max_retries=WORKER_RETRIES, **live):
            pass
        done = settle(layout)
        missing = [s for s in todo if s not in done]
        if missing and k > 1:  # their blocks were dropped after Ray's retries: each alone in a block, once more
            log.warning("%d sources lost their worker; retrying each in a block of its own", len(missing))
            for _ in stream(missing, stages, clip, writer, rows_per_part=rows, sources_per_block=1, max_retries=WORKER_RETRIES, **live):
                pass
            done = settle(layout)
            missing = [s for s in missing if s not in done]
        if missing:
            log.error("%d sources killed their worker on every try: error rows (worker_died)", len(missing))
            write_part(layout, worker_died_rows(missing, (2 if k > 1 else 1) * (WORKER_RETRIES + 1)))
            done = settle(layout)
        final = source_counts(layout, done & set(sources))  # the manifest's truth (a retried batch counted twice)
        progress.set(**final)
    return {"sources": len(sources), "scored": len(todo), "clips": final["clips"] - already["clips"], "worker_died": len(missing)}


def worker_died_rows(sources: list[str], tries: int) -> pa.Table:
    """Error rows for sources whose worker died on every try (scoring stream row layout)."""
    heads = [
        {"source": s, "source_id": source_id(s), "media_type": media_type(s), "status": "error", "num_clips": 0,
         "error": f"the worker processing this source died on all {tries} tries (crash, out of memory or killed)",
         "error_code": "worker_died",
         "error_detail": f"Ray retried its block {WORKER_RETRIES} times (then, if it shared the block, "
                         "the flow ran it alone in a block of its own)"}
        for s in sources
    ]
    return pa.Table.from_pylist([{"source": h["source"], "media_type": h["media_type"], SOURCE_ROW: h} for h in heads],
                                schema=analyzed_clip_schema())


def source_counts(layout: Layout, sources: set[str]) -> dict[str, int]:
    """Of `sources` in OUT's manifest: how many, their clips, how many failed (progress counts)."""
    if not sources:
        return {"done": 0, "clips": 0, "failed": 0}
    t = read_parts(layout.sources, committed_parts(layout), source_schema(), columns=["source", "status", "num_clips"])
    t = t.filter(pc.is_in(t.column("source"), pa.array(sorted(sources), pa.string())))
    return {"done": t.num_rows, "clips": int(pc.sum(t.column("num_clips")).as_py() or 0),
            "failed": int(pc.sum(pc.equal(t.column("status"), "error")).as_py() or 0)}


def funnel(sources: pa.Table, clips: pa.Table) -> dict:
    """The report's funnel numbers plus rejections by reason: the run's summary."""
    return funnel_counts(sources, clips) | {"rejected_by_reason": dict(sorted(count_list_values(clips, "reject_reasons").items()))}


def publish_summary(summary: dict, dashboard: str | None) -> None:
    """The run's funnel as a Prefect markdown artifact (`prefect artifact ls`, the UI)."""
    lines = ["## videomill run", "", "| stage | count |", "|---|---|"]
    for key in ("inputs", "sources_ok", "sources_failed", "clips", "accepted", "rejected", "clip_errors", "sharded"):
        lines.append(f"| {key} | {summary[key]} |")
    lines += ["", "| rejected because | clips |", "|---|---|"]
    lines += [f"| {r} | {n} |" for r, n in summary["rejected_by_reason"].items()] or ["| (none) | 0 |"]
    lines += ["", f"- output: `{summary['out']}`", f"- manifest: `{summary['out']}/manifest`"]
    lines += [f"- shards: `{summary['out']}/shards`", f"- report: `{summary['report']}`"]
    if dashboard:
        lines.append(f"- Ray dashboard: [{dashboard}]({dashboard}) (token: `ray get-auth-token`)")
    create_markdown_artifact(key="videomill-run-summary", markdown="\n".join(lines), description="curation funnel")
