"""How the run's cost and the driver's memory grow with the number of sources: a SIMULATION.

    python bench/scale_sim.py [--base 2400] [--clips 4] [--stub-ms 30] [--factors 1,2,4,8]

Decoding and scoring are replaced by a documented stub of fixed cost (`SimulatedAnalysis`:
per source it sleeps --stub-ms and emits --clips clip rows whose scores are drawn from a
seeded generator; sleeping, not spinning, so the figure is the pipeline's own overhead on
top of a known cost). Everything else is the real code: the streaming executor
(flows/run_ray.py: one Ray Data pipeline with its backpressure, input blocks read from one
object-store copy of the source list), the manifest writer and
settle step (curation/core/manifest.py), decide, the extraction planner (Arrow grouping per
source) and executor (Ray tasks over blocks of sources; a stub writer of 1 KiB files in place
of x264), the join, the shard planner and the parallel shard writer (curation/outputs/write_shards.py,
Ray tasks, index merged after) and the report's numbers (curation/outputs/report.py build_report; no
HTML: its thumbnails would decode the stub files). No model stage runs (`[models] ocr =
false`): the stub is the whole of scoring, so no actor pool is exercised here
(tests/flows/test_stream.py covers pools).

Each N = factor x base runs in a fresh process (its own local Ray), so the driver's peak RSS
(getrusage) is that run's alone. Before the timed run, a warm-up of 8 sources through the same
steps (into a scratch OUT) starts the worker processes and their imports: a fixed cost,
printed, not timed. Printed per N: wall time (Ray start-up and warm-up excluded), clips/s,
driver peak RSS, Parquet files written, each step's time and the driver's RSS after it.
It ends with exactly `cost ratio 8x/1x: <float>` (8.0 is linear) and
`driver RSS ratio 8x/1x: <float>` (1.0 is flat).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from curation.core.stage import Stage  # noqa: E402


class SimulatedAnalysis(Stage):
    """The fixed-cost stub standing in for ProbeSources + SplitAndScore: per source, sleep
    `cost_s` and emit `clips` clip rows (analyzed_clip_schema) with seeded random scores
    (motion_score ~ U(0, 0.05) so the default motion rule rejects some; tag scores ~ U(0, 0.6)
    so a few tags fire). No file is read."""

    reads = ("source",)
    batch_size = 1

    def __init__(self, cost_s: float, clips: int):
        self.cost_s, self.clips = cost_s, clips

    def __call__(self, batch: pa.Table) -> pa.Table:
        from curation.analysis.analyze import clip_id
        from curation.media.container import source_id
        from curation.core.schema import NEG_TAGS, SOURCE_ROW, analyzed_clip_schema, neg_column, to_table

        rows = []
        for uri in batch.column("source").to_pylist():
            time.sleep(self.cost_s)
            sid = source_id(uri)
            rng = np.random.default_rng(int(sid, 16) % (1 << 32))
            head = {"source": uri, "source_id": sid, "media_type": "video", "status": "ok", "width": 1280, "height": 720,
                    "fps": 25.0, "duration_s": 8.0 * self.clips, "num_frames": 200 * self.clips, "num_shots": self.clips,
                    "num_clips": self.clips, "codec": "h264", "container": "simulated"}
            for k in range(self.clips):
                row = {"clip_id": clip_id(sid, 200 * k, 200 * k + 200), "source": uri, "media_type": "video",
                       "start_frame": 200 * k, "end_frame": 200 * k + 200, "start_s": 8.0 * k, "end_s": 8.0 * k + 8.0,
                       "num_frames": 200, "fps": 25.0, "width": 1280, "height": 720,
                       "motion_score": float(rng.uniform(0, 0.05)), "motion_min_patch": 0.0, "motion_coherence": 0.9}
                row |= {neg_column(t): float(rng.uniform(0, 0.6)) for t in NEG_TAGS}
                if k == 0:
                    row[SOURCE_ROW] = head
                rows.append(row)
        return to_table(rows, analyzed_clip_schema())


class SimulatedExtract(Stage):
    """Stub extraction: a 1 KiB file per accepted clip, through the real executor (one task
    per source, like ExtractClips), results in ExtractClips' output schema."""

    reads = ("source", "media_type", "clips")
    writes = ("clip_id", "clip_path", "error")
    batch_size = 1

    def __init__(self, clips_dir: str):
        self.clips_dir = clips_dir

    def __call__(self, batch: pa.Table) -> pa.Table:
        from curation.outputs.extract_clips import EXTRACT_OUTPUT

        out = []
        for row in batch.to_pylist():
            for c in row["clips"]:
                path = Path(self.clips_dir) / f"{c['clip_id']}.mp4"
                path.write_bytes(b"\0" * 1024)
                out.append({"clip_id": c["clip_id"], "clip_path": str(path), "error": None})
        return pa.Table.from_pylist(out, schema=EXTRACT_OUTPUT)


