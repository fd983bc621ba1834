"""`dapt`: run the pipeline, look at the plan, inspect artifacts.

    dapt init --corpus docs/ --task-train labelled.csv [--task-test F] [--task-name NAME] [--base MODEL] [--out my.yaml]
    dapt run configs/demo.yaml [--set pretrain.max_steps=50]
    dapt plan configs/demo.yaml
    dapt assess configs/demo.yaml                     # will the configured pretraining pay off? (minutes)
    dapt serve configs/demo.yaml --cron "0 3 * * 1"   # scheduled runs from this machine (Prefect server)
    dapt artifacts list [--store artifacts] [--stage pretrain]
    dapt artifacts show ID
    dapt artifacts lineage ID
    dapt artifacts promote ID ALIAS        dapt artifacts resolve ALIAS     dapt artifacts history ALIAS
    dapt artifacts aliases                 dapt artifacts verify ID         dapt artifacts gc [--yes]
    dapt artifacts rm ID                   # e.g. a corrupted artifact: the next run rebuilds it
    dapt export ID_OR_ALIAS|best --to DIR [--format onnx [--quantize int8] [--test FILE]] [--overwrite] [--push-to-hub REPO]
    dapt predict EXPORT_DIR_OR_ONNX --input FILE --out OUT.jsonl|OUT.parquet [--text-field text] [--id-field id] [--on-empty skip|fail]
    dapt embed MODEL_OR_ALIAS --input FILE --output FILE.parquet [--pooling cls|mean]

User mistakes (bad config, unreadable input, unknown id) and errors a user can act on (a read-only or full
disk, a permission, a refused connection, no network) print one message and exit with status 2;
`dapt --debug ...` shows the traceback. SIGTERM and SIGINT stop `dapt run` with everything it started
(flows/lifecycle.py) and exit with 128 + the signal's number.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from pretrain.core import registry
from pretrain.core.artifacts import ArtifactStore, format_lineage
from pretrain.core.errors import UserError, os_error_line, unreachable
from pretrain.core.logs import setup_logging

DEFAULT_STORE = os.environ.get("DAPT_STORE", "artifacts")


def _checked(args: argparse.Namespace, show: bool = True):
    """The config, validated, and its task files read and checked; warnings and the task's size on stderr."""
    from pretrain.chain import preflight
    from pretrain.configfile import load_config

    config = load_config(args.config, args.overrides)
    lines = preflight(config)
    if show:
        print("\n".join(lines), file=sys.stderr)
    return config


def _run(args: argparse.Namespace) -> int:
    # Every config and task-file problem, before Prefect starts; the pipeline flow logs the warnings.
    config = _checked(args, show=False)
    setup_logging()
    from flows.pipeline import run_and_print

    run_and_print(config)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from pretrain.configfile import load_config

    config = load_config(args.config, args.overrides)
    setup_logging()
    from flows.serve import cron_schedule, serve_pipeline

    if args.cron:
        cron_schedule(args.cron, args.timezone)  # a bad schedule is an error before anything starts
    serve_pipeline(config, name=args.name, cron=args.cron, timezone=args.timezone)
    return 0


def _plan(args: argparse.Namespace) -> int:
    from pretrain.chain import plan

    config = _checked(args)
    store = ArtifactStore(config.store)
    ids = plan(config)
    width = max(9, *map(len, ids))
    for stage, aid in ids.items():
        print(f"{stage:<{width}} {aid}  {'built' if store.exists(aid) else 'to build'}")
    return 0


def _assess(args: argparse.Namespace) -> int:
    """Build (or find) base, corpus, vocab and tokens, then the assessment; print its signals and estimate."""
    import json

    from pretrain.assess import describe
    from pretrain.chain import run_through, switched_on

    config = switched_on("assess", _checked(args))
    setup_logging()
    store = ArtifactStore(config.store)
    aid = run_through("assess", config, store)["assess"]
    result = json.loads((store.local_dir(aid) / "assessment.json").read_text())
    print(describe(result, name=f"{config.name}, assessment {aid}"))
    return 0


def _init(args: argparse.Namespace) -> int:
    from pretrain.chain import preflight
    from pretrain.configfile import load_config
    from pretrain.scaffold import init

    for line in init(args.corpus, args.task_train, args.task_test, args.base, args.out, force=args.force, task_name=args.task_name):
        print(line)
    print(f"checking {args.out} as `dapt plan` does:")
    try:
        config = load_config(args.out)
        lines = preflight(config)
    except UserError as e:
        print(f"error: {e}\n{args.out} was written; fix what is named above, then `dapt plan {args.out}`", file=sys.stderr)
        return 2
    for line in lines:
        print(f"  {line}")
    print(f"next: read {args.out}, then `dapt plan {args.out}` and `dapt run {args.out}`")
    return 0


