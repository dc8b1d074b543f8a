"""`videomill` command line: thin wrappers over the Prefect flows."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def _env_defaults() -> None:
    # Keep Prefect quiet and local: no telemetry, and the ephemeral API unless a server is set.
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # The ephemeral API server can take >20 s (Prefect's default wait) to start on a busy laptop.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="videomill", description="Turn raw video into training data for video diffusion models.")
    sub = p.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="curate inputs into OUT (ingest, split, score, decide, extract)")
    run.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders, globs, @list.txt files or fsspec URLs")
    run.add_argument("--out", required=True, help="output folder (rerun with the same OUT to resume)")
    run.add_argument("--config", help="TOML/YAML/JSON run configuration")
    run.add_argument("--profile", choices=["tiny", "cpu", "gpu"], help="preset sizes and models (default: cpu)")
    run.add_argument("--ray-address", help="attach to this Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    run.add_argument("--executor", choices=["ray", "local"], help="where stages run (default: ray)")
    run.add_argument("--rescore", action="store_true", help="discard scores made with other settings in OUT")
    smp = sub.add_parser("samples", help="write synthetic sample videos (good and broken) into a folder")
    smp.add_argument("folder")
    dec = sub.add_parser("decide", help="re-apply thresholds to OUT's scores without re-scoring")
    dec.add_argument("out")
    dec.add_argument("--config")
    dec.add_argument("--profile", choices=["tiny", "cpu", "gpu"])
    shd = sub.add_parser("shard", help="(re)write OUT's WebDataset shards from its manifest")
    shd.add_argument("out")
    shd.add_argument("--config")
    shd.add_argument("--profile", choices=["tiny", "cpu", "gpu"])
    rep = sub.add_parser("report", help="write OUT/report.html and OUT/report.json: funnel, score histograms, thumbnails")
    rep.add_argument("out")
    return p


def main(argv: list[str] | None = None) -> int:
    _env_defaults()
    args = _parser().parse_args(argv)
    if args.cmd == "samples":
        from curation.synthetic import make_samples

        for name, want in sorted(make_samples(args.folder).items()):
            print(f"{name:24s} {want.get('note', want['status'])}")
        return 0
    if args.cmd == "report":  # reads OUT only: no Prefect server, no Ray
        from curation.report import write_report

        try:
            report = write_report(args.out)
        except FileNotFoundError as e:
            print(f"videomill: {e}", file=sys.stderr)
            return 2
        print(os.path.join(report["out"], "report.html"))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from curation.config import load_config
    from flows.curate import ConfigError, curate, redecide, shard

    try:
        try:  # fail fast, before any server or cluster starts
            load_config(args.config, args.profile)
        except (ValueError, OSError) as e:
            raise ConfigError(str(e)) from None
        if args.cmd == "run":
            summary = curate(
                inputs=args.inputs,
                out=args.out,
                config=args.config,
                profile=args.profile,
                ray_address=args.ray_address,
                executor=args.executor,
                rescore=args.rescore,
            )
        elif args.cmd == "shard":
            summary = shard(out=args.out, config=args.config, profile=args.profile)
        else:
            summary = redecide(out=args.out, config=args.config, profile=args.profile)
    except ConfigError as e:
        print(f"videomill: configuration error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # infrastructure failure: one line for the user, traceback in the log above
        print(f"videomill: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
