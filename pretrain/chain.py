"""The chain of stages, written down once: `TABLE`, one `Stage` record per stage.

A record says what a stage reads (its config section, and its input artifacts by role with the stage
that produces each), when it runs (optional stages: when their config key is set), how its artifact id
is computed before anything runs (`stage_id`), what builds the artifact (`run`), and which key figures
the tables show for it. Everything that runs stages reads this table, as Dagster's asset definitions or
Kedro's pipeline nodes: the Prefect flows (`flows/pipeline.py`: one subflow per record), `dapt plan` and
`dapt run` (`flows/cli.py`), a stage run alone (`python -m pretrain.<stage>`, through
`pretrain/stage_cli.py`) and the run summaries. To follow `dapt run` to a stage's code, read its record.

`plan(cfg)` computes the id every stage will produce (hashing the raw inputs and the base model files,
nothing else), so a stage can run alone: it finds its inputs in the store by id and never builds them
silently. This module imports every stage; no stage and no library module imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pretrain import assess, base, distill, evaluate, ingest, pretrain, report, tapt, tokens, vocab
from pretrain.core.artifacts import ArtifactStore
from pretrain.core.config import PipelineConfig, PretrainConfig, TaskConfig
from pretrain.core.errors import UserError
from pretrain.core.logs import get_logger, is_main_process
from pretrain.core.summaries import (
    Figures,
    assessment_figures,
    base_figures,
    corpus_figures,
    evaluation_figures,
    model_figures,
    student_figures,
    tokens_figures,
    vocab_figures,
)
from pretrain.data.decontaminate import Targets, TaskFile
from pretrain.data.tasks import held_out_texts
from pretrain.training import kit

log = get_logger(__name__)

# An input's producer: a stage name, or a function of the config that names one.
Producer = str | Callable[[PipelineConfig], str]


@dataclass(frozen=True)
class Stage:
    """One stage of the chain: what it reads, when it runs, and the functions that name and build its artifact."""

    name: str
    """Its name: its Prefect flow, its key in `plan`'s ids, its row in the stage tables."""
    section: str | None
    """The config key whose value `stage_id` and `run` take first (`pretrain`, `ingest.parallel`; `""`: the whole
    config); None: no settings."""
    inputs: dict[str, Producer]
    """Its input artifacts: role (the keyword `stage_id` and `run` take its id as) -> the stage that produces it.
    An input from a stage that is off is left out."""
    stage_id: Callable[..., str]
    """(settings, **input ids) -> the id of the artifact the stage will build: computed before anything runs."""
    run: Callable[..., str]
    """(settings, store, **input ids) -> the artifact's id, found in the store or built."""
    figures: Figures | None = None
    """A manifest of its artifact -> its key figures, one line (the stage tables and `dapt run`'s summary)."""
    when: str | None = None
    """The config key that switches an optional stage on: it runs when the key is set (a section given, or a
    switch such as `pretrain.assess` true). None: it always runs."""
    arguments: Callable[[PipelineConfig], dict[str, Any]] | None = None
    """More keyword arguments of `stage_id` and `run`, derived from the config."""

    @property
    def command(self) -> str:
        """The module whose `python -m` runs the stage alone (the one that defines its `run`)."""
        return self.run.__module__


def tapt_start(cfg: PipelineConfig) -> str:
    """The stage whose model TAPT continues: the adapted model (DAPT + TAPT) or the base model (TAPT alone)."""
    assert cfg.evaluate.tapt is not None
    return "pretrain" if cfg.evaluate.tapt.start_from == "adapted" else "base"


def _ingest_arguments(cfg: PipelineConfig) -> dict[str, Any]:
    """The task texts ingest keeps out of the corpus (`decontamination_targets`)."""
    return {"against": decontamination_targets(cfg)}


def _report_arguments(cfg: PipelineConfig) -> dict[str, Any]:
    """How the report writes each stage's row of its stage table: the `figures` of this table."""
    return {"key_figures": key_figures()}