def _artifacts(args: argparse.Namespace) -> int:
    store = ArtifactStore(args.store)
    if args.action in REGISTRY_ACTIONS:
        return REGISTRY_ACTIONS[args.action](store, args)
    if args.action == "list":
        from pretrain.handoff.export import run_names

        names = run_names(store) if args.stage in (None, "finetune") else {}
        for aid in store.ids():
            m = store.manifest(aid)
            if args.stage and m["stage"] != args.stage:
                continue
            size = sum(f["size"] for f in m["files"].values())
            about = f"  {run_summary(m, names.get(aid))}" if m["stage"] == "finetune" else ""
            print(f"{aid}  {m['stage']:<9} {m['created']}  {size / 1e6:8.1f} MB{about}")
    elif args.action == "show":
        print(json.dumps(store.manifest(registry.resolve(store, args.id)), indent=2))
    elif args.action == "lineage":
        print(format_lineage(store.lineage(registry.resolve(store, args.id))))
    return 0


def run_summary(manifest: dict, named: tuple[str, str, bool] | None) -> str:
    """A fine-tuning run in a listing: its model (by name in the evaluation that ran it), learning rate, seed,
    validation score, and whether that evaluation chose it to hand over."""
    m = manifest["metrics"]
    metric = m.get("selection_metric", "macro_f1")
    model = f"{named[1]} ({manifest['inputs'].get('model', '?')})" if named else manifest["inputs"].get("model", "?")
    chosen = f"  best of {named[0]}" if named and named[2] else ""
    score = m.get(f"validation_{metric}")
    return (f"{m.get('task', '?')}: {model} lr {m.get('learning_rate', 0):g} seed {m.get('seed')}"
            + (f", validation {metric} {score:.4f}" if isinstance(score, (int, float)) else "") + chosen)  # fmt: skip


# What each command can do with an alias, by the stage of the artifact it points at.
EXPORTABLE = ("base", "pretrain", "distill", "finetune", "evaluate")  # evaluate: its best task model
EMBEDDABLE = ("base", "pretrain", "distill", "finetune")  # finetune: the fine-tuned encoder under its head


def _promote(store: ArtifactStore, args: argparse.Namespace) -> int:
    aid = registry.resolve(store, args.id)
    stage = store.manifest(aid)["stage"]
    entry = registry.promote(store, aid, args.alias, note=args.note)
    before = f" (was {entry['previous']})" if entry["previous"] else ""
    print(f"{args.alias} -> {aid}{before}")
    if stage not in EXPORTABLE:
        print(
            f"warning: {aid} is a {stage} artifact, not a model: `dapt export` and `dapt embed` cannot use {args.alias!r}; "
            "promote a task model (f-…, or `dapt export best`), an m-… (pretrained), d-… (distilled) or b-… (base) id for a model hand-off",
            file=sys.stderr,
        )
    elif stage not in EMBEDDABLE:
        print(
            f"note: {aid} is an evaluation: `dapt export {args.alias}` exports the task model it chose on validation; "
            "`dapt embed` needs a model (promote that f-… or an m-… for it)",
            file=sys.stderr,
        )
    return 0


def _resolve(store: ArtifactStore, args: argparse.Namespace) -> int:
    print(registry.resolve(store, args.alias))
    return 0


def _history(store: ArtifactStore, args: argparse.Namespace) -> int:
    for e in registry.history(store, args.alias):
        note = f"  {e['note']}" if e.get("note") else ""
        print(f"{e['time']}  {e['id']}  (was {e['previous'] or '-'})  {e['user']}@{e['host']} pid {e['pid']}{note}")
    return 0


def _aliases(store: ArtifactStore, args: argparse.Namespace) -> int:
    found = registry.aliases(store)
    if not found:
        print(f"no aliases in the store {store.url}; `dapt artifacts promote ID ALIAS` creates one")
    for alias, e in found.items():
        print(f"{alias:<20} {e['id']}  {e['stage']:<9} since {e['time']}")
    return 0


