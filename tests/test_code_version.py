"""The code version in artifact ids: what the code does counts, how it is written and documented does not."""

import shutil

import pytest

from pretrain.chain import STAGES, plan
from pretrain.configfile import validate_config
from pretrain.core import codeversion
from pretrain.core.codeversion import NOT_CODE_DEPENDENCIES, code_dependencies, code_version
from pretrain.core.ids import CODE_MODULES, PREFIXES

DISTILL = {"student_layers": 1, "max_seq_length": 32, "max_steps": 2, "global_batch_size": 8, "micro_batch_size": 8}
TAPT = {"pretrain": {"max_seq_length": 32, "max_steps": 2, "global_batch_size": 8, "micro_batch_size": 8}}
# What a change to pretraining's code changes: the adapted model and everything built from it, and the
# assessment (its pilot is the pretrain stage's training).
AFTER_DAPT = {"assess", "pretrain", "distill", "tapt-vocab", "tapt-tokens", "tapt", "evaluate", "report"}

# The `pretrain` modules whose code counts in the id of each kind of artifact the chain builds (DVC's
# declared dependencies, checked); the TAPT stages build artifacts of the ingest, vocab, tokens and
# pretrain kinds. Names are relative to `pretrain.`: `__init__` is pretrain/__init__.py, and a package
# (`core`, `models`, ...) is its `__init__.py`, which Python runs before any module in it (each holds
# only a docstring: tests/test_imports.py). A new import changes this: if the module cannot change what
# the stage writes, add it to codeversion.NOT_CODE_DEPENDENCIES instead of here.
DEPENDENCIES = {
    "base": {"__init__", "core", "base", "models", "models.modelfiles", "models.families"},
    "ingest": {"__init__", "core", "ingest", "data", "data.clean", "data.decontaminate", "data.dedup", "data.formats", "data.io", "data.hf_datasets",
               "data.shards"},  # fmt: skip
    "vocab": {"__init__", "core", "vocab", "data", "data.formats", "models", "models.extend", "models.fast_tokenizers", "models.modelfiles", "models.families"},
    "tokens": {"__init__", "core", "tokens", "data", "data.formats", "data.shards", "models", "models.extend", "models.fast_tokenizers"},
    # The pilot is the pretrain stage's own training; fertility is measured as the vocab stage measures it; the task reader counts classes.
    "assess": {"__init__", "core", "assess", "pretrain", "training", "training.kit", "training.mlm", "training.precision", "models", "models.extend",
               "models.fast_tokenizers", "models.modelfiles", "models.families", "data", "data.formats", "data.tasks", "data.io", "data.hf_datasets",
               "finetuning", "finetuning.budgets", "finetuning.scoring"},  # fmt: skip
    "pretrain": {"__init__", "core", "pretrain", "training", "training.kit", "training.mlm", "training.precision", "models", "models.extend",
                 "models.modelfiles", "models.families", "data", "data.formats"},  # fmt: skip
    "distill": {"__init__", "core", "distill", "training", "training.kit", "training.mlm", "training.precision", "models", "models.modelfiles",
                "models.families", "data", "data.formats"},  # fmt: skip
    # The models it compares are its inputs (TAPT is stages of its own): fine-tuning, scoring, int8, and
    # importing a listed model (base) with its tokenizer.
    "evaluate": {"__init__", "core", "evaluate", "base", "finetuning", "finetuning.budgets", "finetuning.finetune", "finetuning.scoring", "handoff",
                 "handoff.quantize", "data", "data.tasks", "data.io", "data.hf_datasets", "training", "training.precision", "models",
                 "models.modelfiles", "models.fast_tokenizers", "models.extend", "models.families"},  # fmt: skip
    # training: the package of flops.py, whose device peaks the report names (flops itself does not count).
    "report": {"__init__", "core", "report", "core.summaries", "training"},
}


# A fine-tuning run (`f-`, built by the evaluate stage, not a stage of the chain) counts the recipe, the
# task reader and the scores; not the comparison, TAPT or int8 code that evaluate also imports.
FINETUNE_DEPENDENCIES = {"__init__", "core", "finetuning", "finetuning.finetune", "finetuning.scoring", "data", "data.tasks", "data.io", "data.hf_datasets",
                         "models", "models.modelfiles", "models.families", "training", "training.precision"}  # fmt: skip


def _relative(names: set[str]) -> set[str]:
    return {name.removeprefix("pretrain.") if name != "pretrain" else "__init__" for name in names}


