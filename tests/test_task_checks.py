"""Task files are read and checked before any stage runs (`dapt plan`, `dapt run`, a stage alone), with
physical line numbers; a test split can be held out of a single labelled file; CSV delimiters."""

import copy
import csv
import json
import subprocess
import sys
import time
from collections import Counter

import pytest

from conftest import ROOT, read_jsonl_gz, write_config
from flows.cli import main
from pretrain.chain import preflight
from pretrain.configfile import validate_config
from pretrain.core.config import TaskConfig
from pretrain.core.errors import InputError
from pretrain.data.tasks import read_task


def _csv(path, rows, delimiter=",", header=("document", "category")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def labelled():
    """Real R8 stories with their labels: 3 labels, multi-line texts (the CSV records span lines)."""
    keep, rows = {"earn": 0, "acq": 0, "crude": 0}, []
    for r in read_jsonl_gz(ROOT / "data" / "reuters" / "r8_train.jsonl.gz"):
        if r["label"] in keep and keep[r["label"]] < 40:
            keep[r["label"]] += 1
            rows.append((r["text"], r["label"]))
    return rows


def test_plan_fails_fast_on_a_task_csv_without_the_text_field_and_runs_no_stage(tmp_path, tiny_config, labelled, capsys):
    train = _csv(tmp_path / "train.csv", labelled)
    raw = copy.deepcopy(tiny_config)
    raw["evaluate"]["task"]["train_files"] = [str(train)]
    path = write_config(tmp_path / "c.yaml", raw)
    started = time.perf_counter()
    assert main(["plan", str(path)]) == 2
    seconds = time.perf_counter() - started
    err = capsys.readouterr().err
    # The first record starts on line 2 (the header is line 1), whatever the lines its text spans.
    assert f"error: {train}:2: no field 'text' (fields here: 'document', 'category'); set evaluate.task.text_field" in err
    assert seconds < 10
    assert not (tmp_path / "store").exists() or not any(p.name[1] == "-" for p in (tmp_path / "store").iterdir())


def test_locations_are_physical_lines_of_multiline_csv_records(tmp_path, labelled):
    rows = [("first story\nwith two lines", "earn"), ("second", "acq"), ("third\n\nspans three", "")]
    path = _csv(tmp_path / "t.csv", rows, header=("text", "label"))
    cfg = TaskConfig(train_files=[str(path)], test_files=[str(path)])
    with pytest.raises(InputError) as e:
        read_task(cfg, 0.1)
    # Header line 1; record 1 on lines 2-3, record 2 on line 4, record 3 starts on line 5.
    assert str(e.value).startswith(f"{path}:5: empty label in 'label'")


def test_labels_are_checked_against_the_list_train_and_each_other_at_plan_time(tmp_path, tiny_config, labelled):
    train = _csv(tmp_path / "train.csv", labelled, header=("text", "label"))
    test = _csv(tmp_path / "test.csv", [*labelled[:5], ("an unseen kind of story", "grain")], header=("text", "label"))
    raw = copy.deepcopy(tiny_config)
    raw["evaluate"]["task"].update(train_files=[str(train)], test_files=[str(test)])
    with pytest.raises(InputError, match=r"test_files: labels \['grain'\] never occur in the train files"):
        preflight(validate_config(raw))
    raw["evaluate"]["task"]["labels"] = ["earn", "acq"]
    with pytest.raises(InputError, match=r"train_files: 1 labels not in evaluate.task.labels: \['crude'\] \(first at .*train.csv:\d+\)"):
        preflight(validate_config(raw))
    one = _csv(tmp_path / "one.csv", [(t, "earn") for t, _ in labelled[:20]], header=("text", "label"))
    raw["evaluate"]["task"].update(labels=None, train_files=[str(one)], test_files=[str(one)])
    with pytest.raises(InputError, match=r"labels \['earn'\] only; a classifier needs at least two"):
        preflight(validate_config(raw))


def test_problems_in_several_task_files_come_together(tmp_path, tiny_config, labelled):
    train = _csv(tmp_path / "train.csv", labelled)
    test = tmp_path / "test.jsonl"
    test.write_text('{"text": "fine", "label": "earn"}\n{"text": broken\n')
    raw = copy.deepcopy(tiny_config)
    raw["evaluate"]["task"].update(train_files=[str(train)], test_files=[str(test)])
    with pytest.raises(InputError) as e:
        preflight(validate_config(raw))
    message = str(e.value)
    assert message.startswith("2 problems:")
    assert f"{train}:2: no field 'text'" in message and f"{test}:2: not valid JSON" in message


def test_a_semicolon_csv_is_named_and_read_with_csv_delimiter(tmp_path, tiny_config, labelled):
    train = _csv(tmp_path / "train.csv", labelled, delimiter=";", header=("text", "label"))
    test = _csv(tmp_path / "test.csv", [(f"{text} (held out)", label) for text, label in labelled], delimiter=";", header=("text", "label"))
    raw = copy.deepcopy(tiny_config)
    raw["evaluate"]["task"].update(train_files=[str(train)], test_files=[str(test)])
    with pytest.raises(InputError, match=r"the header reads as one column holding ';': if that separates the fields, set evaluate.task.csv_delimiter: \";\""):
        preflight(validate_config(raw))
    raw["evaluate"]["task"]["csv_delimiter"] = ";"
    lines = preflight(validate_config(raw))
    assert lines[-1].startswith("task R8-3: single_label, 3 labels; ")


def test_csv_delimiter_must_be_one_character():
    raw = {"ingest": {"inputs": ["x"], "csv_delimiter": ";;"}, "pretrain": {"max_steps": 1}, "evaluate": {"task": {"train_files": ["y"], "test_files": ["y"]}}}
    with pytest.raises(Exception, match=r"ingest.csv_delimiter: give one character such as"):
        validate_config(raw)


def _test_fraction_task(tmp_path, rows, name="train.jsonl", **settings):
    path = tmp_path / name
    path.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in rows))
    return TaskConfig(train_files=[str(path)], test_fraction=0.25, **settings)