def _verify(store: ArtifactStore, args: argparse.Namespace) -> int:
    aid = registry.resolve(store, args.id)
    problems = registry.verify(store, aid)
    if problems:
        print(f"{aid}: {len(problems)} file(s) do not match the manifest:", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    files = store.manifest(aid)["files"]
    print(f"{aid}: {len(files)} files match the manifest ({sum(f['size'] for f in files.values()) / 1e6:,.1f} MB)")
    return 0


def _gc(store: ArtifactStore, args: argparse.Namespace) -> int:
    plan = registry.gc_plan(store, keep_runs=args.keep_runs, keep_hours=args.keep_hours)
    for aid in plan["keep"]:
        print(f"keep    {aid}  ({plan['why'][aid]})")
    print(f"keep    {len(plan['keep'])} artifacts reachable from aliases and the last {args.keep_runs} of {plan['runs_recorded']} recorded runs")
    for aid in plan["young"]:
        print(f"keep    {aid}  (younger than {args.keep_hours:g} h)")
    for aid in plan["delete"]:
        print(f"{'delete' if args.yes else 'would delete'}  {aid}  {plan['sizes'][aid] / 1e6:,.1f} MB")
    stale = registry.stale_staging(store, keep_hours=args.keep_hours)
    for leftover in stale:
        print(f"{'delete' if args.yes else 'would delete'}  {leftover['path']}  {leftover['bytes'] / 1e6:,.1f} MB  "
              f"(staging folder of an interrupted publish, untouched for {leftover['age_hours']:,.0f} h)")  # fmt: skip
    staged = sum(leftover["bytes"] for leftover in stale)
    work = registry.abandoned_work(store, keep_hours=args.keep_hours)
    for folder in work:
        why = f"{folder['id']} is built since" if folder["built"] else f"a re-run with {folder['id']}'s settings would resume from them"
        print(f"{'delete' if args.yes else 'would delete'}  {folder['path']}  {folder['bytes'] / 1e6:,.1f} MB  "
              f"(checkpoints of a build untouched for {folder['age_hours']:,.0f} h; {why})")  # fmt: skip
    checkpoints = sum(folder["bytes"] for folder in work)
    total = (f"{len(plan['delete'])} artifacts, {plan['delete_bytes'] / 1e6:,.1f} MB, {len(stale)} staging folders, {staged / 1e6:,.1f} MB, "
             f"and {len(work)} checkpoint folders, {checkpoints / 1e6:,.1f} MB")  # fmt: skip
    if not args.yes:
        print(f"dry run: would delete {total}; run again with --yes to delete")
        return 0
    for aid in plan["delete"]:
        registry.delete_artifact(store, aid)
    for leftover in stale:
        registry.remove_staging(leftover)
    for folder in work:
        registry.remove_staging(folder)
    print(f"deleted {total}; freed {(plan['delete_bytes'] + staged + checkpoints) / 1e6:,.1f} MB")
    return 0


def _rm(store: ArtifactStore, args: argparse.Namespace) -> int:
    removed = registry.remove(store, args.id, force=args.force)
    also = f"; aliases {', '.join(removed['aliases'])} now point at nothing" if removed["aliases"] else ""
    print(f"removed {removed['id']} ({removed['bytes'] / 1e6:,.1f} MB){also}; the next run that needs it builds it again")
    return 0


REGISTRY_ACTIONS = {"promote": _promote, "resolve": _resolve, "history": _history, "aliases": _aliases, "verify": _verify, "gc": _gc, "rm": _rm}


def _export(args: argparse.Namespace) -> int:
    from pretrain.handoff.export import export, measurement_table

    setup_logging()
    facts = export(
        ArtifactStore(args.store), args.model, args.to, quantize=args.quantize, push_to_hub=args.push_to_hub, private=not args.public,
        format=args.format, overwrite=args.overwrite, test=args.test,
    )  # fmt: skip
    print(f"exported {facts['artifact']} to {args.to}: " + ", ".join(sorted(os.listdir(os.path.expanduser(args.to)))))
    if q := facts["onnx"]:
        print("\n".join(measurement_table(q)))
    if facts.get("hub_url"):
        print(f"pushed to {facts['hub_url']}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from pretrain.handoff.predict import predict

    setup_logging()
    result = predict(args.model, args.input, args.out, text_field=args.text_field, id_field=args.id_field, batch_size=args.batch_size,
                     max_seq_length=args.max_seq_length, on_empty=args.on_empty)  # fmt: skip
    print(f"{result['texts']:,} texts labelled ({result['runtime']}; {len(result['labels'])} labels; id field {result['id_field'] or 'file:line'}) -> {result['out']}")
    if skipped := result["skipped"]:
        print(f"skipped {len(skipped):,} rows with no text (not labelled): {', '.join(skipped[:10])}{', …' if len(skipped) > 10 else ''}")
    return 0


def _embed(args: argparse.Namespace) -> int:
    from pretrain.handoff.embed import embed

    setup_logging()
    store = ArtifactStore(args.store)
    model = args.model if os.path.isdir(args.model) else registry.resolve(store, args.model)
    result = embed(
        store, model, args.input, args.output, pooling=args.pooling, batch_size=args.batch_size,
        max_seq_length=args.max_seq_length, text_field=args.text_field, txt_mode=args.txt_mode, id_field=args.id_field,
    )  # fmt: skip
    ids = f", ids from {result['id_column']!r}" if result.get("id_column") else ""
    print(f"{result['texts']:,} embeddings ({result['dimensions']} dims, {result['pooling']} pooling, model {result['model']}{ids}) -> {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dapt", description="Domain-adaptive pretraining of BERT-family encoders.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error (also DAPT_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True)

    init = commands.add_parser("init", help="write a first config for your own files, sized for the base model and the corpus")
    init.add_argument("--corpus", nargs="+", required=True, metavar="PATH", help="domain text: files, folders, globs or URLs")
    init.add_argument("--task-train", metavar="FILE", help="labelled examples (JSONL, CSV, TSV or Parquet): the task's train split")
    init.add_argument("--task-test", metavar="FILE", help="the task's test split; without it a stratified share of --task-train is held out")
    init.add_argument("--base", default="bert-base-uncased", help="base model: a folder, pkg:module/dir or a Hub id (default bert-base-uncased)")
    init.add_argument("--out", default="dapt.yaml", help="the config to write (default dapt.yaml)")
    init.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    init.add_argument("--task-name", help="the task's name in reports, e.g. news-topics (default: from the --task-train file name)")

    for name, helptext in (("run", "run the whole pipeline as a Prefect flow"), ("plan", "the artifact id of every stage, and which are built"),
                           ("assess", "before pretraining: will it pay off? signals measured on your data, and the estimate")):  # fmt: skip
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
    id_help = "artifact id, a unique start of one (m-65e1), or an alias"
    show = actions.add_parser("show", help="an artifact's manifest")
    show.add_argument("id", help=id_help)
    lineage = actions.add_parser("lineage", help="the chain from an artifact back to the base model and raw files")
    lineage.add_argument("id", help=id_help)
    promote = actions.add_parser("promote", help="point an alias (e.g. production) at an artifact, after verifying it")
    promote.add_argument("id", help=id_help + " (a model: f-…, m-…, d-… or b-…, for export and embed)")
    promote.add_argument("alias", help="the name to point at it, e.g. production")
    promote.add_argument("--note", help="why, kept in the alias history")
    resolve = actions.add_parser("resolve", help="the artifact id an alias points at")
    resolve.add_argument("alias", help="the alias, e.g. production")
    history = actions.add_parser("history", help="every promotion of an alias: what it pointed at, when, who")
    history.add_argument("alias", help="the alias, e.g. production")
    alias_list = actions.add_parser("aliases", help="every alias and what it points at")
    verify = actions.add_parser("verify", help="re-hash every file against the manifest (exit 1 on a mismatch)")
    verify.add_argument("id", help=id_help)
    gc = actions.add_parser("gc", help="delete artifacts no alias or recent run needs, staging folders of interrupted publishes and old checkpoints (dry run unless --yes)")
    gc.add_argument("--keep-runs", type=int, default=5, help="keep the artifacts of the last N recorded pipeline runs (default 5)")
    gc.add_argument("--keep-hours", type=float, default=24.0, help="keep anything younger, a running pipeline may need it (default 24)")
    gc.add_argument("--yes", action="store_true", help="delete (default: only list what would be deleted)")
    rm = actions.add_parser("rm", help="delete one artifact (e.g. one that fails verify) so the next run rebuilds it")
    rm.add_argument("id", help="artifact id (not an alias)")
    rm.add_argument("--force", action="store_true", help="delete even when aliases point at it")
    for p in (listing, show, lineage, promote, resolve, history, alias_list, verify, gc, rm):
        p.add_argument("--store", default=DEFAULT_STORE, help=f"store folder or URL (default {DEFAULT_STORE}; env DAPT_STORE)")
    export = commands.add_parser("export", help="write a standalone Hugging Face folder with a model card (optionally int8, Hub)")
    export.add_argument("model", help="task model (f-…), encoder (m-…, d-…, b-…; a unique start of an id), an alias of one, "
                        "`best` (the task model the newest evaluation chose on validation) or an evaluation (e-…: its best task model)")
    export.add_argument("--to", required=True, help="folder to create (must not exist, or be empty, unless --overwrite)")
    export.add_argument("--overwrite", action="store_true", help="replace a previous export in --to (a folder holding only what dapt export wrote), once the new one is complete")
    export.add_argument("--format", choices=["onnx"], help="task models: also write model.onnx (fp32), measured against PyTorch on the task's test set")
    export.add_argument("--quantize", choices=["int8"], help="with --format onnx: also write model.int8.onnx (ONNX Runtime dynamic int8), measured")
    export.add_argument("--test", metavar="FILE", help="with --format onnx: measure on this labelled file (the task's fields) instead of the "
                        "test examples the run was scored on")
    export.add_argument("--push-to-hub", metavar="REPO", help="upload to this Hub model repo (token: HF_TOKEN or `hf auth login`)")
    export.add_argument("--public", action="store_true", help="with --push-to-hub: create the repo public (default private)")
    export.add_argument("--store", default=DEFAULT_STORE, help=f"store folder or URL (default {DEFAULT_STORE}; env DAPT_STORE)")
    embed = commands.add_parser("embed", help="one embedding per text (CLS or mean pooling) into a Parquet file")
    embed.add_argument("model", help="model artifact id (a unique start of one), alias, or a model folder (e.g. an export)")
    embed.add_argument("--input", required=True, help=".txt (one text per line), .jsonl, .csv/.tsv or .parquet, optionally compressed")
    embed.add_argument("--output", required=True, help="Parquet file to write: row, location, text, embedding")
    embed.add_argument("--pooling", choices=["cls", "mean"], default="cls", help="[CLS] vector, or the mean over the tokens (default cls)")
    embed.add_argument("--batch-size", type=int, default=32)
    embed.add_argument("--max-seq-length", type=int, default=None, help="truncate longer texts (default: the model's limit)")
    embed.add_argument("--text-field", default="text", help="JSONL field / CSV or Parquet column with the text (default text)")
    embed.add_argument("--id-field", help="the input's id field, written beside each embedding (default: `id` when there is one)")
    embed.add_argument("--txt-mode", choices=["line", "paragraph", "file"], default="line", help=".txt: one text per line (default), paragraph or file")
    embed.add_argument("--store", default=DEFAULT_STORE, help=f"store folder or URL (default {DEFAULT_STORE}; env DAPT_STORE)")
    predict = commands.add_parser("predict", help="label a file of texts with an exported task model (folder or .onnx) into JSONL/Parquet")
    predict.add_argument("model", help="an export folder of a task model (dapt export f-…), or model.onnx / model.int8.onnx in one")
    predict.add_argument("--input", required=True, help=".jsonl, .csv/.tsv, .parquet or .txt (one text per line), optionally compressed")
    predict.add_argument("--out", required=True, help="OUT.jsonl or OUT.parquet: id, label, scores (one row per input row, in order)")
    predict.add_argument("--text-field", default="text", help="field / column with the text (default text)")
    predict.add_argument("--id-field", default=None, help="field / column with the row's id (default: id if present, else file:line)")
    predict.add_argument("--batch-size", type=int, default=32)
    predict.add_argument("--max-seq-length", type=int, default=None, help="truncate longer texts (default: the fine-tuning run's limit)")
    predict.add_argument("--on-empty", choices=["skip", "fail"], default="skip", help="a row with no text: leave it out, counted (default), or stop")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"init": _init, "run": _run, "plan": _plan, "assess": _assess, "serve": _serve, "artifacts": _artifacts, "export": _export,
                "predict": _predict, "embed": _embed}  # fmt: skip
    if argv is None and args.command == "run":  # the process is `dapt run` (not a caller's main([...])): it owns its signals
        from flows.lifecycle import start_watchdog, stop_on_signals

        start_watchdog()
        stop_on_signals()
    debug = args.debug or os.environ.get("DAPT_DEBUG") == "1"
    try:
        return handlers[args.command](args)
    except UserError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # what a user can act on: a remote store or service out of reach, a read-only or full disk, ...
        if debug:
            raise
        if why := unreachable(e):
            where = f"store {args.store}" if getattr(args, "store", None) else "a remote file or service"
            line = f"{where}: cannot reach it: {why}"
        elif not isinstance(e, OSError) or (line := os_error_line(e)) is None:
            raise
        elif args.command == "artifacts":
            line = f"store {args.store}: {line}"
        print(f"error: {line} (`dapt --debug ...` shows where)", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        done = (": the run, its workers and the temporary Prefect server are stopped, nothing half-built was published; re-run the "
                "same command to go on (finished stages are cache hits, pretraining resumes from its last checkpoint)")  # fmt: skip
        print(f"error: stopped by {signal.Signals(signum).name}{done if args.command == 'run' else ''}", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
