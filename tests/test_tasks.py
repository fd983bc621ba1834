"""Reading, checking and encoding task data: every bad input is an error naming where, or a counted fix."""

import csv
import json

import numpy as np
import pytest

from conftest import write_jsonl
from pretrain.configfile import validate_config
from pretrain.core.config import EvaluateConfig, TaskConfig
from pretrain.core.errors import ConfigError, InputError
from pretrain.data.tasks import read_task
from pretrain.finetuning.finetune import IGNORE, encode
from pretrain.models.fast_tokenizers import load_fast_tokenizer


def _task(tmp_path, train, test, validation=None, **settings) -> TaskConfig:
    def place(rows, name):
        if isinstance(rows, str):  # file content as given (CoNLL)
            path = tmp_path / name
            path.write_text(rows)
            return str(path)
        return str(write_jsonl(tmp_path / name, rows))

    files = {"train_files": [place(train, "train.jsonl" if not isinstance(train, str) else "train.conll")],
             "test_files": [place(test, "test.jsonl" if not isinstance(test, str) else "test.conll")]}  # fmt: skip
    if validation is not None:
        files["validation_files"] = [place(validation, "validation.conll" if isinstance(validation, str) else "validation.jsonl")]
    return TaskConfig(**files, **settings)


def _rows(labels, text="Oil prices rose sharply in early trading on Monday."):
    return [{"text": f"{text} ({i})", "label": label} for i, label in enumerate(labels)]


CONLL = """-DOCSTART- -X- -X- O

Reuters NNP B-NP B-ORG
said VBD B-VP O
Saudi NNP B-NP B-LOC
Arabia NNP I-NP I-LOC
raised VBD B-VP O
output NN B-NP O

Sheikh NNP B-NP B-PER
Yamani NNP I-NP I-PER
spoke VBD B-VP O
"""


# --- single-label ------------------------------------------------------------------------------------


def test_empty_texts_are_dropped_and_counted(tmp_path):
    train = _rows(["a", "b"] * 10) + [{"text": "  ", "label": "a"}, {"text": None, "label": "b"}]
    data = read_task(_task(tmp_path, train, _rows(["a", "b"], text="Net profit fell.")), 0.2)
    assert len(data.train) + len(data.validation) == 20
    assert data.notes == ["train_files: dropped 2 rows with empty text (of 22)"]


def test_missing_label_column_names_file_and_line(tmp_path):
    train = _rows(["a", "b"]) + [{"text": "Oil rose.", "topic": "crude"}]
    with pytest.raises(InputError, match=r"train.jsonl:3: no field 'label' \(fields here: 'text', 'topic'\); set evaluate.task.label_field"):
        read_task(_task(tmp_path, train, _rows(["a"])), 0.2)


def test_empty_label_is_an_error(tmp_path):
    with pytest.raises(InputError, match=r"train.jsonl:2: empty label in 'label'"):
        read_task(_task(tmp_path, _rows(["a", " ", "b"]), _rows(["a"])), 0.2)


def test_test_label_never_in_train_is_an_error(tmp_path):
    with pytest.raises(InputError, match=r"evaluate.task.test_files: labels \['gold'\] never occur in the train files"):
        read_task(_task(tmp_path, _rows(["a", "b"] * 5), _rows(["a", "gold"])), 0.2)


def test_labels_outside_the_configured_list_are_an_error(tmp_path):
    task = _task(tmp_path, _rows(["a", "b", "c", "a", "b", "c"]), _rows(["a"]), labels=["a", "b"])
    with pytest.raises(InputError, match=r"train_files: 1 labels not in evaluate.task.labels: \['c'\] \(first at .*train.jsonl:3\)"):
        read_task(task, 0.2)


def test_configured_label_order_is_kept_and_unlearnable_labels_noted(tmp_path):
    task = _task(tmp_path, _rows(["b", "a"] * 10), _rows(["a", "b"]), labels=["b", "a", "z"])
    data = read_task(task, 0.2)
    assert data.labels == ["b", "a", "z"]
    assert any("['z'] of evaluate.task.labels never occur in train" in note for note in data.notes)


def test_a_class_with_one_example_falls_back_to_a_random_split(tmp_path):
    data = read_task(_task(tmp_path, _rows(["a", "b"] * 10 + ["rare"]), _rows(["a", "rare"])), 0.2)
    assert data.validation_from.startswith("random 20%")
    assert any("labels ['rare'] have a single example" in note for note in data.notes)
    assert len(data.train) + len(data.validation) == 21


