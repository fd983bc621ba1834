"""The README is the user's manual: keep its config reference and commands true."""

import re
from pathlib import Path

from pretrain.core.config import (
    BaseModelConfig,
    DistillConfig,
    DomainPretrainConfig,
    EvaluateConfig,
    IngestConfig,
    ModelSource,
    PipelineConfig,
    PretrainConfig,
    TaptConfig,
    VocabConfig,
)

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
MAKEFILE = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
CI = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()


def _keys(model, prefix: str = "", expand: tuple[str, ...] = ()) -> set[str]:
    """`model`'s keys as its section's table names them: `prefix` before each, the sections in `expand` by their keys."""
    keys = set()
    for name in model.model_fields:
        if name in expand:
            keys |= _keys(model.model_fields[name].annotation, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


# Each table of the config reference (its heading: **`pretrain`**, or `evaluate.tapt` (null: off):) and
# the keys it must list, exactly: a key of a subsection by its path in the section (`dedup.threshold`).
SECTIONS = {
    "base_model": _keys(BaseModelConfig),
    "ingest": _keys(IngestConfig, expand=("dedup", "decontaminate", "parallel")),
    "vocab": _keys(VocabConfig),
    "pretrain": _keys(DomainPretrainConfig, expand=("launcher",)),
    # distill's own keys; its table says every key of pretrain but the launcher comes with them (checked below).
    "distill": set(DistillConfig.model_fields) - set(PretrainConfig.model_fields),
    "evaluate": _keys(EvaluateConfig, expand=("task",)),
    "evaluate.tapt": _keys(TaptConfig, prefix="tapt."),
}


def config_reference() -> dict[str, list[str]]:
    """Section -> the keys in the first column of its table, from the README's "Config reference"."""
    text = README.split("\n## Config reference\n", 1)[1].split("\n## ", 1)[0]
    tables: dict[str, list[str]] = {}
    section = None
    for line in text.splitlines():
        heading = re.match(r"^\*\*`([\w.]+)`\*\*|^`([\w.]+)` \(null: off\):", line)
        if heading:
            section = heading.group(1) or heading.group(2)
            tables[section] = []
        elif line.startswith("| `") and section is not None:
            tables[section] += re.findall(r"`([\w.]+)`", line.split("|")[1])
    return tables


def test_every_config_key_is_in_the_table_of_its_own_section():
    tables = config_reference()
    assert set(tables) == set(SECTIONS)
    for section, expected in SECTIONS.items():
        listed = tables[section]
        assert not expected - set(listed), f"{section}: not in its table of the README's config reference: {sorted(expected - set(listed))}"
        assert not set(listed) - expected, f"{section}: the README's table lists keys the config does not have: {sorted(set(listed) - expected)}"
        assert len(listed) == len(set(listed)), f"{section}: a key is listed twice"


def test_the_rest_of_the_config_is_documented_where_the_tables_point():
    text = README.split("\n## Config reference\n", 1)[1].split("\n## ", 1)[0]
    # The top level: its plain keys in one sentence, each section a table of its own.
    top = next(line for line in text.splitlines() if line.startswith("Top level:"))
    sections = {name for name in PipelineConfig.model_fields if name in SECTIONS}
    assert {f"`{name}`" for name in set(PipelineConfig.model_fields) - sections} <= set(re.findall(r"`\w+`", top))
    # distill: "every key of `pretrain` above except `launcher`" is what the schema inherits.
    assert "Every key of `pretrain` above except `launcher`" in text
    assert set(PretrainConfig.model_fields) <= set(DistillConfig.model_fields)
    # The mappings written inside a row: a listed model (`evaluate.models`) and a dataset input (`ingest.inputs`).
    rows = {re.findall(r"`([\w.]+)`", line.split("|")[1])[0]: line for line in text.splitlines() if line.startswith("| `")}
    assert all(f"`{name}`" in rows["models"] for name in ModelSource.model_fields)
    assert all(f"{name}:" in rows["inputs"] for name in ("dataset", "split", "config", "revision"))


def test_the_two_commands_and_ci():
    assert re.search(r"^make demo\b", README, re.M) and re.search(r"^make test\b", README, re.M)
    assert re.search(r"^demo:", MAKEFILE, re.M) and re.search(r"^test:", MAKEFILE, re.M)
    assert "make test" in CI.splitlines()[-1]