# The TAPT stages run when this key is set.
TAPT_ON = "evaluate.tapt"
TABLE: tuple[Stage, ...] = (
    Stage("base", "base_model", {}, base.stage_id, base.run, base_figures),
    Stage("ingest", "ingest", {}, ingest.stage_id, ingest.run, corpus_figures, arguments=_ingest_arguments),
    Stage("vocab", "vocab", {"corpus": "ingest", "base": "base"}, vocab.stage_id, vocab.run, vocab_figures),
    # tokens has no settings that change its output; `ingest.parallel` says where its shards run.
    Stage("tokens", "ingest.parallel", {"corpus": "ingest", "vocab": "vocab"}, tokens.stage_id, tokens.run, tokens_figures),
    # The go/no-go estimate before pretraining (pretrain/assess.py): it judges the configured pretraining
    # and the task, so it reads the whole config; it never stops the chain.
    Stage("assess", "", {"base": "base", "corpus": "ingest", "vocab": "vocab", "tokens": "tokens"}, assess.stage_id, assess.run,
          assessment_figures, when="pretrain.assess"),  # fmt: skip
    Stage("pretrain", "pretrain", {"base": "base", "vocab": "vocab", "tokens": "tokens"}, pretrain.stage_id, pretrain.run, model_figures),
    Stage("distill", "distill", {"teacher": "pretrain", "tokens": "tokens"}, distill.stage_id, distill.run, student_figures, when="distill"),
    # Task-adaptive pretraining (pretrain/tapt.py): the task's train text, the starting model's own
    # tokenizer, its tokens, and the starting model pretrained on them.
    Stage("tapt-corpus", "evaluate", {}, tapt.corpus_id, tapt.build_corpus, corpus_figures, when=TAPT_ON),
    Stage("tapt-vocab", None, {"corpus": "tapt-corpus", "base": tapt_start}, tapt.vocab_id, tapt.build_vocab, vocab_figures, when=TAPT_ON),
    Stage("tapt-tokens", None, {"corpus": "tapt-corpus", "vocab": "tapt-vocab"}, tapt.tokens_id, tapt.build_tokens, tokens_figures, when=TAPT_ON),
    Stage("tapt", "evaluate.tapt.pretrain", {"base": tapt_start, "vocab": "tapt-vocab", "tokens": "tapt-tokens"}, tapt.model_id,
          tapt.build_model, model_figures, when=TAPT_ON),  # fmt: skip
    Stage("evaluate", "evaluate", {"base": "base", "model": "pretrain", "student": "distill", "tapt": "tapt"}, evaluate.stage_id, evaluate.run,
          evaluation_figures),  # fmt: skip
    Stage("report", None, {name: name for name in ("base", "ingest", "vocab", "tokens", "assess", "pretrain", "distill", "tapt-corpus", "tapt-vocab",
          "tapt-tokens", "tapt", "evaluate")}, report.stage_id, report.run, arguments=_report_arguments),  # fmt: skip
)
STAGES = tuple(stage.name for stage in TABLE)
_BY_NAME = {stage.name: stage for stage in TABLE}


def stage(name: str | Stage) -> Stage:
    """The record of the stage called `name` (a record is returned as it is)."""
    return name if isinstance(name, Stage) else _BY_NAME[name]


def key_figures() -> dict[str, Figures]:
    """Stage name -> how its key figures are written, for every stage that has them."""
    return {s.name: s.figures for s in TABLE if s.figures is not None}


def _at(cfg: PipelineConfig, key: str) -> Any:
    """The config's value at a dotted key (`evaluate.tapt.pretrain`); None when a section on the way is off."""
    value: Any = cfg
    for name in filter(None, key.split(".")):  # "": the whole config
        value = getattr(value, name)
        if value is None:
            return None
    return value


def settings_of(name: str | Stage, cfg: PipelineConfig) -> Any:
    """The config (sub)section a stage reads, or None."""
    s = stage(name)
    return _at(cfg, s.section) if s.section is not None else None


def enabled(name: str | Stage, cfg: PipelineConfig) -> bool:
    """Whether the stage runs under this config (an optional stage runs when its `when` key is set)."""
    s = stage(name)
    return s.when is None or _at(cfg, s.when) not in (None, False)


def switched_on(name: str | Stage, cfg: PipelineConfig) -> PipelineConfig:
    """The config with the stage's switch on, when its `when` key is a switch (`dapt assess` and `python -m
    pretrain.assess` run the assess stage whatever `pretrain.assess` says); `cfg` itself otherwise.
    Such a switch is in no other stage's id, so turning it on changes no other artifact."""
    s = stage(name)
    if s.when is None or _at(cfg, s.when) is not False:
        return cfg
    *path, key = s.when.split(".")
    sections = [cfg]
    for part in path:
        sections.append(getattr(sections[-1], part))
    value: Any = True
    for section, part in zip(reversed(sections), reversed([*path, key])):
        value = section.model_copy(update={part: value})
    return value


def run_through(until: str, cfg: PipelineConfig, store: ArtifactStore) -> dict[str, str]:
    """Build (or find) every stage that runs, up to and including `until`, in this process; their ids."""
    ids: dict[str, str] = {}
    for s in TABLE[: STAGES.index(until) + 1]:
        if enabled(s, cfg):
            ids[s.name] = run_stage(s, cfg, store, ids)
    return ids


def inputs_of(name: str | Stage, cfg: PipelineConfig) -> dict[str, str]:
    """Role -> producing stage of the inputs the stage reads under this config."""
    found = {role: producer if isinstance(producer, str) else producer(cfg) for role, producer in stage(name).inputs.items()}
    return {role: producer for role, producer in found.items() if enabled(producer, cfg)}


def _arguments(s: Stage, cfg: PipelineConfig, ids: dict[str, str]) -> tuple[Any, dict[str, Any]]:
    """The stage's settings, and its keyword arguments: input ids by role, and what `arguments` derives."""
    arguments: dict[str, Any] = {role: ids[producer] for role, producer in inputs_of(s, cfg).items()}
    if s.arguments is not None:
        arguments.update(s.arguments(cfg))
    return settings_of(s, cfg), arguments