def test_stratified_split_keeps_label_shares_and_is_fixed(tmp_path):
    task = _task(tmp_path, _rows(["a"] * 80 + ["b"] * 20), _rows(["a", "b"]))
    data = read_task(task, 0.1)
    assert data.validation_from.startswith("stratified 10%")
    assert sorted(data.validation.labels) == ["a"] * 8 + ["b"] * 2
    assert read_task(task, 0.1).validation.texts == data.validation.texts


def test_single_label_in_train_is_an_error(tmp_path):
    with pytest.raises(InputError, match=r"labels \['a'\] only; a classifier needs at least two"):
        read_task(_task(tmp_path, _rows(["a"] * 6), _rows(["a"])), 0.2)


def test_csv_and_tsv_with_configured_columns(tmp_path):
    for suffix, delimiter in ((".csv", ","), (".tsv", "\t")):
        path = tmp_path / f"train{suffix}"
        with open(path, "w", newline="") as f:
            writer = csv.writer(f, delimiter=delimiter)
            writer.writerow(["id", "body", "topic"])
            writer.writerows([[i, f"Some text, number {i}", "x" if i % 2 else "y"] for i in range(10)])
        data = read_task(TaskConfig(train_files=[str(path)], test_files=[str(path)], text_field="body", label_field="topic"), 0.2)
        assert data.labels == ["x", "y"] and data.test.texts[0] == "Some text, number 0"


def test_parquet_rows_and_token_lists(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "ner.parquet"
    pq.write_table(pa.table({"words": [["Oil", "rose"], ["Saudi", "Arabia", "said"]], "ner": [["O", "O"], ["B-LOC", "I-LOC", "O"]]}), path)
    task = TaskConfig(type="token", train_files=[str(path)], test_files=[str(path)], text_field="words", label_field="ner")
    data = read_task(task, 0.5)
    assert data.test.texts[1] == ["Saudi", "Arabia", "said"] and data.test.locations[1].endswith("ner.parquet:row 2")
    assert data.gold("test") == [["O", "O"], ["B-LOC", "I-LOC", "O"]]


# --- sentence pairs ----------------------------------------------------------------------------------


def test_sentence_pairs_are_encoded_as_two_segments(tmp_path, tiny_base):
    rows = [{"premise": "Oil prices rose.", "hypothesis": "Crude oil got dearer.", "label": "entailment"},
            {"premise": "The bank cut rates.", "hypothesis": "", "label": "neutral"},
            {"premise": "Gold fell.", "hypothesis": "Gold rose.", "label": "contradiction"}] * 4  # fmt: skip
    task = _task(tmp_path, rows, rows[:3], text_field="premise", text_pair_field="hypothesis")
    data = read_task(task, 0.25)
    assert any("dropped 4 rows with empty text" in note for note in data.notes)
    tokenizer = load_fast_tokenizer(tiny_base)
    encoded = encode(tokenizer, data, "test", 32)
    ids, types = encoded.input_ids[0], encoded.token_type_ids[0]
    assert ids.count(tokenizer.sep_token_id) == 2
    first_sep = ids.index(tokenizer.sep_token_id)
    assert set(types[: first_sep + 1]) == {0} and set(types[first_sep + 1 :]) == {1}
    assert tokenizer.decode(ids[first_sep + 1 : -1]) == "crude oil got dearer."


def test_token_tasks_take_no_sentence_pair(tmp_path):
    with pytest.raises(ConfigError, match="token tasks take one sequence of words"):
        validate_config({"ingest": {"inputs": []}, "pretrain": {"max_steps": 1},
                         "evaluate": {"task": {"type": "token", "train_files": ["x"], "test_files": ["x"], "text_pair_field": "b"}}})  # fmt: skip


# --- multi-label -------------------------------------------------------------------------------------


def test_multi_label_from_lists_and_separated_strings(tmp_path):
    train = [{"text": f"story {i}", "label": labels} for i, labels in enumerate([["acq", "earn"], "crude, ship", [], "earn"] * 3)]
    task = _task(tmp_path, train, train[:4], type="multi_label")
    data = read_task(task, 0.25)
    assert data.labels == ["acq", "crude", "earn", "ship"]
    gold = data.gold("test")
    assert gold.dtype == bool and gold.tolist() == [[1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 0, 0], [0, 0, 1, 0]]
    bad = _task(tmp_path, [{"text": "x", "label": {"a": 1}}], train[:1], type="multi_label")
    with pytest.raises(InputError, match=r"train.jsonl:1: 'label' holds dict; multi-label tasks need a list"):
        read_task(bad, 0.25)


# --- token tasks -------------------------------------------------------------------------------------


def test_conll_sentences_and_first_subtoken_alignment(tmp_path, tiny_base):
    task = _task(tmp_path, CONLL, CONLL, type="token")
    data = read_task(task, 0.5)
    assert data.labels == ["O", "B-LOC", "I-LOC", "B-ORG", "B-PER", "I-PER"]
    assert data.test.texts == [["Reuters", "said", "Saudi", "Arabia", "raised", "output"], ["Sheikh", "Yamani", "spoke"]]
    assert data.test.locations == [f"{tmp_path}/test.conll:3", f"{tmp_path}/test.conll:10"]
    tokenizer = load_fast_tokenizer(tiny_base)  # a 600-piece WordPiece: most words split into several pieces
    encoded = encode(tokenizer, data, "test", 64)
    for s, words in enumerate(data.test.texts):
        pieces = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in words]
        assert any(len(p) > 1 for p in pieces)
        expected = [IGNORE]  # [CLS]
        for word, p in zip(data.test.labels[s], pieces):
            expected += [data.labels.index(word)] + [IGNORE] * (len(p) - 1)  # first piece labelled, the rest ignored
        expected.append(IGNORE)  # [SEP]
        assert encoded.targets[s] == expected
        starts = list(np.cumsum([0] + [len(p) for p in pieces])[:-1] + 1)
        assert encoded.word_positions[s] == starts
    # truncation: words past max_seq_length have no position (predicted, scored, never dropped)
    short = encode(tokenizer, data, "test", 6)
    assert short.word_positions[0][0] == 1 and short.word_positions[0][-1] == -1
    assert short.unplaced_words > 0


