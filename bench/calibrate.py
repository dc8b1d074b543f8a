"""Calibration benchmark: the default decisions against the labelled real-footage set.

Builds the development set (bench/realset.py; needs Debian's opencv-doc), analyses it in this
process with the given profile/config (ProbeSources + SplitAndScore, the same stages
`videomill run` runs; no Prefect, no Ray), decides, and prints the calibration table of
curation/decisions/calibrate.py. It ends with two ratios against the labels, measured in the same run:

  good kept ratio:            good clips accepted / clips labelled good
  defects caught ratio:       labelled defects rejected for a labelled reason (or yielding no
                              clip) / labelled defects

    python bench/calibrate.py [--set build/realset] [--config FILE] [--target-precision 0.9]

`videomill run SET --out OUT && videomill calibrate OUT --labels tests/data/realset_labels.csv`
measures the same end to end (`make calibrate`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.realset import RealsetMissing, build  # noqa: E402
from curation.analysis.analyze import SplitAndScore  # noqa: E402
from curation.decisions.calibrate import calibrate, format_table, known_names, read_labels  # noqa: E402
from curation.core.config import load_config  # noqa: E402
from curation.decisions.decide import decide  # noqa: E402
from curation.core.manifest import split_rows  # noqa: E402
from curation.media.probe import ProbeSources  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--set", default=str(ROOT / "build" / "realset"), help="where the development set is (built if missing)")
    p.add_argument("--labels", default=str(ROOT / "tests" / "data" / "realset_labels.csv"))
    p.add_argument("--config", help="a run configuration to measure instead of the defaults")
    p.add_argument("--profile", default=None)
    p.add_argument("--target-precision", type=float, default=0.9)
    args = p.parse_args(argv)
    try:
        folder = build(args.set)
    except RealsetMissing as e:
        print(f"calibrate bench: {e}", file=sys.stderr)
        return 2
    cfg = load_config(args.config, args.profile)
    sources = sorted(str(f) for f in Path(folder).iterdir() if f.is_file() and not f.name.startswith("."))
    t0 = time.perf_counter()
    stage = SplitAndScore(cfg, frames=False)  # no model stage here: skip their frame columns
    stage.setup()
    heads, clips = split_rows(stage(ProbeSources()(pa.table({"source": sources}))))
    seconds = time.perf_counter() - t0
    frames = sum(pc.fill_null(heads.column("num_frames"), 0).to_pylist())
    decided, _ = decide(clips, cfg.decide)
    result = calibrate(decided, read_labels(args.labels, known_names(cfg)), cfg, args.target_precision)
    print(f"{len(sources)} sources, {frames} frames, {clips.num_rows} clips analysed in {seconds:.1f} s "
          f"({frames / seconds:.0f} frames/s, profile {cfg.profile}{', config ' + args.config if args.config else ''})")
    print(format_table(result))
    v = result["verdicts"]
    good = v["accept->accepted"] + v["accept->rejected"] + v["accept->no_clips"]
    defects = v["reject->rejected"] + v["reject->wrong_reason"] + v["reject->accepted"] + v["reject->no_clips"]
    print(f"good kept ratio: {v['accept->accepted'] / good:.3f}")
    print(f"defects caught ratio: {(v['reject->rejected'] + v['reject->no_clips']) / defects:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
