"""`dapt`: run the pipeline, look at the plan, inspect artifacts.

    dapt run configs/demo.yaml [--set pretrain.max_steps=50]
    dapt plan configs/demo.yaml
    dapt serve configs/demo.yaml --cron "0 3 * * 1"   # scheduled runs from this machine (Prefect server)
    dapt artifacts list [--store artifacts] [--stage pretrain]
    dapt artifacts show ID
    dapt artifacts lineage ID

User mistakes (bad config, unreadable input, unknown id) print one message and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from pretrain.artifacts import ArtifactStore, format_lineage
from pretrain.errors import UserError

DEFAULT_STORE = os.environ.get("DAPT_STORE", "artifacts")


def _run(args: argparse.Namespace) -> int:
    from pretrain.config import load_config
    from pretrain.pipeline import setup_logging
    from pretrain.report import format_table

    config = load_config(args.config, args.overrides)  # every config problem, before Prefect starts
    setup_logging()
    from flows.pipeline import pipeline

    started = time.perf_counter()
    state = pipeline(config=config, return_state=True)
    if state.is_failed():
        error = state.result(raise_on_failure=False)
        if isinstance(error, BaseException):
            raise error  # a bug, not a user mistake: keep the traceback
        raise UserError(state.message)
    result = state.result()
    print()
    print(format_table(result["rows"]))
    print()
    print(result["comparison"])
    print()
    hits = sum(result["cached"].values())
    print(f"{hits}/{len(result['cached'])} stages were cache hits; {time.perf_counter() - started:.0f} s in the pipeline")
    print(f"report: {result['report']}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from pretrain.config import load_config
    from pretrain.pipeline import setup_logging

    config = load_config(args.config, args.overrides)
    setup_logging()
    from flows.serve import cron_schedule, serve_pipeline

    if args.cron:
        cron_schedule(args.cron, args.timezone)  # a bad schedule is an error before anything starts
    serve_pipeline(config, name=args.name, cron=args.cron, timezone=args.timezone)
    return 0


def _plan(args: argparse.Namespace) -> int:
    from pretrain.config import load_config
    from pretrain.pipeline import plan

    config = load_config(args.config, args.overrides)
    store = ArtifactStore(config.store)
    for stage, aid in plan(config).items():
        print(f"{stage:<9} {aid}  {'built' if store.exists(aid) else 'to build'}")
    return 0


def _artifacts(args: argparse.Namespace) -> int:
    store = ArtifactStore(args.store)
    if args.action == "list":
        for aid in store.ids():
            m = store.manifest(aid)
            if args.stage and m["stage"] != args.stage:
                continue
            size = sum(f["size"] for f in m["files"].values())
            print(f"{aid}  {m['stage']:<9} {m['created']}  {size / 1e6:8.1f} MB")
    elif args.action == "show":
        print(json.dumps(store.manifest(args.id), indent=2))
    elif args.action == "lineage":
        print(format_lineage(store.lineage(args.id)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dapt", description="Domain-adaptive pretraining of BERT-family encoders.")
    commands = parser.add_subparsers(dest="command", required=True)

    for name, helptext in (("run", "run the whole pipeline as a Prefect flow"), ("plan", "the artifact id of every stage, and which are built")):
        p = commands.add_parser(name, help=helptext)
        p.add_argument("config", help="pipeline YAML, e.g. configs/demo.yaml")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. pretrain.max_steps=20 (repeatable)")  # fmt: skip

    serve = commands.add_parser("serve", help="serve the pipeline (and each stage) as Prefect deployments, on a schedule")
    serve.add_argument("config", help="pipeline YAML, e.g. configs/demo.yaml")
    serve.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config value (repeatable)")
    serve.add_argument("--cron", help="schedule of the pipeline, e.g. '0 3 * * 1' (Mondays 03:00); none: runs only when triggered")
    serve.add_argument("--timezone", default="UTC", help="time zone of --cron (default UTC)")
    serve.add_argument("--name", default="serve", help="deployment name (default serve): dapt-pipeline/<name>, <stage>/<name>")

    artifacts = commands.add_parser("artifacts", help="list, show and trace artifacts in a store")
    actions = artifacts.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every complete artifact, oldest first")
    listing.add_argument("--stage", help="only this stage's artifacts")
    show = actions.add_parser("show", help="an artifact's manifest")
    show.add_argument("id")
    lineage = actions.add_parser("lineage", help="the chain from an artifact back to the base model and raw files")
    lineage.add_argument("id")
    for p in (listing, show, lineage):
        p.add_argument("--store", default=DEFAULT_STORE, help=f"store folder or URL (default {DEFAULT_STORE}; env DAPT_STORE)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"run": _run, "plan": _plan, "serve": _serve, "artifacts": _artifacts}
    try:
        return handlers[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
