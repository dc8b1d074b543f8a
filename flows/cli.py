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


# Loggers whose INFO lines are the run's own; everything else says only warnings (open_clip, for
# one, logs every model build step on the root logger).
OUR_LOGGERS = ("videomill", "curation", "captioning", "flows", "training")


def _logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)


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
    run.add_argument("--offline", action="store_true", help="never download a model (HF_HUB_OFFLINE=1): missing ones stop the run")
    fet = sub.add_parser("fetch", help="download every model a run with this config uses (for offline machines: then HF_HUB_OFFLINE=1)")
    fet.add_argument("--config", help="TOML/YAML/JSON run configuration")
    fet.add_argument("--profile", choices=["tiny", "cpu", "gpu"], help="preset sizes and models (default: cpu)")
    smp = sub.add_parser("samples", help="write synthetic sample videos (good and broken) into a folder")
    smp.add_argument("folder")
    dec = sub.add_parser("decide", help="re-apply thresholds to OUT's scores without re-scoring")
    dec.add_argument("out")
    dec.add_argument("--config")
    dec.add_argument("--profile", choices=["tiny", "cpu", "gpu"])
    dec.add_argument("--offline", action="store_true", help="never download a model (HF_HUB_OFFLINE=1)")
    shd = sub.add_parser("shard", help="(re)write OUT's WebDataset shards from its manifest")
    shd.add_argument("out")
    shd.add_argument("--config")
    shd.add_argument("--profile", choices=["tiny", "cpu", "gpu"])
    trn = sub.add_parser("train", help="train CogVideoX on OUT's shards (Ray Train); `train precompute CONFIG` fills the latent cache")
    trn.add_argument("target", nargs="+", metavar="[precompute] CONFIG", help="trainer config (TOML/YAML/JSON)")
    trn.add_argument("--num-workers", type=int, help="Ray Train workers (default: distributed.num_workers)")
    trn.add_argument("--gpus-per-worker", type=float, help="GPUs per worker (0: CPU with gloo)")
    trn.add_argument("--ray-address", help="attach to this Ray cluster (default: a local Ray)")
    tags = sub.add_parser("tags", help="the tag probe: `tags train LABELS.csv --manifest OUT --out PROBE`")
    tsub = tags.add_subparsers(dest="tags_cmd", required=True)
    ttr = tsub.add_parser("train", help="train a tag probe on OUT's clip embeddings from clip_id,tag,label rows")
    ttr.add_argument("labels", metavar="LABELS.csv", help="rows clip_id,tag,label (label 0 or 1)")
    ttr.add_argument("--manifest", required=True, metavar="OUT", help="a run's output folder (its embeddings)")
    ttr.add_argument("--out", required=True, metavar="PROBE", help="where the probe goes (safetensors)")
    ttr.add_argument("--hidden", type=int, default=0, help="hidden units (0: a linear probe)")
    ttr.add_argument("--holdout", type=float, default=0.25, help="share of labelled clips held out for the figures")
    ttr.add_argument("--seed", type=int, default=0)
    rep = sub.add_parser("report", help="write OUT/report.html and OUT/report.json: funnel, score histograms, thumbnails")
    rep.add_argument("out")
    cal = sub.add_parser("calibrate", help="per tag and rule precision/recall of OUT's verdicts against labelled clips")
    cal.add_argument("out")
    cal.add_argument("--labels", required=True, help="CSV of labelled clips (format: curation/decisions/calibrate.py)")
    cal.add_argument("--target-precision", type=float, default=0.9, help="suggest thresholds reaching this precision (default 0.9)")
    return p


def main(argv: list[str] | None = None) -> int:
    _env_defaults()
    args = _parser().parse_args(argv)
    if getattr(args, "offline", False):  # before huggingface_hub is imported: it reads this once
        os.environ["HF_HUB_OFFLINE"] = "1"
    if args.cmd == "samples":
        from curation.corpora.synthetic import make_samples

        for name, want in sorted(make_samples(args.folder).items()):
            print(f"{name:24s} {want.get('note', want['status'])}")
        return 0
    if args.cmd == "tags":  # reads OUT's embeddings only: no Prefect server, no Ray
        return _tags_train(args)
    if args.cmd == "report":  # reads OUT only: no Prefect server, no Ray
        from curation.outputs.report import write_report
        from flows.preflight import existing_run

        try:
            existing_run(args.out)
            report = write_report(args.out)
        except (ValueError, OSError) as e:
            print(f"videomill: {e}", file=sys.stderr)
            return 2
        print(os.path.join(report["out"], "report.html"))
        return 0
    if args.cmd == "calibrate":  # reads OUT and the labels only: no Prefect server, no Ray
        return _calibrate(args)
    _logging()
    if args.cmd == "train":
        return _train(args)
    try:  # every configuration-type problem, in seconds, before Prefect (a ~10 s import), Ray or any server
        _preflight(args)
    except (ValueError, OSError, RuntimeError) as e:  # ConfigError and MissingModel are ValueErrors
        print(f"videomill: configuration error: {e}", file=sys.stderr)
        return 2
    if args.cmd == "fetch":
        print("videomill: every model of this configuration is in the local caches")
        return 0
    from flows.curate import ConfigError, curate, redecide, shard

    try:
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
    print(f"report: {summary['report']}", file=sys.stderr)
    return 0


