"""The code version in artifact ids: what the code does counts, how it is written and documented does not."""

import shutil

import pytest

from pretrain import artifacts
from pretrain.artifacts import NOT_CODE_DEPENDENCIES, code_dependencies, code_version
from pretrain.config import validate_config
from pretrain.pipeline import STAGES, plan

DISTILL = {"student_layers": 1, "max_seq_length": 32, "max_steps": 2, "global_batch_size": 8, "micro_batch_size": 8}

# The `pretrain` modules whose code counts in each stage's id (DVC's declared dependencies, checked);
# `__init__` is the package's, which `from pretrain import x` imports.
# A new import changes this: if the module cannot change what the stage writes, add it to
# artifacts.NOT_CODE_DEPENDENCIES instead of here.
DEPENDENCIES = {
    "base": {"base", "modelfiles"},
    "ingest": {"ingest", "clean", "decontaminate", "dedup", "formats", "io", "hf_datasets", "shards"},
    "vocab": {"vocab", "extend", "formats"},
    "tokens": {"tokens", "vocab", "extend", "formats", "shards"},
    "pretrain": {"__init__", "pretrain", "training", "mlm", "extend", "formats", "modelfiles"},
    "distill": {"__init__", "distill", "training", "mlm", "formats", "modelfiles"},
    # TAPT runs the ingest, tokens and pretrain stages inside evaluate: their code counts.
    "evaluate": {"evaluate", "finetune", "quantize", "scoring", "tasks", "tapt", "base", "pretrain", "training", "mlm", "tokens",
                 "vocab", "extend", "ingest", "clean", "decontaminate", "dedup", "formats", "io", "hf_datasets", "shards", "modelfiles", "__init__"},  # fmt: skip
    "report": {"report", "summaries", "cards"},
}


# A fine-tuning run (`f-`, built by the evaluate stage, not a stage of the chain) counts the recipe, the
# task reader and the scores; not the comparison, TAPT or int8 code that evaluate also imports.
FINETUNE_DEPENDENCIES = {"__init__", "finetune", "scoring", "tasks", "io", "hf_datasets", "modelfiles"}


def test_the_exclusion_list_names_real_modules():
    for name in NOT_CODE_DEPENDENCIES:
        assert artifacts._module_path(name).is_file(), f"NOT_CODE_DEPENDENCIES names {name}, which does not exist: remove or rename it"


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_counts_exactly_its_declared_modules(stage):
    found = {name.removeprefix("pretrain.") if name != "pretrain" else "__init__" for name in code_dependencies(f"pretrain.{stage}")}
    assert found == DEPENDENCIES[stage], (
        f"the code version of {stage} now hashes {sorted(found - DEPENDENCIES[stage])} and no longer "
        f"{sorted(DEPENDENCIES[stage] - found)}; update DEPENDENCIES, or NOT_CODE_DEPENDENCIES for modules that cannot change an output"
    )


@pytest.fixture
def edit(tmp_path, monkeypatch):
    """Edit a copy of the package's source; `code_version` then reads the copy. Returns edit(module, old, new)."""
    copy = tmp_path / "pretrain"
    shutil.copytree(artifacts._PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(artifacts, "_PACKAGE_DIR", copy)
    code_version.cache_clear()

    def apply(module: str, old: str, new: str) -> None:
        path = copy / f"{module}.py"
        source = path.read_text()
        assert source.count(old) == 1, f"{module}.py no longer contains {old!r} exactly once: update this test's edit"
        path.write_text(source.replace(old, new))
        code_version.cache_clear()

    yield apply
    code_version.cache_clear()


@pytest.fixture
def config(tiny_config):
    return validate_config({**tiny_config, "distill": DISTILL})


def _changed(before: dict, after: dict) -> set[str]:
    assert before.keys() == after.keys()
    return {stage for stage in before if before[stage] != after[stage]}


def test_docstrings_comments_and_formatting_change_no_id(config, edit):
    before = plan(config)
    assert list(before) == list(STAGES)
    # A docstring of the config schema (config.py does not count at all: the resolved config is in the id).
    edit("config", '"""A labelled downstream task:', '"""A labelled task to fine-tune on:')
    # A comment, a docstring and the layout of a line in modules that do count.
    edit("pretrain", "    stage_main(STAGE)", "    stage_main(STAGE)  # the command line")
    edit("mlm", '"""A Hugging Face *ForMaskedLM model whose head', '"""A Hugging Face masked-LM model whose prediction head')
    edit("mlm", "        input_ids = input_ids.clone()", "        input_ids = (\n            input_ids.clone()  # the caller's ids stay as they were\n        )")
    assert plan(config) == before


def test_a_change_to_the_masking_changes_pretrain_and_everything_downstream_only(config, edit):
    before = plan(config)
    edit("mlm", "to_mask = action < self.mask_replace_prob", "to_mask = action <= self.mask_replace_prob")
    assert _changed(before, plan(config)) == {"pretrain", "distill", "evaluate", "report"}


def test_a_fix_in_the_csv_reader_changes_what_reads_records_but_not_the_base_model(config, edit):
    # io.py is imported by config.py, which every stage imports; it counts only where a stage reads records.
    before = plan(config)
    edit("io", "            yield record.get(spec.text_field)", "            yield record.get(spec.text_field) or None")
    assert _changed(before, plan(config)) == set(STAGES) - {"base"}


def test_a_fine_tuning_run_counts_exactly_its_declared_modules():
    found = {name.removeprefix("pretrain.") if name != "pretrain" else "__init__" for name in code_dependencies("pretrain.finetune")}
    assert found == FINETUNE_DEPENDENCIES


def test_a_change_to_the_comparison_keeps_every_fine_tuning_run(config, edit):
    from pretrain import finetune

    def run_id():
        return finetune.stage_id(config.evaluate, model="m-" + "0" * 20, learning_rate=1e-3, seed=0, sources=[])

    before, evaluation = run_id(), plan(config)["evaluate"]
    edit("evaluate", "return max(runs, key=lambda r: r[\"validation\"][metric])", "return min(runs, key=lambda r: r[\"validation\"][metric])")
    assert run_id() == before and plan(config)["evaluate"] != evaluation
    edit("finetune", "running += loss.detach()", "running += 2 * loss.detach()")
    assert run_id() != before
