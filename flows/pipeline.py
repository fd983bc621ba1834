"""Prefect flows: one per stage of the chain's table (`pretrain/chain.py`), and `pipeline` that chains them.

    dapt run configs/demo.yaml                  # the usual way in
    python -m flows.pipeline configs/demo.yaml  # the same, without the CLI

Each stage flow runs one task whose Prefect cache key is the stage's artifact id: unchanged inputs,
settings and code give the same id, so the task is a cache hit and nothing is rebuilt. The artifact
store stays the source of truth: when an id is missing from the store, the task runs again even if
Prefect remembers it (refresh_cache). Training is never retried; a failed task fails the run with
a state message naming the stage and the cause (`ingest: corpus.jsonl:2: not valid JSON`).

Retries, with exponential backoff, are for I/O only: a shard task (reading inputs, which may be remote,
and writing its result) when it failed with an OSError, and the base stage (copying or downloading the
model). Publishing to a remote store retries each upload inside `pretrain.core.artifacts`. Pretraining and
fine-tuning are never retried: a failure there is a bug or a bad setting, and a retry would only burn
GPU hours before failing the same way (a crashed pretraining resumes from its checkpoint on the next run).

Prefect artifacts, few and readable in the UI: each stage flow leaves one table on its run
(`dapt-<stage>`: artifact id, cache hit, seconds, where it is, inputs, outputs, key metrics), and the
pipeline run a summary table (`dapt-summary`, one row per stage) and the report (`dapt-report-page`, its
plots embedded as images). No link artifacts: a browser does not open `file://` links from the UI.

Progress of long loops goes to the run log as a line every 30 s (`pretrain.core.progress` in `log` mode,
set by every flow here): Prefect captures log records, and a terminal bar's redraws would garble them.

Every stage flow also runs alone (`ids` omitted: the ids of its inputs are planned from the config, and
they must be in the store), which is what the per-stage deployments in `prefect.yaml` do. What a stage
reads, and the function that builds it, are its record in `pretrain.chain.TABLE`.

Ingest and tokens fan out: their shards (ranges of the input files, ranges of the corpus) are Prefect
tasks on the flow's task runner, a process pool over this machine's cores by default, or a Dask
cluster (`ingest.parallel.dask_address`); then one task assembles the artifact. A shard task is
retried only when reading or writing failed (OSError), never for its computation.
"""

from __future__ import annotations

import base64
import os
import re
import sys
import time
from pathlib import Path

import flows  # noqa: F401  (Prefect defaults for a first run; must precede the prefect import)
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.states import Failed, State
from prefect.task_runners import ProcessPoolTaskRunner
from prefect.tasks import exponential_backoff

from flows.lifecycle import api_failure, start_api_server, without_heartbeats
from pretrain import chain, ingest, tokens
from pretrain.chain import decontamination_targets, enabled, input_ids, preflight, run_stage, stage_id
from pretrain.configfile import check_paths
from pretrain.core import progress, registry
from pretrain.core.artifacts import ArtifactStore
from pretrain.core.config import IngestConfig, ParallelConfig, PipelineConfig
from pretrain.core.errors import UserError
from pretrain.core.summaries import run_summary, stage_table, summary_rows
from pretrain.data.decontaminate import Targets
from pretrain.data.shards import in_process, progress_bar, progress_to
from pretrain.launch import launch_pretrain, needs_launcher


def _artifact_id_key(context, parameters: dict) -> str:
    return parameters["artifact_id"]


def _user_error(state: State) -> State | None:
    """A Failed state carrying just the message when `state` failed on a user mistake, else None.

    User mistakes (UserError) end the run with their message and no traceback; any other exception
    is a bug and propagates with its traceback.
    """
    if state.is_failed() and state.result(raise_on_failure=False) is None:
        return Failed(message=state.message)
    return None


