import copy
import re

import pytest
import yaml

from conftest import ROOT, write_config
from pretrain.chain import config_warnings
from pretrain.configfile import load_config, validate_config
from pretrain.core.errors import ConfigError
from pretrain.training import kit


def test_demo_config_is_valid():
    config = load_config(ROOT / "configs" / "demo.yaml")
    # The budget its comment and the README state: 600 steps of 32 blocks of 128 tokens, 2.5M tokens.
    assert kit.total_steps(config.pretrain) * config.pretrain.global_batch_size * config.pretrain.max_seq_length == 2_457_600
    assert config.base_model.source == "pkg:cognition/model"
    assert config.vocab.mode == "keep"
    assert config.evaluate.num_epochs > 2 * config.evaluate.patience_epochs  # room to converge
    assert len(config.evaluate.seeds) >= 3  # enough for a verdict


def _assert_loaded_as_written(written, loaded, where: str) -> None:
    if isinstance(written, dict):
        for key, value in written.items():
            _assert_loaded_as_written(value, loaded[key], f"{where}.{key}" if where else key)
    elif isinstance(loaded, float):
        assert loaded == float(written), where
    else:
        assert loaded == written, where


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_preset_is_valid(path):
    config = load_config(path)
    written = yaml.safe_load(path.read_text())
    # Every value the preset writes is the value the pipeline runs with; every section it leaves out is off or default.
    _assert_loaded_as_written(written, config.model_dump(), "")
    assert (config.distill is None) == ("distill" not in written)
    # Its step budget, as the training kit derives it, warms up within the run and logs more than one point.
    assert config_warnings(config) == []
    assert config.evaluate.task.train_files and config.evaluate.task.test_files


@pytest.mark.parametrize("section", ["pretrain", "distill", "evaluate.tapt.pretrain"])
def test_every_training_section_needs_exactly_one_budget(tiny_config, section):
    raw = copy.deepcopy(tiny_config)
    raw["distill"] = {"student_layers": 1, "max_steps": 2}
    raw["evaluate"]["tapt"] = {"pretrain": {"max_steps": 2}}
    node = raw
    for key in section.split("."):
        node = node[key]
    node.pop("max_steps")
    with pytest.raises(ConfigError, match=rf"\n  - {re.escape(section)}: give exactly one of max_steps and max_tokens"):
        validate_config(raw)
    node.update(max_steps=2, max_tokens=1000)
    with pytest.raises(ConfigError, match=rf"\n  - {re.escape(section)}: give exactly one of max_steps and max_tokens"):
        validate_config(raw)


def test_a_token_budget_is_counted_in_steps_once_for_training_and_warnings(tiny_config):
    raw = copy.deepcopy(tiny_config)
    # 1000 tokens of 8 blocks of 32: ceil(3.9) = 4 steps, fewer than the warmup and the log interval.
    raw["pretrain"].update(max_steps=None, max_tokens=1000, warmup_steps=5, log_every_steps=10)
    config = validate_config(raw)
    assert kit.total_steps(config.pretrain) == 4
    warnings = config_warnings(config)
    assert warnings[0].startswith("pretrain.warmup_steps (5) is not below the run's 4 steps")
    assert warnings[1].startswith("pretrain.log_every_steps (10) is more than the run's 4 steps")


def test_every_problem_is_listed_with_its_key_path(tiny_config):
    raw = copy.deepcopy(tiny_config)
    raw["pretrain"]["max_steps"] = -5
    raw["pretrain"]["mlm_probability"] = 1.5
    raw["pretrain"]["learning_rte"] = 0.1
    raw["ingest"]["inputs"] = ["/nonexistent/corpus/*.jsonl"]
    raw["evaluate"]["task"]["test_files"] = ["/nonexistent/test.jsonl"]
    with pytest.raises(ConfigError) as e:
        validate_config(raw, source="my.yaml")
    message = str(e.value)
    assert message.startswith("my.yaml: 5 problems:")
    assert "pretrain.max_steps: Input should be greater than 0 (got -5)" in message
    assert "pretrain.mlm_probability: Input should be less than 1 (got 1.5)" in message
    assert "pretrain.learning_rte: unknown key; did you mean 'learning_rate'?" in message
    assert "ingest.inputs[0]: '/nonexistent/corpus/*.jsonl' matches no file" in message
    assert "evaluate.task.test_files[0]: '/nonexistent/test.jsonl' matches no file" in message


