"""The curation flow: ingest -> split & score (per partition) -> decide -> extract -> manifest.

Prefect tasks are coarse: one per partition of sources (retried; its Parquet part is its
completion marker, so a rerun skips it) and one per global step. Per-source and per-clip
parallelism is Ray Data's (flows/run_ray.py), or in-process with `runtime.executor = "local"`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE as NO_CACHE

from curation.analyze import SplitAndScore
from curation.config import RunConfig, load_config, merge_dicts, to_dict
from curation.decide import decide
from curation.extract_clips import EXTRACT_INPUT, ExtractClips
from curation.inputs import expand_inputs
from curation.manifest import (
    Layout,
    fingerprint,
    partition_id,
    read_dataset,
    write_bytes_atomic,
    write_json_atomic,
    write_table_atomic,
)
from curation.probe import ProbeSources
from curation.report import count_list_values, write_report
from curation.report import funnel as funnel_counts
from curation.schema import clip_schema, scored_clip_schema, source_schema
from curation.stage import Stage
from curation.write_shards import write_shards
from flows.logs import run_logger
from flows.run_local import run_local

Runner = Callable[[Sequence[Stage], pa.Table], pa.Table]


class ConfigError(ValueError):
    """Bad configuration or arguments: the run stops before doing any work."""


def get_runner(cfg: RunConfig) -> Runner:
    if cfg.runtime.executor == "local":
        return run_local
    from flows.run_ray import run_ray

    return run_ray


def scoring_fingerprint(cfg: RunConfig) -> str:
    d = to_dict(cfg)
    return fingerprint({k: d[k] for k in ("decode", "split", "motion", "tags", "extract")})


def check_fingerprint(layout: Layout, cfg: RunConfig, rescore: bool) -> None:
    """Refuse to mix scores made under different settings in one OUT (unless --rescore)."""
    fp = scoring_fingerprint(cfg)
    f = layout.fingerprint_file
    old = f.read_text().strip() if f.exists() else None
    if old is not None and old != fp:
        if not rescore:
            raise ConfigError(
                f"{layout.root} holds scores made with different decode/split/motion/tags/extract "
                "settings; use a new --out, or --rescore to discard them"
            )
        for d in (layout.sources, layout.scores, layout.clip_manifest, layout.clips):
            for p in d.glob("*"):
                if p.is_file():
                    p.unlink()
    write_bytes_atomic(f, (fp + "\n").encode())


@task(name="split-and-score", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def score_partition(sources: list[str], out: str, cfg: RunConfig) -> dict:
    """Probe, split and score one partition; write its scores, then its sources part."""
    layout = Layout.at(out)
    pid = partition_id(sources)
    marker = layout.sources / f"part-{pid}.parquet"
    if marker.exists():
        return {"partition": pid, "skipped": True}
    t0 = time.perf_counter()
    analyzed = get_runner(cfg)([ProbeSources(cfg), SplitAndScore(cfg)], pa.table({"source": sources}))
    analyzed = analyzed.sort_by("source")
    clips = pa.Table.from_batches([], schema=scored_clip_schema())
    if analyzed.num_rows:
        flat = pc.list_flatten(analyzed.column("clips"))
        if len(flat):
            clips = pa.Table.from_struct_array(flat).cast(scored_clip_schema()).sort_by("clip_id")
    if analyzed.num_rows != len(sources):
        raise RuntimeError(f"partition {pid}: {len(sources)} sources in, {analyzed.num_rows} rows out")
    write_table_atomic(clips, layout.scores / f"part-{pid}.parquet")
    write_table_atomic(analyzed.drop_columns(["clips"]).cast(source_schema()), marker)
    errors = pc.sum(pc.equal(analyzed.column("status"), "error")).as_py() or 0
    run_logger().info(
        "partition %s: %d sources (%d failed), %d clips in %.1fs", pid, len(sources), errors, clips.num_rows, time.perf_counter() - t0
    )
    return {"partition": pid, "skipped": False, "sources": len(sources), "clips": clips.num_rows}


@task(name="decide", cache_policy=NO_CACHE)
def decide_step(out: str, cfg: RunConfig) -> pa.Table:
    layout = Layout.at(out)
    scored = read_dataset(layout.scores, scored_clip_schema()).sort_by("clip_id")
    decided, resolved = decide(scored, cfg.decide)
    for r in resolved:
        run_logger().info("rule %s on %s: keep within [%s, %s]", r.name, r.column, r.min, r.max)
    return decided


@task(name="extract-clips", retries=1, cache_policy=NO_CACHE)
def extract_step(decided: pa.Table, out: str, cfg: RunConfig) -> pa.Table:
    """Write accepted clips; return (clip_id, clip_path, error) for each."""
    layout = Layout.at(out)
    accepted = decided.filter(pc.equal(decided.column("status"), "accepted"))
    by_source: dict[str, dict] = {}
    for r in accepted.select(["source", "media_type", "clip_id", "start_s", "end_s", "fps"]).to_pylist():
        entry = by_source.setdefault(r["source"], {"source": r["source"], "media_type": r["media_type"], "clips": []})
        entry["clips"].append({k: r[k] for k in ("clip_id", "start_s", "end_s", "fps")})
    table = pa.Table.from_pylist(list(by_source.values()), schema=EXTRACT_INPUT)
    return get_runner(cfg)([ExtractClips(cfg.extract, str(layout.clips))], table)


def join_extraction(decided: pa.Table, extracted: pa.Table, out: str) -> pa.Table:
    """Join extraction results into the decision; a failed extraction makes the clip `error`."""
    layout = Layout.at(out)
    results = {r["clip_id"]: r for r in extracted.to_pylist()}
    rows = decided.to_pylist()
    for row in rows:
        res = results.get(row["clip_id"])
        row["clip_path"] = None
        if res is None:
            continue
        if res["error"]:
            row.update(status="error", error=res["error"], error_code="extract")
        else:
            row["clip_path"] = str(Path(res["clip_path"]).relative_to(layout.root))
    return pa.Table.from_pylist(rows, schema=clip_schema()) if rows else clip_schema().empty_table()


@task(name="write-shards", retries=1, cache_policy=NO_CACHE)
def shard_step(clips: pa.Table, out: str, cfg: RunConfig) -> pa.Table:
    """Accepted clips into WebDataset shards; the manifest learns each clip's shard."""
    clips, index = write_shards(clips, Layout.at(out), cfg.shard, extract=cfg.extract)
    run_logger().info("shards: %s", index["totals"])
    return clips