def test_the_exclusion_list_names_real_modules():
    for name in NOT_CODE_DEPENDENCIES:
        assert codeversion._module_path(name).is_file(), f"NOT_CODE_DEPENDENCIES names {name}, which does not exist: remove or rename it"


def test_every_kind_of_artifact_has_its_modules_declared():
    assert set(DEPENDENCIES) == set(PREFIXES) - {"finetune"}


def test_every_kind_of_artifact_is_named_by_the_code_of_a_module_that_exists():
    assert set(CODE_MODULES) == set(PREFIXES)
    for stage, module in CODE_MODULES.items():
        assert codeversion._module_path(module).is_file(), f"{stage} artifacts would carry the code version of {module}, which does not exist"
    with pytest.raises(ValueError, match="no such module"):
        code_version("pretrain.finetune")  # where fine-tuning was before the library was grouped (issue 25)


@pytest.mark.parametrize("stage", sorted(DEPENDENCIES))
def test_each_stage_counts_exactly_its_declared_modules(stage):
    found = _relative(code_dependencies(f"pretrain.{stage}"))
    assert found == DEPENDENCIES[stage], (
        f"the code version of {stage} now hashes {sorted(found - DEPENDENCIES[stage])} and no longer "
        f"{sorted(DEPENDENCIES[stage] - found)}; update DEPENDENCIES, or NOT_CODE_DEPENDENCIES for modules that cannot change an output"
    )


