"""The README is the user's manual: keep its config reference and commands true."""

import re
from pathlib import Path

from pretrain.config import BaseModelConfig, DistillConfig, EvaluateConfig, IngestConfig, ModelSource, PretrainConfig, TaptConfig, TaskConfig, VocabConfig

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
MAKEFILE = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
CI = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()


def test_every_config_key_is_documented():
    for model in (BaseModelConfig, IngestConfig, VocabConfig, PretrainConfig, DistillConfig, TaskConfig, EvaluateConfig, ModelSource, TaptConfig):
        for name in model.model_fields:
            documented = f"`{name}`" in README or f", `{name}`" in README or re.search(rf"`(task|tapt)\.{name}`", README)
            assert documented, f"{model.__name__}.{name}"


def test_the_two_commands_and_ci():
    assert re.search(r"^make demo\b", README, re.M) and re.search(r"^make test\b", README, re.M)
    assert re.search(r"^demo:", MAKEFILE, re.M) and re.search(r"^test:", MAKEFILE, re.M)
    assert "make test" in CI.splitlines()[-1]


def test_every_ingest_subsection_key_is_documented():
    from pretrain.config import DecontaminateConfig, DedupConfig, ParallelConfig

    for prefix, model in (("dedup", DedupConfig), ("decontaminate", DecontaminateConfig), ("parallel", ParallelConfig)):
        for name in model.model_fields:
            assert f"`{prefix}.{name}`" in README, f"{prefix}.{name}"