def test_conll_column_problems_name_file_and_line(tmp_path):
    for content, message in (
        ("Reuters B-ORG\nsaid\n", r"train.conll:2: one column \('said'\); a CoNLL line needs a word and its tag"),
        ("Reuters NNP B-ORG\nsaid O\n", r"train.conll:2: 2 columns, but earlier lines have 3"),
        ("Reuters B_ORG\n", r"train.conll:1: tag 'B_ORG' \(word 'Reuters'\) is not a BIO tag"),
    ):
        with pytest.raises(InputError, match=message):
            read_task(_task(tmp_path, content, CONLL, type="token"), 0.5)
    # plain tags (POS) are fine with tag_scheme none, and the tag column is configurable
    data = read_task(_task(tmp_path, CONLL, CONLL, type="token", tag_scheme="none", conll_tag_column=1), 0.5)
    assert "NNP" in data.labels


def test_jsonl_token_rows_with_mismatched_lengths(tmp_path):
    rows = [{"tokens": ["Oil", "rose"], "tags": ["O", "O"]}, {"tokens": ["Saudi", "Arabia", "said"], "tags": ["B-LOC", "I-LOC"]}]
    task = _task(tmp_path, rows, rows[:1], type="token", text_field="tokens", label_field="tags")
    with pytest.raises(InputError, match=r"train.jsonl:2: 3 words but 2 tags; every word needs exactly one tag"):
        read_task(task, 0.5)


def test_given_validation_files_are_used(tmp_path):
    task = _task(tmp_path, CONLL, CONLL, validation=CONLL, type="token")
    data = read_task(task, 0.1)
    assert len(data.train) == 2 and len(data.validation) == 2
    assert data.validation_from.startswith("validation_files")


def test_evaluate_config_names(tmp_path):
    task = {"train_files": ["x"], "test_files": ["x"]}
    with pytest.raises(Exception, match="'adapted' is a reserved name"):
        EvaluateConfig(task=task, models=[{"name": "adapted", "source": "m-" + "0" * 20}])
    assert EvaluateConfig(task=task).seeds == [0, 1, 2]
    assert json.loads(EvaluateConfig(task=task).model_dump_json())["patience_epochs"] == 3