def test_cross_field_rules(tiny_config):
    raw = copy.deepcopy(tiny_config)
    raw["pretrain"].update(max_tokens=1000, global_batch_size=10, micro_batch_size=4, mask_replace_prob=0.9, random_replace_prob=0.2)
    with pytest.raises(ConfigError) as e:
        validate_config(raw)
    message = str(e.value)
    assert "give exactly one of max_steps and max_tokens" in message
    assert "global_batch_size (10) must be a multiple of micro_batch_size (4)" in message
    assert "mask_replace_prob + random_replace_prob must be at most 1" in message


def test_unknown_section_and_missing_section(tiny_config):
    raw = copy.deepcopy(tiny_config)
    raw["pretrian"] = raw.pop("pretrain")
    with pytest.raises(ConfigError) as e:
        validate_config(raw)
    assert "pretrian: unknown key; did you mean 'pretrain'?" in str(e.value)
    assert "pretrain: required key is missing" in str(e.value)


def test_bad_regex_and_missing_base_model(tiny_config):
    raw = copy.deepcopy(tiny_config)
    raw["ingest"]["strip_patterns"] = ["(unclosed"]
    raw["base_model"]["source"] = "./models/does-not-exist"
    raw["vocab"]["mode"] = "grow"
    with pytest.raises(ConfigError) as e:
        validate_config(raw)
    message = str(e.value)
    assert "ingest.strip_patterns: [0] '(unclosed' is not a valid regular expression" in message
    assert "base_model.source: './models/does-not-exist': no such folder" in message
    assert "vocab.mode: Input should be 'keep', 'extend' or 'replace' (got 'grow')" in message


def test_yaml_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("ingest:\n  inputs: [a\npretrain: {}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML at line \d+"):
        load_config(path)
    path.write_text("pretrain:\n  max_steps: 1\n  max_steps: 2\n")
    with pytest.raises(ConfigError, match="key 'max_steps' appears twice"):
        load_config(path)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")


def test_overrides(tmp_path, tiny_config):
    path = write_config(tmp_path / "c.yaml", tiny_config)
    config = load_config(path, ["pretrain.max_steps=3", "evaluate.seeds=[1, 2]"])
    assert config.pretrain.max_steps == 3
    assert config.evaluate.seeds == [1, 2]
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        load_config(path, ["pretrain.max_steps"])


def test_a_learning_rate_grid_is_checked_before_anything_runs(tiny_config, tmp_path):
    raw = copy.deepcopy(tiny_config)
    raw["evaluate"]["learning_rates"] = [5e-4, 0, 5e-4]
    with pytest.raises(ConfigError, match=r"evaluate\.learning_rates: every learning rate must be > 0 and <= 1 \(got \[0\.0\]\)"):
        validate_config(raw)
    raw["evaluate"]["learning_rates"] = [5e-4, 1e-3, 5e-4]
    with pytest.raises(ConfigError, match=r"evaluate\.learning_rates: learning rates must be distinct"):
        validate_config(raw)
    raw["evaluate"]["learning_rates"] = []
    with pytest.raises(ConfigError, match=r"evaluate\.learning_rates: List should have at least 1 item"):
        validate_config(raw)
    path = write_config(tmp_path / "c.yaml", tiny_config)
    assert load_config(path, ["evaluate.learning_rates=[2e-5, 5e-5]"]).evaluate.learning_rates == [2e-5, 5e-5]
