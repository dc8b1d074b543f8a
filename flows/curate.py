"""The curation flow: ingest -> score (one streaming pipeline) -> decide -> extract -> shards -> report.

Scoring is ONE streaming pipeline over every source still to do (flows/run_ray.py): probe,
split into clip rows, the clip-level model stages (flows/stages.py), and a writer that turns
each batch of clip rows into a manifest part, the unit of resume (curation/core/manifest.py).
Prefect tasks stay coarse: the streaming scoring step and each global step (decide, extract,
shards, report), retried as wholes; a retried or rerun scoring step skips complete sources.
`runtime.executor = "local"` runs the same stages in-process. What the run keeps account of
(sources done, workers lost, progress and funnel counts) is flows/bookkeeping.py's.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
from prefect import flow, task
from prefect.cache_policies import NONE as NO_CACHE

from curation.core.config import RunConfig, to_dict
from curation.decisions.decide import decide
from curation.decisions.global_scores import add_global_scores
from curation.models.model_scoring import TINY_WARNING, model_metadata
from curation.models.score_clip import TINY_MODEL
from curation.outputs.extract_clips import EXTRACT_INPUT, ExtractClips, prune_clips, remove_temporaries
from curation.core.manifest import Layout, conform, lookup, read_dataset, read_scores, read_sources, write_json_atomic, write_table_atomic
from curation.outputs.report import write_report
from curation.core.schema import clip_schema
from curation.core.stage import Stage, warn_once
from curation.outputs.write_shards import write_shards
from flows.bookkeeping import WORKER_RETRIES, check_fingerprint, funnel, publish_summary, stream_sources
from flows.logs import run_logger
from flows.progress import Live, Progress, count_extracted
from flows.preflight import (
    ONLY_AFTER_SCORING,
    ConfigError,
    check_inputs,
    check_out,
    check_scores,
    config_for_out,
    existing_run,
    run_config,
)
from flows.run_local import run_local, stream_local
from flows.stages import check_clip_stages, clip_stages, source_stages

Runner = Callable[[Sequence[Stage], pa.Table], pa.Table]


def get_runner(cfg: RunConfig) -> Runner:
    if cfg.runtime.executor == "local":
        return run_local
    from flows.run_ray import run_ray

    return run_ray


def get_streamer(cfg: RunConfig) -> tuple[Callable[..., Iterator[pa.Table]], Callable[[int], int]]:
    """(the scoring stream, its sources-per-block rule) of the configured executor."""
    if cfg.runtime.executor == "local":
        from flows.run_local import sources_per_block

        return stream_local, sources_per_block
    from flows.run_ray import sources_per_block, stream_ray

    return stream_ray, sources_per_block


def score_sources(
    sources: list[str], layout: Layout, cfg: RunConfig, extra_source_stages: Sequence[Stage] = (),
    stages: Sequence[Stage] | None = None,
) -> dict:
    """Score every source of `sources` that OUT does not hold complete yet, in one stream.

    `extra_source_stages` run after the analysis, as source stages (tasks) on its clip rows:
    tests use them to inject faults into the real pipeline. `stages` replaces probe and
    analysis (bench/scale_sim.py's fixed-cost stub); it must emit analyzed_clip_schema rows."""
    clip = clip_stages(cfg)
    check_clip_stages(clip)
    stages = [*(source_stages(cfg, clip) if stages is None else stages), *extra_source_stages]
    stream, block_size = get_streamer(cfg)
    return stream_sources(stream, block_size, sources, layout, cfg, stages, clip)


@task(name="score", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def score_step(sources: list[str], out: str, cfg: RunConfig) -> dict:
    """The streaming scoring step; a retry (or a rerun) scores only incomplete sources."""
    return score_sources(sources, Layout.at(out), cfg)


@task(name="decide", cache_policy=NO_CACHE)
def decide_step(out: str, cfg: RunConfig) -> pa.Table:
    layout = Layout.at(out)
    scored = read_scores(layout).sort_by("clip_id")
    # Global steps before decide (near-duplicates, tag probe): from the stored embeddings.
    scored, _ = add_global_scores(layout, scored, cfg)
    decided, resolved = decide(scored, cfg.decide)
    for r in resolved:
        run_logger().info("rule %s on %s: keep within [%s, %s]", r.name, r.column, r.min, r.max)
    return decided


def extract_input(decided: pa.Table) -> pa.Table:
    """Accepted clips grouped per source (EXTRACT_INPUT), in Arrow: one row per source."""
    acc = decided.filter(pc.equal(decided.column("status"), "accepted"))
    if not acc.num_rows:
        return EXTRACT_INPUT.empty_table()
    item = EXTRACT_INPUT.field("clips").type.value_type
    acc = acc.sort_by([("source", "ascending"), ("start_s", "ascending")])
    spans = pa.StructArray.from_arrays([acc.column(f.name).combine_chunks().cast(f.type) for f in item], fields=list(item))
    # Sorted by source: each source is one run; its run ends are the list offsets.
    runs = pc.run_end_encode(acc.column("source").combine_chunks())
    ends = runs.run_ends.cast(pa.int32())
    starts = pa.concat_arrays([pa.array([0], pa.int32()), ends[:-1]])
    clips = pa.ListArray.from_arrays(pa.concat_arrays([starts, ends[-1:]]), spans)
    media = pc.take(acc.column("media_type"), starts)
    return pa.table({"source": runs.values, "media_type": media, "clips": clips}).cast(EXTRACT_INPUT)


@task(name="extract-clips", retries=1, cache_policy=NO_CACHE)
def extract_step(decided: pa.Table, out: str, cfg: RunConfig) -> pa.Table:
    """Write accepted clips, one task per source on the cluster; (clip_id, clip_path, error) each.
    With captions on, the same stream judges and captions them as they come (flows/captions.py)."""
    layout = Layout.at(out)
    if removed := remove_temporaries(layout.clips):
        run_logger().info("extraction: removed %d partial clip files a killed run left", removed)
    if cfg.caption.enabled:
        from flows.captions import extract_and_caption

        n = int(pc.sum(pc.equal(decided.column("status"), "accepted")).as_py() or 0)
        with Progress("extraction and captioning", n, run_logger(), unit="clips") as progress:
            extracted, counts = extract_and_caption(decided, layout, cfg, max_retries=WORKER_RETRIES, progress=progress.add)
            progress.set(extracted.num_rows, counts["captioned"], pc.sum(pc.is_valid(extracted.column("error"))).as_py() or 0)
        run_logger().info("captions: %s", counts)
        return extracted
    stage = ExtractClips(cfg.extract, str(layout.clips), stall_timeout_s=cfg.decode.stall_timeout_s)
    table = extract_input(decided)
    n = (pc.sum(pc.list_value_length(table.column("clips"))).as_py() or 0) if table.num_rows else 0
    with Progress("extraction", n, run_logger(), unit="clips") as progress:
        out = get_runner(cfg)([stage], table, live=Live(count_extracted, progress.add))
        progress.set(*count_extracted(out))
    return out


def join_extraction(decided: pa.Table, extracted: pa.Table, out: str) -> pa.Table:
    """Join extraction results into the decision, in Arrow. A failed extraction makes the
    clip `error` (`extract`); an accepted clip with no result at all (its worker died on
    every retry) is `error` (`worker_died`). clip_path is relative to OUT."""
    res = extracted.select(["clip_id", "clip_path", "error"]).rename_columns(["clip_id", "_path", "_error"])
    hit = lookup(decided.column("clip_id"), res, "clip_id")
    j = decided.drop_columns([c for c in ("clip_path",) if c in decided.column_names])
    j = j.append_column("_path", hit.column("_path")).append_column("_error", hit.column("_error"))
    accepted = pc.equal(j.column("status"), "accepted")
    failed = pc.is_valid(j.column("_error"))
    lost = pc.and_(accepted, pc.and_(pc.is_null(j.column("_path")), pc.invert(failed)))
    bad = pc.or_(failed, lost)
    cols = {
        "status": pc.if_else(bad, pa.scalar("error"), j.column("status")),
        "error": pc.if_else(failed, j.column("_error"),
                            pc.if_else(lost, pa.scalar("extraction never finished: its worker died on every retry"), j.column("error"))),
        "error_code": pc.if_else(failed, pa.scalar("extract"), pc.if_else(lost, pa.scalar("worker_died"), j.column("error_code"))),
        "clip_path": pc.if_else(bad, pa.scalar(None, pa.string()), pc.replace_substring_regex(j.column("_path"), r"^.*/", "clips/")),
    }
    for name, arr in cols.items():
        i = j.schema.get_field_index(name)
        j = j.set_column(i, name, arr) if i >= 0 else j.append_column(name, arr)
    return conform(j, clip_schema()).sort_by("clip_id")


@task(name="caption", retries=1, cache_policy=NO_CACHE)
def caption_step(clips: pa.Table, out: str, cfg: RunConfig) -> pa.Table:
    """Captions (made by extract_step's stream) joined into the clips; with the judge on, its
    answers applied first: the clips they newly reject leave OUT/clips (flows/captions.py)."""
    if not cfg.caption.enabled:
        return clips
    from flows.captions import finish_captions

    return finish_captions(clips, Layout.at(out), cfg)


def warn_untrained(cfg: RunConfig) -> None:
    """A run's UNTRAINED warnings, said once, here in the driver at the start (console and the
    Prefect run's logs): the stages that load those models run in Ray workers, whose logs stay
    in Ray's log files (and in-process, warn_once keeps them from saying it twice)."""
    from captioning.tiny import WARNING as TINY_CAPTION_WARNING
    from captioning.tiny import is_tiny

    say = run_logger().warning
    if cfg.models.enabled and cfg.models.clip == TINY_MODEL:
        warn_once(TINY_WARNING, say)
    if cfg.caption.enabled and is_tiny(cfg.caption.model):
        warn_once(TINY_CAPTION_WARNING, say)


def check_models(cfg: RunConfig, scoring: bool = True) -> None:
    """Before any work: every model named, the missing ones fetched; offline, or a model or
    server that cannot be had, stops the run in one line (flows/models.py)."""
    from curation.models.hub import MissingModel
    from flows.models import check_services, prepare_models

    try:
        prepare_models(cfg, scoring, say=run_logger().info)
        check_services(cfg)
    except MissingModel as e:
        raise ConfigError(str(e)) from None


@task(name="write-shards", retries=1, cache_policy=NO_CACHE)
def shard_step(clips: pa.Table, out: str, cfg: RunConfig) -> pa.Table:
    """Accepted clips into WebDataset shards; the manifest learns each clip's shard."""
    map_fn = None
    if cfg.runtime.executor == "ray":
        import ray

        from flows.run_ray import map_tasks

        # Within a run: shards written in parallel on its cluster, the index merged after.
        # (`videomill shard` starts no cluster: it writes them one by one here.)
        map_fn = map_tasks if ray.is_initialized() else None
    clips, index = write_shards(clips, Layout.at(out), cfg.shard, extract=cfg.extract, map_fn=map_fn)
    run_logger().info("shards: %s", index["totals"])
    return clips


@task(name="report", cache_policy=NO_CACHE)
def report_step(out: str) -> str:
    write_report(out)
    return str(Layout.at(out).root / "report.html")


@flow(name="curate", log_prints=True)
def curate(
    inputs: list[str],
    out: str,
    config: str | None = None,
    profile: str | None = None,
    ray_address: str | None = None,
    executor: str | None = None,
    rescore: bool = False,
) -> dict:
    """Curate INPUTs into OUT: manifest, clips and the resolved config."""
    overrides: dict = {"runtime": {}}
    if ray_address:
        overrides["runtime"]["ray_address"] = ray_address
    if executor:
        overrides["runtime"]["executor"] = executor
    cfg = run_config(config, profile, overrides)
    sources = check_inputs(list(inputs))
    layout = check_out(out, inputs)
    check_scores(layout, cfg, rescore)
    check_models(cfg)
    warn_untrained(cfg)
    layout.make()
    check_fingerprint(layout, cfg, rescore)
    write_json_atomic(layout.resolved_config, to_dict(cfg))
    log = run_logger()
    log.info("%d inputs -> %s (profile %s, executor %s)", len(sources), layout.root, cfg.profile, cfg.runtime.executor)

    with _compute(cfg) as dashboard:
        score_step.with_options(timeout_seconds=cfg.runtime.task_timeout_s)(sources, str(layout.root), cfg)
        summary = _decide_and_extract(layout, cfg)
    publish_summary(summary, dashboard)
    return summary


def _decide_and_extract(layout: Layout, cfg: RunConfig) -> dict:
    """The global tail of a run: decide, extract, shard, manifest, summary, report."""
    from flows.captions import with_stored_judge

    out = str(layout.root)
    decided = with_stored_judge(decide_step(out, cfg), layout, cfg)  # stored judge answers: their verdicts before extraction
    extracted = extract_step.with_options(timeout_seconds=cfg.runtime.task_timeout_s)(decided, out, cfg)
    clips = caption_step(join_extraction(decided, extracted, out), out, cfg)
    clips = shard_step(clips, out, cfg)
    clips = clips.replace_schema_metadata({**(clips.schema.metadata or {}), **model_metadata(cfg)})
    write_table_atomic(clips, layout.clip_manifest / "clips.parquet")
    if removed := prune_clips(layout.clips, accepted_files(clips)):
        run_logger().info("clips: removed %d file(s) of clips that are no longer accepted", removed)
    return _summarize(layout, clips)


def accepted_files(clips: pa.Table) -> set[str]:
    """File names (in OUT/clips) of the accepted clips."""
    acc = clips.filter(pc.and_(pc.equal(clips.column("status"), "accepted"), pc.is_valid(clips.column("clip_path"))))
    return {p.rsplit("/", 1)[-1] for p in acc.column("clip_path").to_pylist()}


def _summarize(layout: Layout, clips: pa.Table) -> dict:
    summary = funnel(read_sources(layout), clips) | {"out": str(layout.root)}
    write_json_atomic(layout.root / "summary.json", summary)
    summary["report"] = report_step(str(layout.root))
    run_logger().info("funnel: %s", summary)
    return summary


@flow(name="decide", log_prints=True)
def redecide(out: str, config: str | None = None, profile: str | None = None, executor: str | None = None) -> dict:
    """Re-apply thresholds to OUT's stored scores (no decoding), then extract newly accepted
    clips, reshard and report. Without --config/--profile it uses OUT's resolved config."""
    overrides = {"runtime": {"executor": executor}} if executor else None
    layout, cfg = config_for_out(out, config, profile, overrides)
    check_scores(layout, cfg, fix=ONLY_AFTER_SCORING)
    check_models(cfg, scoring=False)  # decide reads stored scores and embeddings: captions only
    warn_untrained(cfg)
    write_json_atomic(layout.resolved_config, to_dict(cfg))
    with _compute(cfg) as dashboard:
        summary = _decide_and_extract(layout, cfg)
    publish_summary(summary, dashboard)
    return summary


@flow(name="shard", log_prints=True)
def shard(out: str, config: str | None = None, profile: str | None = None) -> dict:
    """(Re)write OUT's WebDataset shards from its manifest, e.g. after changing [shard]."""
    layout, cfg = config_for_out(out, config, profile)
    check_scores(layout, cfg, fix=ONLY_AFTER_SCORING)
    write_json_atomic(layout.resolved_config, to_dict(cfg))
    clips = read_dataset(layout.clip_manifest, clip_schema())
    clips = shard_step(clips, str(layout.root), cfg)
    write_table_atomic(clips, layout.clip_manifest / "clips.parquet")
    return _summarize(layout, clips)


@flow(name="report", log_prints=True)
def report(out: str) -> str:
    """Write OUT/report.html and OUT/report.json from OUT's manifest."""
    existing_run(out)
    return report_step(out)


def _compute(cfg: RunConfig):
    if cfg.runtime.executor == "local":
        from contextlib import nullcontext

        return nullcontext(None)
    from flows.run_ray import ray_session

    return ray_session(cfg.runtime.ray_address, cfg.runtime.num_cpus, cfg.runtime.dashboard)