@task(
    name="build-artifact",
    task_run_name="{stage} {artifact_id}",
    cache_key_fn=_artifact_id_key,
    persist_result=True,
    result_serializer="json",
)
def build_artifact(stage: str, config: PipelineConfig, ids: dict[str, str], artifact_id: str, plan: object | None = None) -> str | State:
    """`plan`: ingest's or tokens' plan, whose shard tasks the stage flow has run (only assembly is left)."""
    store = ArtifactStore(config.store)
    try:
        if stage == "pretrain" and needs_launcher(config.pretrain.launcher):
            # Several processes/GPUs/nodes: an `accelerate launch` job whose output goes into this run's log.
            launch_pretrain(config, on_line=get_run_logger().info)
            built = artifact_id if store.exists(artifact_id) else "(nothing published)"
        else:
            built = run_stage(stage, config, store, ids, plan=plan)
    except UserError as e:
        return Failed(message=f"{stage}: {e}")
    if built != artifact_id:  # the plan and the stage must agree, or caching would lie
        raise RuntimeError(f"{stage}: planned artifact {artifact_id} but built {built}")
    return built


# I/O-only retries: 3 more tries after 2, 4, 8 s (+-50% jitter, so many shards do not retry in step).
IO_RETRIES = {"retries": 3, "retry_delay_seconds": exponential_backoff(backoff_factor=2), "retry_jitter_factor": 0.5}
# Stages whose task only moves bytes (the base stage copies or downloads the model): retried on OSError.
IO_STAGES = {"base"}


def _retry_on_io(task, task_run, state) -> bool:
    """Retry only when reading or writing failed (storage, network), never for a computation."""
    try:
        state.result()
    except OSError:
        return True
    except BaseException:
        return False
    return False


def _build_task(stage: str):
    """build_artifact with the stage's retry policy: I/O stages retry on OSError, the others never."""
    if stage in IO_STAGES:
        return build_artifact.with_options(**IO_RETRIES, retry_condition_fn=_retry_on_io)
    return build_artifact


def _planned_ids(stage: str, config: PipelineConfig, store: ArtifactStore) -> dict[str, str]:
    """A stage flow run alone (a per-stage deployment): its inputs' ids, planned from the config."""
    return input_ids(stage, config, store, how_to_build="run the `{first}` deployment, or the pipeline")


def _stage_flow(stage: str):
    @flow(name=stage, flow_run_name=f"{stage}", validate_parameters=True)
    def stage_flow(config: PipelineConfig, ids: dict[str, str] | None = None) -> dict | State:
        """Build (or find in the store) this stage's artifact from the ids of the stages before it.

        Without `ids` (the stage run alone) they are planned from the config and must be in the store.
        """
        progress.set_mode("log")
        started = time.perf_counter()
        store = ArtifactStore(config.store)
        try:
            ids = _planned_ids(stage, config, store) if ids is None else ids
            aid = stage_id(stage, config, ids)
        except UserError as e:
            return Failed(message=f"{stage}: {e}")
        cached = store.exists(aid)
        return _assemble(stage, config, ids, aid, cached, started)

    stage_flow.__name__ = f"{stage}_flow"
    return stage_flow


# --- shard-parallel stages: ingest and tokens --------------------------------------------------------


_SHARD_TASK = {**IO_RETRIES, "retry_condition_fn": _retry_on_io, "cache_policy": NO_CACHE, "persist_result": False}


@task(name="ingest-shard", task_run_name="ingest shard {index}", **_SHARD_TASK)
def ingest_shard(index: int, pieces: list, config: IngestConfig, store_url: str, against: Targets | None = None) -> list | State:
    """Read, clean, filter, decontaminate and sign some input pieces into the store's shard cache."""
    try:
        summaries = ingest.process_shard(pieces, config, store_url, against)
    except UserError as e:
        return Failed(message=f"ingest: {e}")
    size, seconds = sum(s["bytes"] for s in summaries), sum(s["seconds"] for s in summaries)
    get_run_logger().info("ingest shard %d: %d pieces, %.1f MB in %.1f s (%.1f MB/s)", index, len(summaries), size / 1e6, seconds, size / 1e6 / max(seconds, 1e-9))
    return summaries