def _rss_mb() -> float:
    """The driver's resident set now (MiB), from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(n: int, out: Path, clips: int, stub_ms: float, cpus: int | None) -> dict:
    import ray

    from curation.core.config import load_config, to_dict
    from curation.core.manifest import Layout, read_scores, read_sources, write_json_atomic
    from curation.outputs.report import build_report
    from curation.outputs.write_shards import write_shards
    from flows.curate import decide_step, extract_input, join_extraction, score_sources
    from flows.run_ray import map_tasks, run_ray

    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    cfg = load_config(profile="cpu", overrides={"shard": {"bucketing": False}, "models": {"ocr": False}})  # scoring is the stub
    layout = Layout.at(out)
    layout.make()
    write_json_atomic(layout.resolved_config, to_dict(cfg))
    sources = [f"/simulated/raw/source-{i:08d}.mp4" for i in range(n)]
    steps: dict[str, float] = {}
    rss: dict[str, float] = {"start": _rss_mb()}

    def timed(name, fn, *a, **kw):
        t = time.perf_counter()
        r = fn(*a, **kw)
        steps[name] = time.perf_counter() - t
        rss[name] = _rss_mb()
        return r

    # Warm-up: a few sources through the same steps into a scratch OUT, so worker processes
    # are started and have imported the pipeline's modules: a fixed cost (printed), not an
    # effect of N. The timed run below is still a cold OUT.
    t_warm = time.perf_counter()
    warm = Layout.at(out.parent / f"{out.name}-warmup")
    warm.make()
    write_json_atomic(warm.resolved_config, to_dict(cfg))
    score_sources([f"/simulated/warmup/source-{i}.mp4" for i in range(8)], warm, cfg, stages=[SimulatedAnalysis(0.0, clips)])
    wdecided = decide_step.fn(str(warm.root), cfg)
    wfinal = join_extraction(wdecided, run_ray([SimulatedExtract(str(warm.clips))], extract_input(wdecided)), str(warm.root))
    write_shards(wfinal, warm, cfg.shard, extract=cfg.extract, map_fn=map_tasks)
    warm_s = time.perf_counter() - t_warm
    rss["warm-up"] = _rss_mb()

    t0 = time.perf_counter()
    timed("score", score_sources, sources, layout, cfg, stages=[SimulatedAnalysis(stub_ms / 1000, clips)])
    decided = timed("decide", decide_step.fn, str(layout.root), cfg)
    extracted = timed("extract", run_ray, [SimulatedExtract(str(layout.clips))], extract_input(decided))
    final = timed("join", join_extraction, decided, extracted, str(layout.root))
    # As the flow's shard step does within a run: shards as Ray tasks, the index merged after.
    final, index = timed("shards", write_shards, final, layout, cfg.shard, extract=cfg.extract, map_fn=map_tasks)
    report = timed("report", lambda: build_report(layout, read_sources(layout), final, read_scores(layout), to_dict(cfg)))
    wall = time.perf_counter() - t0
    cpus_used = int(ray.cluster_resources().get("CPU", 1))
    ray.shutdown()
    parquet = sum(1 for _ in (layout.root / "manifest").rglob("*.parquet"))
    return {"n": n, "wall_s": wall, "score_s": steps["score"], "clips": final.num_rows, "accepted": report["funnel"]["accepted"],
            "sharded": index["totals"]["samples"], "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "parquet_files": parquet, "cpus": cpus_used, "warm_s": warm_s, "steps": steps, "rss_after": rss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=int, default=2400, help="sources at 1x (~1 min on 2 cores)")
    ap.add_argument("--clips", type=int, default=4, help="clips per simulated source")
    ap.add_argument("--stub-ms", type=float, default=30.0, help="fixed cost of one source's decode+scoring stub")
    ap.add_argument("--factors", default="1,2,4,8")
    ap.add_argument("--num-cpus", type=int, default=None)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print("RESULT " + json.dumps(child(args.child, Path(args.out), args.clips, args.stub_ms, args.num_cpus)))
        return
    factors = [int(f) for f in args.factors.split(",")]
    print("SIMULATION: decode and scoring are a fixed-cost stub "
          f"({args.stub_ms:g} ms sleep and {args.clips} clip rows per source); everything else is the real pipeline")
    results = {}
    with tempfile.TemporaryDirectory(prefix="vm-scale-sim-") as tmp:
        for f in factors:
            n = f * args.base
            cmd = [sys.executable, __file__, "--child", str(n), "--out", str(Path(tmp) / f"out-{f}x"),
                   "--clips", str(args.clips), "--stub-ms", str(args.stub_ms)]
            if args.num_cpus:
                cmd += ["--num-cpus", str(args.num_cpus)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
            if r.returncode or not lines:
                sys.exit(f"{f}x run failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
            res = results[f] = json.loads(lines[-1][len("RESULT "):])
            print(f"{f}x: {n} sources, {res['clips']} clips ({res['accepted']} accepted, {res['sharded']} sharded): "
                  f"{res['wall_s']:.1f} s wall ({res['score_s']:.1f} s scoring), {res['clips'] / res['wall_s']:.0f} clips/s, "
                  f"driver peak RSS {res['rss_mb']:.0f} MiB, {res['parquet_files']} Parquet files, {res['cpus']} CPUs", flush=True)
            print(f"    steps: warm-up (untimed) {res['warm_s']:.1f} s; " + ", ".join(f"{k} {v:.1f} s" for k, v in res["steps"].items()), flush=True)
            print("    driver RSS after: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in res["rss_after"].items()), flush=True)
    lo, hi = min(factors), max(factors)
    print(f"stub floor at {hi}x: {hi * args.base * args.stub_ms / 1000 / results[hi]['cpus']:.1f} s "
          f"({hi * args.base} sources x {args.stub_ms:g} ms / {results[hi]['cpus']} CPUs)")
    print(f"cost ratio {hi}x/{lo}x: {results[hi]['wall_s'] / results[lo]['wall_s']:.3f}")
    print(f"driver RSS ratio {hi}x/{lo}x: {results[hi]['rss_mb'] / results[lo]['rss_mb']:.3f}")


if __name__ == "__main__":
    main()