def test_test_fraction_holds_out_a_stratified_hash_split_independent_of_order(tmp_path, labelled):
    rows = labelled + labelled[:6]  # 6 exact duplicates: they must land on one side with their twin
    data = read_task(_test_fraction_task(tmp_path, rows), 0.1)
    train_texts = set(data.train.texts) | set(data.validation.texts)
    assert not train_texts & set(data.test.texts)  # no text on both sides
    per_label = Counter(label for _, label in labelled)
    distinct_test = Counter(label for _, label in set(zip(data.test.texts, data.test.labels)))
    assert distinct_test == {label: round(0.25 * n) for label, n in per_label.items()}  # stratified, over distinct texts
    assert any("held out as the test split (test_fraction 0.25, stratified by label, by a hash of the text)" in n for n in data.notes)
    shuffled = read_task(_test_fraction_task(tmp_path, list(reversed(rows)), "reversed.jsonl"), 0.1)
    assert sorted(shuffled.test.texts) == sorted(data.test.texts)  # the same examples, whatever the order
    more = read_task(_test_fraction_task(tmp_path, rows + [(f"another story about oil number {i}", "crude") for i in range(8)], "more.jsonl"), 0.1)
    assert len(set(more.test.texts) & set(data.test.texts)) >= len(data.test) - 2  # adding examples moves few across


def test_test_files_and_test_fraction_exclude_each_other():
    with pytest.raises(Exception, match="give test_files, or test_fraction"):
        TaskConfig(train_files=["a"])
    with pytest.raises(Exception, match="not both"):
        TaskConfig(train_files=["a"], test_files=["b"], test_fraction=0.2)


@pytest.mark.slow
def test_a_stage_run_alone_checks_the_task_files_first(tmp_path, tiny_config, labelled):
    train = _csv(tmp_path / "train.csv", labelled)
    raw = copy.deepcopy(tiny_config)
    raw["evaluate"]["task"]["train_files"] = [str(train)]
    path = write_config(tmp_path / "c.yaml", raw)
    result = subprocess.run([sys.executable, "-m", "pretrain.base", "--config", str(path)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{train}:2: no field 'text'" in result.stderr
    assert not (tmp_path / "store").exists() or not any(p.name.startswith("b-") for p in (tmp_path / "store").iterdir())