@task(name="tokens-shard", task_run_name="tokens {shard.split} shard {shard.index}", **_SHARD_TASK)
def tokens_shard(shard: tokens.TokenShard, store_url: str, corpus: str, vocab: str, artifact_id: str, encoding: tokens.Encoding) -> dict | State:
    """Tokenise some row groups of a corpus split into the store's shard cache."""
    try:
        counts = tokens.process_shard(shard, store_url, corpus, vocab, artifact_id, encoding)
    except UserError as e:
        return Failed(message=f"tokens: {e}")
    get_run_logger().info("tokens %s shard %d: %d tokens in %.1f s", shard.split, shard.index, counts["tokens"], counts["seconds"])
    return counts


def shard_runner(parallel: ParallelConfig):
    """The task runner for shard tasks: local processes, or Dask (a temporary local cluster, or an address)."""
    workers = parallel.workers or os.cpu_count() or 1
    if parallel.dask_address is None:
        return ProcessPoolTaskRunner(max_workers=workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise UserError("ingest.parallel.dask_address needs prefect-dask: pip install 'dapt[dask]'") from None
    if parallel.dask_address == "local":
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})
    return DaskTaskRunner(address=parallel.dask_address)


def _run_shards(stage: str, shard_task, calls: list[tuple], sizes: list[int], parallel: ParallelConfig) -> State | None:
    """Run the shard tasks (on the task runner, or in this process when the input is small); a Failed state on a user error."""
    if not calls:
        return None
    started = time.perf_counter()
    with progress_bar(sum(sizes), stage) as bar:
        if parallel.dask_address is None and in_process(parallel.workers, sum(sizes), len(calls)):
            # Little input: starting worker processes would cost more than it saves.
            states = []
            with progress_to(bar.update):
                for call in calls:
                    states.append(shard_task(*call, return_state=True))
                    if states[-1].is_failed():
                        break
        else:
            running = {shard_task.submit(*call): size for call, size in zip(calls, sizes)}
            states = []
            for future in as_completed(list(running)):
                future.wait()  # sets the final state the runner reported
                states.append(future.state)
                bar.update(running[future])  # per shard: progress inside a worker process stays there
    for state in states:
        if failed := _user_error(state):
            return failed
        state.result()  # re-raises a bug's exception
    seconds = time.perf_counter() - started
    get_run_logger().info("%s: %d shard tasks, %.1f MB in %.1f s (%.1f MB/s)", stage, len(calls), sum(sizes) / 1e6, seconds, sum(sizes) / 1e6 / max(seconds, 1e-9))
    return None


def _assemble(stage: str, config: PipelineConfig, ids: dict[str, str], aid: str, cached: bool, started: float, plan: object | None = None) -> dict | State:
    """Build the artifact (a cache hit when it is in the store), then record what the stage did."""
    state = _build_task(stage).with_options(refresh_cache=not cached)(stage, config, ids, aid, plan, return_state=True)
    if failed := _user_error(state):
        return failed
    state.result()  # re-raises a bug's exception
    seconds = time.perf_counter() - started
    get_run_logger().info("%s %s: %s in %.1f s", stage, aid, "cache hit" if cached else "built", seconds)
    record_stage(stage, ArtifactStore(config.store), aid, cached, seconds)
    return {"id": aid, "cached": cached, "seconds": round(seconds, 3)}


def record_stage(name: str, store: ArtifactStore, aid: str, cached: bool, seconds: float) -> None:
    """The stage's Prefect artifact: one table of what it read, wrote and measured, and where the artifact is."""
    manifest = store.manifest(aid)
    rows = stage_table(manifest, cached, seconds, chain.stage(name).figures)
    rows.insert(1, {"field": "in the store", "value": store.location(aid)})
    create_table_artifact(rows, key=f"dapt-{name}", description=f"{name} {aid}: what it read, wrote and measured")


