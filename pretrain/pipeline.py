"""The chain of stages without an orchestrator: artifact ids up front, and one stage at a time.

`plan(cfg)` computes the id every stage will produce (hashing the raw inputs and the base model files,
nothing else), so a stage can run alone: `python -m pretrain.<stage> --config X` finds its inputs in the
store by id and never builds them silently. `flows/` chains the same `run_stage` calls under Prefect.
"""

from __future__ import annotations

import argparse
import sys

from pretrain import base, distill, evaluate, ingest, pretrain, report, tokens, vocab
from pretrain.artifacts import ArtifactStore
from pretrain.config import PipelineConfig, TaskConfig, load_config
from pretrain.decontaminate import Targets, TaskFile
from pretrain.errors import UserError
from pretrain.logs import is_main_process, setup_logging
from pretrain.tasks import held_out_texts

STAGES = ("base", "ingest", "vocab", "tokens", "pretrain", "distill", "evaluate", "report")
# Each stage's input artifacts: role -> producing stage.
INPUTS = {
    "base": {},
    "ingest": {},
    "vocab": {"corpus": "ingest", "base": "base"},
    "tokens": {"corpus": "ingest", "vocab": "vocab"},
    "pretrain": {"base": "base", "vocab": "vocab", "tokens": "tokens"},
    "distill": {"teacher": "pretrain", "tokens": "tokens"},
    "evaluate": {"base": "base", "model": "pretrain", "student": "distill"},
    "report": {role: role for role in report.ROLES},
}
# Stages that run only when their config section is given; an input from one is left out when it is off.
OPTIONAL = {"distill"}


MODULES = {"base": base, "ingest": ingest, "vocab": vocab, "tokens": tokens, "pretrain": pretrain, "distill": distill,
           "evaluate": evaluate, "report": report}  # fmt: skip
# The config section each stage reads (report has no settings; tokens only where its shards run).
SECTIONS = {"base": "base_model", "ingest": "ingest", "vocab": "vocab", "tokens": "ingest.parallel", "pretrain": "pretrain",
            "distill": "distill", "evaluate": "evaluate"}  # fmt: skip


def section_of(stage: str, cfg: PipelineConfig) -> object:
    """The config (sub)section a stage reads, or None."""
    section: object = cfg
    for name in SECTIONS[stage].split(".") if stage in SECTIONS else ():
        section = getattr(section, name)
    return section if stage in SECTIONS else None


def enabled(stage: str, cfg: PipelineConfig) -> bool:
    """Whether `stage` runs under this config (an optional stage runs when its section is given)."""
    return stage not in OPTIONAL or section_of(stage, cfg) is not None


def inputs_of(stage: str, cfg: PipelineConfig) -> dict[str, str]:
    """Role -> producing stage of the inputs `stage` reads under this config."""
    return {role: producer for role, producer in INPUTS[stage].items() if enabled(producer, cfg)}


def decontamination_targets(cfg: PipelineConfig) -> Targets | None:
    """The texts ingest keeps out of the corpus (`task_targets` of evaluate.task); None when
    `ingest.decontaminate.enabled` is false."""
    if cfg.ingest.decontaminate.enabled is False:
        return None
    return task_targets(cfg.evaluate.task, cfg.evaluate.validation_fraction)


def task_targets(task: TaskConfig, validation_fraction: float) -> Targets:
    """Every text the task is scored or selected on (`tasks.held_out_texts`: test and validation files, and the
    splits carved out of the train files), with the set it belongs to and its location."""
    sets = held_out_texts(task, validation_fraction)
    return Targets.from_files(task.name, [(TaskFile(s.key, s.path, s.sha256, s.held_out_by), list(s.rows)) for s in sets])


def _arguments(stage: str, cfg: PipelineConfig, ids: dict[str, str]) -> tuple[object, dict[str, object]]:
    """The stage's config section, and its keyword arguments: input ids by role (ingest: the task texts, `against`)."""
    section = section_of(stage, cfg)
    arguments: dict[str, object] = {role: ids[producer] for role, producer in inputs_of(stage, cfg).items()}
    if stage == "ingest":
        arguments["against"] = decontamination_targets(cfg)
    return section, arguments


