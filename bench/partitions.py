"""Does the size of a manifest part still cost wall time? (It used to: one pipeline per partition.)

    python bench/partitions.py [FOLDER] [--repeat R]

Curates the same 32 short sources (FOLDER's first 32 media files, or a generated set of
1.5-6 s H.264 clips at 270p/360p, so some sources take four times longer than others) with
`runtime.partition_size = 4` and with one partition of 32, in one Ray session, each run into a
fresh OUT through the real scoring stream (flows/curate.py: score_sources) plus decide and
extraction. Before the streaming pipeline, partitions ran one after another and each waited
for its slowest source. Each configuration's wall time is the best of --repeat runs, the two
taking turns. Ends with exactly `partitioned/single wall ratio: <float>` (goal <= 1.2).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from curation.corpora import synthetic  # noqa: E402
from curation.core.config import load_config  # noqa: E402
from curation.media.inputs import expand_inputs  # noqa: E402
from curation.core.manifest import Layout, read_scores  # noqa: E402

N = 32


def make_sources(folder: Path) -> list[str]:
    for i in range(N):
        seconds = (1.5, 3.0, 4.5, 6.0)[i % 4]
        size = ((480, 270), (640, 360))[i % 2]
        synthetic.write_video(folder / f"src_{i:02d}.mp4", synthetic.moving(int(seconds * 25), size, (2.0, 1.0), seed=i), 25,
                              options={"preset": "veryfast"})
    return expand_inputs([str(folder)])


def curate_once(sources: list[str], partition_size: int, out: Path) -> tuple[float, int]:
    from flows.curate import decide_step, extract_step, join_extraction, score_sources

    cfg = load_config(profile="tiny", overrides={"runtime": {"partition_size": partition_size}})
    layout = Layout.at(out)
    layout.make()
    t0 = time.perf_counter()
    score_sources(sources, layout, cfg)
    decided = decide_step.fn(str(layout.root), cfg)  # the Prefect tasks' bodies: no API server needed
    join_extraction(decided, extract_step.fn(decided, str(layout.root), cfg), str(layout.root))
    return time.perf_counter() - t0, read_scores(layout).num_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    import ray

    with tempfile.TemporaryDirectory(prefix="vm-bench-partitions-") as tmp:
        tmp = Path(tmp)
        sources = expand_inputs([args.folder])[:N] if args.folder else make_sources(tmp / "in")
        print(f"{len(sources)} sources from {args.folder or 'a generated set (1.5-6 s, 270p/360p)'}")
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        cpus = int(ray.cluster_resources().get("CPU", 1))
        print(f"Ray: {cpus} CPUs; profile tiny; wall = scoring stream + decide + extraction")
        curate_once(sources[:2], 4, tmp / "warmup")  # worker start-up and imports, paid once
        best: dict[int, float] = {}
        for r in range(args.repeat):
            for size in (4, N):
                wall, clips = curate_once(sources, size, tmp / f"out-{size}-{r}")
                best[size] = min(best.get(size, wall), wall)
                print(f"  run {r + 1}: partition_size {size:2d}: {wall:6.2f} s wall, {clips} clips")
        ray.shutdown()
    print(f"partition_size  4: {best[4]:.2f} s (best of {args.repeat})")
    print(f"partition_size {N}: {best[N]:.2f} s (best of {args.repeat})")
    print(f"partitioned/single wall ratio: {best[4] / best[N]:.3f}")


if __name__ == "__main__":
    main()
