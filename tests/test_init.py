"""`dapt init`: a config from the user's own files (a folder of .txt, one labelled CSV), sized for the base
model and the corpus, checked as `dapt plan` checks one; with the tiny model, `dapt run` completes on it."""

import csv
import json
import re
from collections import Counter

import pytest
import yaml

from conftest import REUTERS, read_jsonl_gz
from flows.cli import main
from pretrain.scaffold import PASSES, PRESETS, CorpusFacts, TaskFacts, base_facts, render, sniff_delimiter


def _user_files(folder, delimiter=",", stories=60, examples=240):
    """What a data team brings: a folder of .txt documents (and a stray README.md), and one labelled CSV."""
    docs = folder / "docs"
    docs.mkdir(parents=True)
    for i, record in enumerate(read_jsonl_gz(REUTERS / "corpus.jsonl.gz", limit=stories)):
        (docs / f"story{i:03d}.txt").write_text(record["text"])
    (docs / "README.md").write_text("where these came from")
    return docs, _labelled_csv(folder / "labelled.csv", delimiter, examples)


def _labelled_csv(path, delimiter, examples):
    """`examples` R8 documents of 3 labels as `document,category` rows, separated by `delimiter`."""
    keep = {"earn": 0, "acq": 0, "crude": 0}
    rows = []
    for record in read_jsonl_gz(REUTERS / "r8_train.jsonl.gz"):
        if record["label"] in keep and keep[record["label"]] < examples // 3:
            keep[record["label"]] += 1
            rows.append((record["text"], record["label"]))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(["document", "category"])
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("delimiter", [",", ";"])
def test_init_finds_fields_delimiter_and_sizes_for_the_base(tmp_path, tiny_base, monkeypatch, capsys, delimiter):
    monkeypatch.chdir(tmp_path)
    _user_files(tmp_path, delimiter)
    assert main(["init", "--corpus", "docs", "--task-train", "labelled.csv", "--base", str(tiny_base), "--out", "my.yaml"]) == 0
    out = capsys.readouterr().out
    assert "text field 'document', label field 'category' (3 labels, single_label)" in out
    assert ("';'-separated" in out) == (delimiter == ";")
    assert "left out of the corpus (not a supported type): 1 .md" in out
    assert "checking my.yaml as `dapt plan` does:" in out and "task category: single_label, 3 labels; " in out
    assert "task 'category' (from the file and field names; --task-name to choose): labelled.csv: " in out
    config = yaml.safe_load((tmp_path / "my.yaml").read_text())
    assert config["ingest"]["inputs"] == ["docs/**/*.txt"] and config["ingest"]["txt_mode"] == "file"
    task = config["evaluate"]["task"]
    assert (task["text_field"], task["label_field"], task["test_fraction"]) == ("document", "category", 0.2)
    assert "test_files" not in task and task.get("csv_delimiter") == (";" if delimiter == ";" else None)
    # The tiny model (hidden 32, 64 positions): bert-tiny-like settings, sequences within its positions.
    assert config["pretrain"]["learning_rate"] == 5e-4 and config["evaluate"]["learning_rate"] == 5e-4
    assert config["pretrain"]["max_seq_length"] == 64 and config["evaluate"]["max_seq_length"] <= 64
    # The budget: PASSES passes over the estimated tokens, and the steps it gives fit the intervals.
    steps = -(-config["pretrain"]["max_tokens"] // (config["pretrain"]["global_batch_size"] * 64))
    assert config["pretrain"]["warmup_steps"] < steps and config["pretrain"]["log_every_steps"] <= steps
    assert "#" in (tmp_path / "my.yaml").read_text().split("max_tokens:")[1].splitlines()[0]  # the budget is explained
    assert main(["init", "--corpus", "docs", "--task-train", "labelled.csv", "--out", "my.yaml"]) == 2
    assert "my.yaml exists; choose another --out, or pass --force" in capsys.readouterr().err


def _facts(size_bytes):
    corpus = CorpusFacts(["corpus/"], 10, size_bytes, Counter({"jsonl": 10}), text_field="body", notes=["text field 'body'"])
    task = TaskFacts("train.jsonl", 1000, ["text", "label"], "text", "label", "single_label", Counter({"a": 500, "b": 500}), None, 300)
    return corpus, task


def test_settings_follow_the_base_models_size_class(tmp_path):
    tiny, base = tmp_path / "tiny", tmp_path / "base"
    for folder, hidden, layers in ((tiny, 128, 2), (base, 768, 12)):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"hidden_size": hidden, "num_hidden_layers": layers, "max_position_embeddings": 512}))
    configs = {}
    for folder in (tiny, base):
        facts = base_facts(str(folder))
        configs[facts.preset.name] = yaml.safe_load(render(*_facts(10_000_000), None, facts, "x"))
    small, large = configs["bert-tiny-like"], configs["bert-base-like"]
    assert small["pretrain"]["learning_rate"] == 5e-4 and large["pretrain"]["learning_rate"] == 1e-4
    assert small["evaluate"]["learning_rate"] == 5e-4 and large["evaluate"]["learning_rate"] == 2e-5
    assert small["pretrain"]["max_seq_length"] == 128 and large["pretrain"]["max_seq_length"] == 256
    assert large["pretrain"]["micro_batch_size"] < small["pretrain"]["micro_batch_size"]
    assert large["evaluate"]["max_seq_length"] == 256 and small["evaluate"]["max_seq_length"] == 128  # 300 words: ~390 tokens, capped
    assert small["ingest"]["text_field"] == "body"