def stage_id(name: str | Stage, cfg: PipelineConfig, ids: dict[str, str]) -> str:
    """The id the stage will produce, given the ids of the stages before it."""
    s = stage(name)
    settings, arguments = _arguments(s, cfg, ids)
    return s.stage_id(settings, **arguments)


def run_stage(name: str | Stage, cfg: PipelineConfig, store: ArtifactStore, ids: dict[str, str], plan: object | None = None) -> str:
    """Build (or find) one stage's artifact from the ids of its inputs; returns its id.

    `plan`: for ingest and tokens, their `make_plan(...)` when the caller has run its shard tasks.
    """
    s = stage(name)
    settings, arguments = _arguments(s, cfg, ids)
    if plan is not None:
        arguments["plan"] = plan
    aid = s.run(settings, store, **arguments)
    if s.figures is not None and is_main_process():
        log.info("%s %s: %s", s.name, aid, s.figures(store.manifest(aid)))
    return aid


def plan(cfg: PipelineConfig, until: str = STAGES[-1]) -> dict[str, str]:
    """Artifact ids of every stage that runs, up to and including `until`."""
    ids: dict[str, str] = {}
    for s in TABLE[: STAGES.index(until) + 1]:
        if enabled(s, cfg):
            ids[s.name] = stage_id(s, cfg, ids)
    return ids


def input_ids(name: str | Stage, cfg: PipelineConfig, store: ArtifactStore, how_to_build: str = "`dapt run`") -> dict[str, str]:
    """The ids of the stages before this one, checking that the artifacts it reads are in the store.

    `how_to_build` is the advice in the error; `{first}` in it becomes the first missing stage, `{command}`
    the module that runs it alone.
    """
    s = stage(name)
    # The stages before this one only: its own run plans it (ingest hashes its inputs once, there).
    before = STAGES[: STAGES.index(s.name)]
    ids = plan(cfg, until=before[-1]) if before else {}
    missing = [(p, ids[p]) for p in inputs_of(s, cfg).values() if not store.exists(ids[p])]
    if missing:
        first = stage(STAGES[min(STAGES.index(p) for p, _ in missing)])
        names = ", ".join(f"{p} ({aid})" for p, aid in missing)
        advice = how_to_build.format(first=first.name, command=first.command)
        raise UserError(f"{s.name} needs {names}, not in the store {cfg.store}. Build it first: {advice}")
    return ids


# --- before any stage runs ---------------------------------------------------------------------------


def preflight(cfg: PipelineConfig) -> list[str]:
    """The checks that read data, run before any stage: the task files are read (never tokenised) and
    checked as the evaluate stage will (fields, labels against `task.labels`, one class only, test
    labels never seen in train), so a bad task file fails in seconds instead of after pretraining.

    Returns what the user should know (suspicious settings, fixes the task data needs, the task's
    size), one line each; raises InputError naming every problem.
    """
    from pretrain.data.tasks import check_held_out, read_task

    data = read_task(cfg.evaluate.task, cfg.evaluate.validation_fraction, log_notes=False)
    check_held_out(data)  # a test or validation file that is train data is an error, a few shared examples a warning
    lines = [f"warning: {w}" for w in config_warnings(cfg)]
    lines += [f"warning: evaluate.task: {note}" for note in data.notes]
    return lines + [data.describe(cfg.evaluate.task.name)]


def config_warnings(config: PipelineConfig) -> list[str]:
    """Settings that are valid but almost certainly not meant; shown before a run, never fatal."""
    sections: list[tuple[str, PretrainConfig]] = [("pretrain", config.pretrain)]
    if config.distill is not None:
        sections.append(("distill", config.distill))
    if config.evaluate.tapt is not None:
        sections.append(("evaluate.tapt.pretrain", config.evaluate.tapt.pretrain))
    warnings = []
    for name, cfg in sections:
        steps = kit.total_steps(cfg)
        if cfg.warmup_steps >= steps:
            warnings.append(
                f"{name}.warmup_steps ({cfg.warmup_steps:,}) is not below the run's {steps:,} steps: the learning rate only "
                "warms up and never decays; lower warmup_steps (a few percent of the steps is usual)"
            )
        if cfg.eval_every_steps is not None and cfg.eval_every_steps >= steps:
            warnings.append(
                f"{name}.eval_every_steps ({cfg.eval_every_steps:,}) is not below the run's {steps:,} steps: validation perplexity "
                "is measured before and after training only, a curve of two points; lower eval_every_steps (about a quarter of the steps)"
            )
        if cfg.log_every_steps > steps:
            warnings.append(
                f"{name}.log_every_steps ({cfg.log_every_steps:,}) is more than the run's {steps:,} steps: the loss is logged "
                "once, at the end, and the loss curve has one point; lower log_every_steps"
            )
    return warnings


# --- the task texts ingest keeps out of the corpus ---------------------------------------------------


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