@flow(name="ingest", flow_run_name="ingest", validate_parameters=True, task_runner=ProcessPoolTaskRunner())
def ingest_flow(config: PipelineConfig, ids: dict[str, str] | None = None) -> dict | State:
    """Plan the corpus, process the new or changed pieces as shard tasks, then deduplicate, split and publish."""
    progress.set_mode("log")
    started = time.perf_counter()
    ids = {} if ids is None else ids
    store = ArtifactStore(config.store)
    cfg = config.ingest
    try:
        plan = ingest.make_plan(cfg, store, against=decontamination_targets(config))
    except UserError as e:
        return Failed(message=f"ingest: {e}")
    cached = store.exists(plan.aid)
    if not cached:
        calls = [(i, shard, cfg, store.url, plan.against) for i, shard in enumerate(plan.shards)]
        if failed := _run_shards("ingest", ingest_shard, calls, [sum(p.size for p in s) for s in plan.shards], cfg.parallel):
            return failed
    return _assemble("ingest", config, ids, plan.aid, cached, started, plan=plan)


@flow(name="tokens", flow_run_name="tokens", validate_parameters=True, task_runner=ProcessPoolTaskRunner())
def tokens_flow(config: PipelineConfig, ids: dict[str, str] | None = None) -> dict | State:
    """Tokenise the corpus shard by shard, then publish the shards with their index."""
    progress.set_mode("log")
    started = time.perf_counter()
    store = ArtifactStore(config.store)
    parallel = config.ingest.parallel
    try:
        ids = _planned_ids("tokens", config, store) if ids is None else ids
    except UserError as e:
        return Failed(message=f"tokens: {e}")
    aid = stage_id("tokens", config, ids)
    cached = store.exists(aid)
    plan = None
    if not cached:
        try:
            plan = tokens.make_plan(parallel, store, corpus=ids["ingest"], vocab=ids["vocab"])
        except UserError as e:
            return Failed(message=f"tokens: {e}")
        calls = [(shard, store.url, ids["ingest"], ids["vocab"], aid, plan.encoding) for shard in plan.pending]
        if failed := _run_shards("tokens", tokens_shard, calls, [s.size for s in plan.pending], parallel):
            return failed
    return _assemble("tokens", config, ids, aid, cached, started, plan=plan)


SHARDED = {"ingest", "tokens"}
base_flow = _stage_flow("base")
vocab_flow = _stage_flow("vocab")
assess_flow = _stage_flow("assess")
pretrain_flow = _stage_flow("pretrain")
distill_flow = _stage_flow("distill")
tapt_corpus_flow = _stage_flow("tapt-corpus")
tapt_vocab_flow = _stage_flow("tapt-vocab")
tapt_tokens_flow = _stage_flow("tapt-tokens")
tapt_flow = _stage_flow("tapt")
evaluate_flow = _stage_flow("evaluate")
report_flow = _stage_flow("report")
# One flow per record of the table, by stage name (prefect.yaml deploys each by its name here).
STAGE_FLOWS = {
    "base": base_flow,
    "ingest": ingest_flow,
    "vocab": vocab_flow,
    "tokens": tokens_flow,
    "assess": assess_flow,
    "pretrain": pretrain_flow,
    "distill": distill_flow,
    "tapt-corpus": tapt_corpus_flow,
    "tapt-vocab": tapt_vocab_flow,
    "tapt-tokens": tapt_tokens_flow,
    "tapt": tapt_flow,
    "evaluate": evaluate_flow,
    "report": report_flow,
}