def test_the_token_budget_is_passes_over_the_corpus_capped(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 768, "num_hidden_layers": 12}))
    facts = base_facts(str(tmp_path))
    corpus, task = _facts(9_000_000)  # about 2M tokens
    assert yaml.safe_load(render(corpus, task, None, facts, "x"))["pretrain"]["max_tokens"] == PASSES * corpus.tokens
    corpus, task = _facts(50_000_000_000)  # 50 GB: capped
    text = render(corpus, task, None, facts, "x")
    assert yaml.safe_load(text)["pretrain"]["max_tokens"] == PRESETS[2].max_tokens_cap
    assert "capped at 200,000,000 for a bert-base-like model" in text


def test_delimiter_sniffing_ignores_separators_inside_text(tmp_path):
    path = tmp_path / "t.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter=";")
        writer.writerow(["text", "label"])
        writer.writerows([("prices, they said, rose; then fell", "a"), ("one, two, three", "b")] * 5)
    assert sniff_delimiter(str(path), "csv") == ";"
    plain = tmp_path / "p.csv"
    plain.write_text("text,label\n\"a; b; c\",x\n\"d; e\",y\n")
    assert sniff_delimiter(str(plain), "csv") is None


@pytest.fixture(scope="module")
def prefect_harness():
    import flows  # noqa: F401  (Prefect defaults)
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.mark.slow
def test_dapt_run_completes_on_what_init_wrote_comma_and_semicolon(prefect_harness, tmp_path, tiny_base, monkeypatch, capsys):
    # One team folder, two labelled files: the ';'-separated one shares the corpus, so its run finds base,
    # corpus, vocabulary, tokens and pretrained model in the store and fine-tunes and reports on its own task file.
    # 120 labelled examples (40 a label): fine-tuning's cost, 6 runs of up to 10 epochs each per task file, halves.
    _user_files(tmp_path, ",", examples=120)
    _labelled_csv(tmp_path / "labelled-semicolon.csv", ";", 120)
    monkeypatch.chdir(tmp_path)
    reports, hits = [], []
    # The task is named from the file's stem without "labelled" (else from the label field): category, semicolon.
    for task, out, name in (("labelled.csv", "my.yaml", "category"), ("labelled-semicolon.csv", "my-semicolon.yaml", "semicolon")):
        assert main(["init", "--corpus", "docs", "--task-train", task, "--base", str(tiny_base), "--out", out]) == 0
        assert ("';'-separated" in capsys.readouterr().out) == ("semicolon" in task)
        assert main(["run", out]) == 0
        printed = capsys.readouterr().out
        assert "R8" not in printed and f"{name}: " in printed and "adapted − base macro-F1" in printed
        reports.append(re.search(r"report: (\S+report\.md)", printed)[1])
        hits.append(int(re.search(r"(\d+)/\d+ stages were cache hits", printed)[1]))
        assert "test_files: none given;" in open(reports[-1]).read()  # the held-out test split is named in the report's data notes
    second = yaml.safe_load((tmp_path / "my-semicolon.yaml").read_text())
    assert second["evaluate"]["task"]["csv_delimiter"] == ";" and len(set(reports)) == 2  # two evaluations, one per task file
    assert hits[0] == 0 and hits[1] >= 5  # base, ingest, vocab, tokens and pretrain were the first run's