@task(name="report", cache_policy=NO_CACHE)
def report_step(out: str) -> str:
    write_report(out)
    return str(Layout.at(out).root / "report.html")


def funnel(sources: pa.Table, clips: pa.Table) -> dict:
    """The report's funnel numbers plus rejections by reason: the run's summary."""
    return funnel_counts(sources, clips) | {"rejected_by_reason": dict(sorted(count_list_values(clips, "reject_reasons").items()))}


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
    try:
        cfg = load_config(config, profile, overrides)
        sources = expand_inputs(list(inputs))
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None
    layout = Layout.at(out)
    layout.make()
    check_fingerprint(layout, cfg, rescore)
    write_json_atomic(layout.resolved_config, to_dict(cfg))
    log = run_logger()
    log.info("%d inputs -> %s (profile %s, executor %s)", len(sources), layout.root, cfg.profile, cfg.runtime.executor)

    done = set(read_dataset(layout.sources, source_schema()).column("source").to_pylist())
    todo = [s for s in sources if s not in done]
    size = cfg.runtime.partition_size
    partitions = [todo[i : i + size] for i in range(0, len(todo), size)]
    log.info("%d sources already done, %d to score in %d partitions", len(sources) - len(todo), len(todo), len(partitions))

    with _compute(cfg) as dashboard:
        scorer = score_partition.with_options(timeout_seconds=cfg.runtime.task_timeout_s)
        for part in partitions:
            scorer(part, str(layout.root), cfg)
        summary = _decide_and_extract(layout, cfg)
    publish_summary(summary, dashboard)
    return summary


def _decide_and_extract(layout: Layout, cfg: RunConfig) -> dict:
    """The global tail of a run: decide, extract, shard, manifest, summary, report."""
    out = str(layout.root)
    decided = decide_step(out, cfg)
    extracted = extract_step.with_options(timeout_seconds=cfg.runtime.task_timeout_s)(decided, out, cfg)
    clips = shard_step(join_extraction(decided, extracted, out), out, cfg)
    write_table_atomic(clips, layout.clip_manifest / "clips.parquet")
    return _summarize(layout, clips)


def _summarize(layout: Layout, clips: pa.Table) -> dict:
    summary = funnel(read_dataset(layout.sources, source_schema()), clips) | {"out": str(layout.root)}
    write_json_atomic(layout.root / "summary.json", summary)
    summary["report"] = report_step(str(layout.root))
    run_logger().info("funnel: %s", summary)
    return summary


def config_for_out(out: str, config: str | None, profile: str | None, overrides: dict | None = None) -> tuple[Layout, RunConfig]:
    """The config of a step on an existing OUT: the file/profile given, else OUT's own."""
    layout = Layout.at(out)
    if not layout.sources.exists():
        raise ConfigError(f"{layout.root} has no manifest; run `videomill run` first")
    try:
        if config is None and profile is None and layout.resolved_config.exists():
            data = json.loads(layout.resolved_config.read_text())
            cfg = load_config(profile=data.pop("profile"), overrides=merge_dicts(data, overrides or {}))
        else:
            cfg = load_config(config, profile, overrides)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None
    return layout, cfg


@flow(name="decide", log_prints=True)
def redecide(out: str, config: str | None = None, profile: str | None = None, executor: str | None = None) -> dict:
    """Re-apply thresholds to OUT's stored scores (no decoding), then extract newly accepted
    clips, reshard and report. Without --config/--profile it uses OUT's resolved config."""
    overrides = {"runtime": {"executor": executor}} if executor else None
    layout, cfg = config_for_out(out, config, profile, overrides)
    check_fingerprint(layout, cfg, rescore=False)
    write_json_atomic(layout.resolved_config, to_dict(cfg))
    with _compute(cfg) as dashboard:
        summary = _decide_and_extract(layout, cfg)
    publish_summary(summary, dashboard)
    return summary


@flow(name="shard", log_prints=True)
def shard(out: str, config: str | None = None, profile: str | None = None) -> dict:
    """(Re)write OUT's WebDataset shards from its manifest, e.g. after changing [shard]."""
    layout, cfg = config_for_out(out, config, profile)
    clips = read_dataset(layout.clip_manifest, clip_schema())
    clips = shard_step(clips, str(layout.root), cfg)
    write_table_atomic(clips, layout.clip_manifest / "clips.parquet")
    return _summarize(layout, clips)


@flow(name="report", log_prints=True)
def report(out: str) -> str:
    """Write OUT/report.html and OUT/report.json from OUT's manifest."""
    if not Layout.at(out).sources.exists():
        raise ConfigError(f"{Layout.at(out).root} has no manifest; run `videomill run` first")
    return report_step(out)


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


def _compute(cfg: RunConfig):
    if cfg.runtime.executor == "local":
        from contextlib import nullcontext

        return nullcontext(None)
    from flows.run_ray import ray_session

    return ray_session(cfg.runtime.ray_address, cfg.runtime.num_cpus, cfg.runtime.dashboard)