@pytest.fixture
def edit(tmp_path, monkeypatch):
    """Edit a copy of the package's source; `code_version` then reads the copy. Returns edit(module, old, new),
    `module` relative to `pretrain.` (`training.mlm`)."""
    copy = tmp_path / "pretrain"
    shutil.copytree(codeversion._PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(codeversion, "_PACKAGE_DIR", copy)
    code_version.cache_clear()

    def apply(module: str, old: str, new: str) -> None:
        path = copy / f"{module.replace('.', '/')}.py"
        source = path.read_text()
        assert source.count(old) == 1, f"{module}.py no longer contains {old!r} exactly once: update this test's edit"
        path.write_text(source.replace(old, new))
        code_version.cache_clear()

    yield apply
    code_version.cache_clear()


@pytest.fixture
def config(tiny_config):
    """Every stage on: assess, distill and TAPT too."""
    return validate_config({**tiny_config, "distill": DISTILL, "pretrain": {**tiny_config["pretrain"], "assess": True},
                            "evaluate": {**tiny_config["evaluate"], "tapt": TAPT}})  # fmt: skip


def _changed(before: dict, after: dict) -> set[str]:
    assert before.keys() == after.keys()
    return {stage for stage in before if before[stage] != after[stage]}


def test_docstrings_comments_and_formatting_change_no_id(config, edit):
    before = plan(config)
    assert list(before) == list(STAGES)
    # A docstring of the config schema (config.py does not count at all: the resolved config is in the id).
    edit("core.config", '"""A labelled downstream task:', '"""A labelled task to fine-tune on:')
    # A comment, a docstring and the layout of a line in modules that do count.
    edit("pretrain", "    main(STAGE)", "    main(STAGE)  # the command line")
    edit("training.mlm", '"""A Hugging Face *ForMaskedLM model whose head', '"""A Hugging Face masked-LM model whose prediction head')
    edit("training.mlm", "        input_ids = input_ids.clone()", "        input_ids = (\n            input_ids.clone()  # the caller's ids stay as they were\n        )")
    assert plan(config) == before


def test_a_change_to_the_masking_changes_pretrain_and_everything_downstream_only(config, edit):
    before = plan(config)
    edit("training.mlm", "to_mask = action < self.mask_replace_prob", "to_mask = action <= self.mask_replace_prob")
    # DAPT + TAPT continues from the adapted model: every TAPT stage that reads it changes too (not its corpus).
    assert _changed(before, plan(config)) == AFTER_DAPT


def test_a_fix_in_the_csv_reader_changes_what_reads_records_but_not_the_base_model(config, edit):
    # io.py is imported by configfile.py (which counts nowhere); it counts only where a stage reads records.
    before = plan(config)
    edit("data.io", "                yield row[column] if column < len(row) else None", "                yield (row[column] if column < len(row) else None) or None")
    assert _changed(before, plan(config)) == set(STAGES) - {"base"}


def test_a_fine_tuning_run_counts_exactly_its_declared_modules():
    found = _relative(code_dependencies("pretrain.finetuning.finetune"))
    assert found == FINETUNE_DEPENDENCIES


def test_a_change_to_the_comparison_keeps_every_fine_tuning_run(config, edit):
    from pretrain.finetuning import finetune

    def run_id():
        return finetune.stage_id(config.evaluate, model="m-" + "0" * 20, learning_rate=1e-3, seed=0, sources=[])

    before, evaluation = run_id(), plan(config)["evaluate"]
    edit("evaluate", "return max(runs, key=lambda r: r[\"validation\"][metric])", "return min(runs, key=lambda r: r[\"validation\"][metric])")
    assert run_id() == before and plan(config)["evaluate"] != evaluation
    edit("finetuning.finetune", "running += loss.detach()", "running += 2 * loss.detach()")
    assert run_id() != before


def test_the_text_of_log_calls_and_exception_messages_changes_no_id(config, edit):
    before = plan(config)
    # A log call's message (kit.py counts in pretrain, distill and tapt), and a string argument of one.
    edit("training.kit", 'log.info("%s: config %s", section, cfg.model_dump_json(), main_process_only=True)',
         'log.info("%s: training with the config %s", section, cfg.model_dump_json(), main_process_only=True)')
    edit("ingest", 'log.info("ingest: %d of %d pieces already in the shard cache (unchanged files)"',
         'log.info("ingest: %d of %d pieces were in the shard cache already"')
    # An exception's message: a plain string and the text of an f-string.
    edit("training.kit", 'raise InputError(f"the validation split has fewer than {cfg.max_seq_length} tokens; raise ingest.validation_fraction")',
         'raise InputError(f"validation split: under {cfg.max_seq_length} tokens (raise ingest.validation_fraction)")')
    edit("evaluate", 'raise InputError(f"evaluate.max_seq_length ({cfg.max_seq_length}) exceeds the {limit} tokens the {name} model',
         'raise InputError(f"evaluate.max_seq_length {cfg.max_seq_length} is more than the {limit} tokens the {name} model')
    assert plan(config) == before


def test_what_a_message_computes_and_other_strings_do_count(config, edit):
    before = plan(config)
    # A formatted value in a message runs code: it counts.
    edit("training.kit", 'raise InputError(f"the validation split has fewer than {cfg.max_seq_length} tokens;',
         'raise InputError(f"the validation split has fewer than {cfg.max_seq_length - 2} tokens;')
    after = plan(config)
    assert _changed(before, after) == AFTER_DAPT
    # A string that is not a message is behaviour: here a metric's name in the curve the artifact holds.
    edit("training.kit", 'point["validation_perplexity"] = perplexity(task, evaluation, accelerator)',
         'point["validation_ppl"] = perplexity(task, evaluation, accelerator)')
    assert _changed(after, plan(config)) == AFTER_DAPT


def test_message_text_is_blanked_only_in_log_calls_and_raised_exceptions():
    import ast

    source = '''
log = get_logger(__name__)
log.info("step %d of %s", step, "total", main_process_only=True)
raise InputError(f"{path}: bad {len(rows):,} rows", "hint")
other.info("kept")
result = {"key": f"text {value}"}
'''
    blanked = ast.unparse(codeversion.without_message_text(ast.parse(source)))
    assert "log.info('', step, '', main_process_only=True)" in blanked
    assert "raise InputError(f'{path}{len(rows)}', '')" in blanked
    assert "other.info('kept')" in blanked and "{'key': f'text {value}'}" in blanked


def test_checkpoint_cadence_and_retention_change_no_id(config):
    from pretrain.chain import plan as replan

    before = replan(config)
    changed = config.model_copy(update={
        "pretrain": config.pretrain.model_copy(update={"checkpoint_every_steps": 3, "keep_checkpoints": 5}),
        "distill": config.distill.model_copy(update={"checkpoint_every_steps": 1}),
        "evaluate": config.evaluate.model_copy(update={"tapt": config.evaluate.tapt.model_copy(update={
            "pretrain": config.evaluate.tapt.pretrain.model_copy(update={"checkpoint_every_steps": 1})})}),
    })  # fmt: skip
    assert replan(changed) == before
    # What a run computes still counts.
    assert replan(config.model_copy(update={"pretrain": config.pretrain.model_copy(update={"seed": 1})}))["pretrain"] != before["pretrain"]