@flow(name="dapt-pipeline")
def pipeline(config: PipelineConfig) -> dict | State:
    """Every stage of the table that is on, in order: ingest -> vocab -> tokens -> pretrain (-> distill) (-> TAPT)
    -> evaluate -> report; returns ids, cache hits and the summary table."""
    logger = get_run_logger()
    progress.set_mode("log")
    # A deployment's parameters are validated by type only; the paths in them are checked here, before any
    # work, and the task files are read and checked (as `dapt plan` does) before any stage runs.
    if problems := check_paths(config.model_dump(mode="json")):
        return Failed(message="config: " + "; ".join(problems))
    try:
        for line in preflight(config):
            (logger.warning if line.startswith("warning: ") else logger.info)("%s", line.removeprefix("warning: "))
    except UserError as e:
        return Failed(message=f"evaluate.task: {e}")
    ids: dict[str, str] = {}
    cached: dict[str, bool] = {}
    for record in [s for s in chain.TABLE if enabled(s, config)]:
        stage = record.name
        stage_flow = STAGE_FLOWS[stage]
        if stage in SHARDED:
            try:
                stage_flow = stage_flow.with_options(task_runner=shard_runner(config.ingest.parallel))
            except UserError as e:
                return Failed(message=f"{stage}: {e}")
        state = stage_flow(config=config, ids=ids, return_state=True)
        if failed := _user_error(state):
            return failed
        if state.is_failed():
            # A bug, not a user mistake: name the stage and the exception, and keep it for the traceback.
            error = state.result(raise_on_failure=False)
            return Failed(message=f"{stage}: {type(error).__name__}: {error}", data=error)
        result = state.result()
        ids[stage], cached[stage] = result["id"], result["cached"]

    store = ArtifactStore(config.store)
    registry.record_run(store, config.name, ids)  # `dapt artifacts gc` keeps the last runs' artifacts
    rows = summary_rows(store, {s: aid for s, aid in ids.items() if s != "report"}, chain.key_figures(), cached)
    report_dir = store.local_dir(ids["report"])
    create_table_artifact(rows, key="dapt-summary", description=f"{config.name}: artifacts of this run")
    # Not `dapt-report`: that key is the report stage's table, and a second artifact under a key
    # becomes a new version of the first (the UI would show only one of them).
    create_markdown_artifact(_inline_images(report_dir), key="dapt-report-page", description=f"{config.name} report")
    hits = sum(cached.values())
    logger.info("%d of %d stages were cache hits; report: %s", hits, len(cached), report_dir / "report.md")
    comparison = (report_dir / "comparison.txt").read_text()
    return {"ids": ids, "cached": cached, "rows": rows, "comparison": comparison, "report": str(report_dir / "report.md")}


def _data_url(png: Path) -> str:
    # The store may be a local folder the Prefect UI cannot reach: the image travels inside the artifact.
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()


def _inline_images(report_dir: Path) -> str:
    """report.md with its PNGs embedded, so the Prefect artifact is complete on its own."""
    markdown = (report_dir / "report.md").read_text()
    return re.sub(r"\]\(([\w.-]+\.png)\)", lambda m: f"]({_data_url(report_dir / m.group(1))})", markdown)


def run_and_print(config: PipelineConfig) -> None:
    """`dapt run`: the pipeline flow in this process, then the stage table, the comparison and the
    report's path on stdout. A failed run raises: a UserError with the run's message when the input
    was at fault, else the bug's own exception (with its traceback)."""
    started = time.perf_counter()
    temporary_server = start_api_server()  # before the flow: a slow start on a loaded machine is retried, and a failure is one line
    try:
        with without_heartbeats(temporary_server):
            state = pipeline(config=config, return_state=True)
    except Exception as e:  # the engine's own calls to the Prefect API, after Prefect's retries
        if line := api_failure(e):
            raise UserError(line) from e
        raise
    if state.is_failed():
        error = state.result(raise_on_failure=False)
        if isinstance(error, BaseException):
            if line := api_failure(error):
                raise UserError(line) from error
            raise error  # a bug, not a user mistake: keep the traceback
        raise UserError(state.message)
    result = state.result()
    print(run_summary(result["rows"], result["comparison"], result["cached"], time.perf_counter() - started, result["report"]))


if __name__ == "__main__":
    # `dapt run` without the CLI; not through flows.cli, which would import this module a second time.
    import argparse

    from pretrain.configfile import load_config
    from pretrain.core.logs import setup_logging

    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description="Run the whole pipeline (as `dapt run`).")
    parser.add_argument("config", help="pipeline YAML, e.g. configs/demo.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config value (repeatable)")
    args = parser.parse_args()
    try:
        config = load_config(args.config, args.overrides)  # every config problem, before Prefect starts
        setup_logging()
        run_and_print(config)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