def test_the_task_is_named_for_what_it_is_not_for_the_word_labelled(tmp_path, tiny_base, monkeypatch, capsys):
    from pretrain.scaffold import task_name_from

    assert task_name_from("news_topics_labelled.csv", "label") == "news-topics"
    assert task_name_from("data/train-labeled.tsv", "sentiment") == "sentiment"  # nothing left of the stem: the label field
    assert task_name_from("labelled.csv", "label") == "task"  # nor is the field a name
    monkeypatch.chdir(tmp_path)
    _user_files(tmp_path)
    assert main(["init", "--corpus", "docs", "--task-train", "labelled.csv", "--base", str(tiny_base), "--out", "my.yaml",
                 "--task-name", "news topics"]) == 0  # fmt: skip
    assert "task 'news topics': labelled.csv" in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "my.yaml").read_text())["evaluate"]["task"]["name"] == "news topics"


@pytest.mark.parametrize("name", ["", "   ", " padded", "two\nlines", "x" * 65, "#comment", "-flag"])
def test_a_bad_task_name_is_one_line_naming_it_and_writes_nothing(tmp_path, tiny_base, monkeypatch, capsys, name):
    monkeypatch.chdir(tmp_path)
    _user_files(tmp_path)
    assert main(["init", "--corpus", "docs", "--task-train", "labelled.csv", "--base", str(tiny_base), "--out", "my.yaml",
                 f"--task-name={name}"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith(f"error: --task-name {name!r}: give 1 to 64 printable characters") and err.count("\n") == 1
    assert not (tmp_path / "my.yaml").exists()


# The README's `--set` examples that it shows working (`pretrain.max_steps=true` is its example of an error).
README_ERROR_EXAMPLES = {"pretrain.max_steps=true"}


def test_every_readme_set_example_works_on_the_config_init_writes(tmp_path, tiny_base, monkeypatch, caplog):
    import re

    from conftest import ROOT
    from pretrain.chain import config_warnings
    from pretrain.configfile import load_config

    examples = sorted(set(re.findall(r"--set ([a-z_]+(?:\.[a-z_]+)+=[^\s`')]+)", (ROOT / "README.md").read_text())) - README_ERROR_EXAMPLES)
    examples = [e for e in examples if not e.startswith("key.")]  # the placeholder `--set key.path=value`
    assert "pretrain.max_steps=50" in examples and len(examples) >= 3
    monkeypatch.chdir(tmp_path)
    _user_files(tmp_path)
    assert main(["init", "--corpus", "docs", "--task-train", "labelled.csv", "--base", str(tiny_base), "--out", "my.yaml"]) == 0
    assert "max_tokens" in yaml.safe_load((tmp_path / "my.yaml").read_text())["pretrain"]
    for example in examples:
        load_config("my.yaml", [example])  # no exception: the override works on this config
    # An override of one of an exclusive pair replaces the other, and says so.
    with caplog.at_level("WARNING"):
        config = load_config("my.yaml", ["pretrain.max_steps=5"])
    assert config.pretrain.max_steps == 5 and config.pretrain.max_tokens is None
    assert "--set pretrain.max_steps replaces pretrain.max_tokens" in caplog.text and "the two are exclusive" in caplog.text
    config = load_config("my.yaml", ["evaluate.task.test_files=[labelled.csv]"])
    assert config.evaluate.task.test_fraction is None
    # An evaluation interval at or over the run's steps (a curve of two points) is said before the run.
    warnings = config_warnings(load_config("my.yaml", ["pretrain.max_steps=5", "pretrain.eval_every_steps=8"]))
    assert any(w.startswith("pretrain.eval_every_steps (8) is not below the run's 5 steps: validation perplexity is measured before "
                            "and after training only") for w in warnings)  # fmt: skip