def _preflight(args: argparse.Namespace) -> None:
    """What run/fetch/decide/shard check before any work, cheapest first: the configuration,
    the inputs and OUT, the scores already in OUT, the Prefect API, then the models (named,
    fetched when missing, refused in one line offline) and the caption server."""
    from curation.core.config import RunConfig
    from flows.models import check_services, prepare_models
    from flows.preflight import (
        ONLY_AFTER_SCORING,
        check_inputs,
        check_out,
        check_prefect_api,
        check_scores,
        config_for_out,
        run_config,
    )

    say = lambda line: print(f"videomill: {line}", file=sys.stderr)  # noqa: E731
    cfg: RunConfig
    if args.cmd in ("run", "fetch"):
        overrides = {"runtime": {"executor": args.executor}} if getattr(args, "executor", None) else None
        cfg = run_config(args.config, args.profile, overrides)
    else:
        layout, cfg = config_for_out(args.out, args.config, args.profile)
    if args.cmd == "run":
        check_inputs(args.inputs)
        layout = check_out(args.out, args.inputs)
        check_scores(layout, cfg, args.rescore)
    elif args.cmd in ("decide", "shard"):
        check_scores(layout, cfg, fix=ONLY_AFTER_SCORING)
    if args.cmd != "fetch":
        check_prefect_api()
    if args.cmd in ("run", "fetch", "decide"):  # decide loads only the caption models
        prepare_models(cfg, scoring=args.cmd != "decide", say=say)
    if args.cmd in ("run", "decide"):
        check_services(cfg)


def _calibrate(args: argparse.Namespace) -> int:
    from curation.decisions.calibrate import calibrate_run, format_table
    from curation.outputs.report import write_report

    try:
        result = calibrate_run(args.out, args.labels, args.target_precision)
    except FileNotFoundError as e:
        print(f"videomill: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"videomill: bad labels: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    write_report(args.out)  # the report shows OUT/calibration.json
    print(os.path.join(args.out, "calibration.json"))
    return 0


def _tags_train(args: argparse.Namespace) -> int:
    """`videomill tags train`: fit the probe, print held-out figures, write PROBE."""
    from curation.models.embeddings import read_embeddings
    from curation.core.manifest import Layout
    from curation.models.tag_probe import format_metrics, read_labels, save_probe, train_probe

    try:
        clips, tags, y = read_labels(args.labels)
        ids, emb, model = read_embeddings(Layout.at(args.manifest), clips)
        if not ids:
            raise ValueError(f"{args.manifest} has no embeddings for the labelled clips (run it with [models] enabled)")
        missing = len(clips) - len(ids)
        where = {c: i for i, c in enumerate(clips)}
        rows = [where[c] for c in ids]
        probe = train_probe(emb, y[rows], tags, hidden=args.hidden, holdout=args.holdout, seed=args.seed, model=model)
    except (ValueError, OSError) as e:
        print(f"videomill: {e}", file=sys.stderr)
        return 2
    if missing:
        print(f"videomill: {missing} labelled clip(s) have no embedding in {args.manifest}; left out", file=sys.stderr)
    save_probe(probe, args.out)
    print(f"probe: {len(ids)} clips, {len(tags)} tags, embeddings of {model}; held-out figures at threshold {probe.threshold}:")
    print(format_metrics(probe))
    print(args.out)
    return 0


def _train(args: argparse.Namespace) -> int:
    from training.config import load_train_config

    precompute = args.target[0] == "precompute"
    paths = args.target[1:] if precompute else args.target
    if len(paths) != 1:
        print("videomill: usage: videomill train [precompute] CONFIG", file=sys.stderr)
        return 2
    try:
        cfg = load_train_config(paths[0])
    except (ValueError, OSError) as e:
        print(f"videomill: configuration error: {e}", file=sys.stderr)
        return 2
    if precompute:
        from training.models import load_models
        from training.data.precompute import precompute as run_precompute

        if not cfg.data.cache_dir:
            print("videomill: configuration error: data.cache_dir names where the cache goes", file=sys.stderr)
            return 2
        from dataclasses import replace

        o = cfg.objective  # I2V: cache the noised condition frame, noised as the objective does
        pc = replace(cfg.precompute, out=cfg.data.cache_dir, seed=cfg.run.seed, i2v_condition=cfg.model.variant == "i2v",
                     condition_noise_mean=o.condition_noise_mean, condition_noise_std=o.condition_noise_std)
        entries = run_precompute(load_models(cfg.model), cfg.data, pc)
        print(json.dumps({"cache": cfg.data.cache_dir, "parts": len(entries)}))
        return 0
    from flows.preflight import ConfigError, check_prefect_api

    try:
        check_prefect_api()
    except ConfigError as e:
        print(f"videomill: cannot train: {e}", file=sys.stderr)
        return 2
    from flows.train import PreflightError, preflight, summary_lines, train_flow, with_overrides

    try:  # seconds, before Prefect and Ray start: the data and the model exist and fit
        preflight(with_overrides(cfg, args.num_workers, args.gpus_per_worker))
    except PreflightError as e:
        print(f"videomill: cannot train: {e}", file=sys.stderr)
        return 2
    try:
        summary = train_flow(config=paths[0], num_workers=args.num_workers, gpus_per_worker=args.gpus_per_worker,
                             ray_address=args.ray_address)
    except Exception as e:  # infrastructure failure: one line for the user, traceback in the log above
        print(f"videomill: training failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print("\n".join(summary_lines(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