def stage_id(stage: str, cfg: PipelineConfig, ids: dict[str, str]) -> str:
    """The id `stage` will produce, given the ids of the stages before it."""
    section, inputs = _arguments(stage, cfg, ids)
    return MODULES[stage].stage_id(section, **inputs)


def run_stage(stage: str, cfg: PipelineConfig, store: ArtifactStore, ids: dict[str, str], plan: object | None = None) -> str:
    """Build (or find) one stage's artifact from the ids of its inputs; returns its id.

    `plan`: for ingest and tokens, their `make_plan(...)` when the caller has run its shard tasks.
    """
    section, inputs = _arguments(stage, cfg, ids)
    if plan is not None:
        return MODULES[stage].run(section, store, plan=plan, **inputs)
    return MODULES[stage].run(section, store, **inputs)


def plan(cfg: PipelineConfig, until: str = STAGES[-1]) -> dict[str, str]:
    """Artifact ids of every stage that runs, up to and including `until`."""
    ids: dict[str, str] = {}
    for stage in STAGES[: STAGES.index(until) + 1]:
        if enabled(stage, cfg):
            ids[stage] = stage_id(stage, cfg, ids)
    return ids


def preflight(cfg: PipelineConfig) -> list[str]:
    """The checks that read data, run before any stage: the task files are read (never tokenised) and
    checked as the evaluate stage will (fields, labels against `task.labels`, one class only, test
    labels never seen in train), so a bad task file fails in seconds instead of after pretraining.

    Returns what the user should know (suspicious settings, fixes the task data needs, the task's
    size), one line each; raises InputError naming every problem.
    """
    from pretrain.config import config_warnings
    from pretrain.tasks import read_task

    data = read_task(cfg.evaluate.task, cfg.evaluate.validation_fraction, log_notes=False)
    lines = [f"warning: {w}" for w in config_warnings(cfg)]
    lines += [f"warning: evaluate.task: {note}" for note in data.notes]
    return lines + [data.describe(cfg.evaluate.task.name)]


def input_ids(stage: str, cfg: PipelineConfig, store: ArtifactStore, how_to_build: str = "`dapt run`") -> dict[str, str]:
    """The ids of the stages before `stage`, checking that the artifacts it reads are in the store.

    `how_to_build` is the advice in the error; `{first}` in it becomes the first missing stage.
    """
    # The stages before `stage` only: its own run plans it (ingest hashes its inputs once, there).
    before = STAGES[: STAGES.index(stage)]
    ids = plan(cfg, until=before[-1]) if before else {}
    missing = [(s, ids[s]) for s in inputs_of(stage, cfg).values() if not store.exists(ids[s])]
    if missing:
        first = STAGES[min(STAGES.index(s) for s, _ in missing)]
        names = ", ".join(f"{s} ({aid})" for s, aid in missing)
        raise UserError(f"{stage} needs {names}, not in the store {cfg.store}. Build it first: {how_to_build.format(first=first)}")
    return ids


def stage_main(stage: str, argv: list[str] | None = None) -> None:
    """`python -m pretrain.<stage> --config X`: run one stage whose inputs are already in the store."""
    parser = argparse.ArgumentParser(prog=f"python -m pretrain.{stage}", description=f"Run the {stage} stage alone.")
    parser.add_argument("--config", required=True, help="pipeline YAML, e.g. configs/demo.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. pretrain.max_steps=20 (repeatable)")  # fmt: skip
    args = parser.parse_args(argv)
    setup_logging()
    try:
        cfg = load_config(args.config, args.overrides)
        if not enabled(stage, cfg):
            raise UserError(f"{stage} is off: {args.config} has no `{SECTIONS[stage]}` section")
        lines = preflight(cfg)  # a bad task file fails now, not after the stages before evaluate
        if is_main_process():
            print("\n".join(lines), file=sys.stderr)
        store = ArtifactStore(cfg.store)
        ids = input_ids(stage, cfg, store, how_to_build=f"`python -m pretrain.{{first}} --config {args.config}`, or the whole chain: `dapt run {args.config}`")
        print(run_stage(stage, cfg, store, ids))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
