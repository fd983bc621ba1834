"""Decontamination: corpus documents overlapping the task's test texts are removed, counted and named.

Contamination is planted into real Reuters stories from real R8 test texts: verbatim, embedded inside a
longer document, lightly edited. The matching is also checked against a brute-force computation of
its definition (normalised words, n-gram containment, shingle Jaccard) on edited copies.
"""

import json
import random
import re
import unicodedata

import pytest

from conftest import REUTERS, read_jsonl_gz, write_jsonl
from pretrain import ingest
from pretrain.chain import decontamination_targets, plan, run_stage
from pretrain.configfile import validate_config
from pretrain.core.artifacts import ArtifactStore
from pretrain.core.config import IngestConfig
from pretrain.core.errors import ConfigError, InputError
from pretrain.core.summaries import corpus_figures
from pretrain.data import decontaminate
from pretrain.data.clean import Cleaner
from pretrain.data.decontaminate import Decontaminator, Targets, TaskFile
from pretrain.report import decontamination_sentence

TRAILER = r"(?i)\s*reuter\s*\x03\s*$"


@pytest.fixture(scope="module")
def stories(task_files):
    """300 real corpus stories (raw, trailer included): none of them is an R8 test story, nor a story of the
    task's train file (its validation split, held out of it, is decontaminated too)."""
    cleaner = Cleaner(IngestConfig(inputs=["x"], strip_patterns=[TRAILER]))
    train = {cleaner(json.loads(line)["text"])[0] for line in task_files[0].read_text().splitlines()}
    found = [r["text"] for r in read_jsonl_gz(REUTERS / "corpus.jsonl.gz", limit=400)]
    return [t for t in found if (cleaner(t) or [None])[0] not in train][:300]


@pytest.fixture(scope="module")
def test_texts(task_files):
    return [json.loads(line)["text"] for line in task_files[1].read_text().splitlines()]


def edit(text: str, changes: int, seed: int = 0) -> str:
    """`text` with `changes` words replaced by a word the text does not have."""
    rng = random.Random(seed)
    words = text.split(" ")
    for i in rng.sample(range(len(words)), changes):
        words[i] = "zqxj"
    return " ".join(words)


def corpus_config(tiny_config, corpus: list[str], folder, **decontaminate) -> dict:
    path = write_jsonl(folder / "corpus.jsonl", [{"text": t} for t in corpus])
    return {**tiny_config, "ingest": {**tiny_config["ingest"], "inputs": [str(path)], "decontaminate": decontaminate}}


def build_corpus(raw: dict):
    config = validate_config(raw)
    store = ArtifactStore(config.store)
    aid = run_stage("ingest", config, store, {})
    return store, aid, store.manifest(aid)


def corpus_texts(store, aid) -> set[str]:
    import pyarrow.parquet as pq

    folder = store.local_dir(aid)
    return {t for split in ("train", "validation") for t in pq.read_table(folder / f"{split}.parquet").column("text").to_pylist()}


def test_planted_overlap_is_removed_and_counted_and_the_rest_kept(tmp_path, tiny_config, stories, test_texts, task_files):
    long_texts = [t for t in test_texts[2:] if len(t.split()) > 150]
    verbatim, embedded, edited = test_texts[0], test_texts[1], long_texts[0]
    planted = [verbatim, stories[10] + "\n\n" + embedded + "\n\n" + stories[11], edit(edited, 2)]
    corpus = stories[:100] + planted[:1] + stories[100:200] + planted[1:] + stories[200:]
    store, aid, manifest = build_corpus(corpus_config(tiny_config, corpus, tmp_path))

    m = manifest["metrics"]["decontamination"]
    assert (m["removed"], m["exact"], m["contained"], m["near"]) == (3, 1, 1, 1)
    # The validation split is held out of the train file (evaluate.validation_fraction): its texts are checked too.
    [test_file, validation] = manifest["decontamination"]["files"]
    assert m["task_texts"] == len(test_texts) + validation["texts"] and m["task_texts_found"] >= 3
    assert test_file["path"] == str(task_files[1]) and test_file["key"] == "test_files" and test_file["held_out_by"] is None
    assert (test_file["documents_removed"], test_file["texts"]) == (3, len(test_texts))
    assert (validation["key"], validation["path"], validation["held_out_by"]) == ("validation_files", str(task_files[0]), "validation_fraction")
    assert validation["documents_removed"] == 0 and validation["texts"] == 15
    assert {e["kind"] for e in manifest["decontamination"]["examples"]} == {"exact", "contained", "near"}

    # Exactly the planted documents are gone: the same corpus without decontamination keeps them and the rest.
    off = tmp_path / "off"
    off.mkdir()
    raw_off = corpus_config({**tiny_config, "store": str(tmp_path / "store-off")}, corpus, off, enabled=False)
    store_off, aid_off, manifest_off = build_corpus(raw_off)
    assert "decontamination" not in manifest_off["metrics"] and aid_off != aid
    cleaner = Cleaner(IngestConfig(inputs=["x"], strip_patterns=[TRAILER]))
    assert corpus_texts(store_off, aid_off) - corpus_texts(store, aid) == {cleaner(t)[0] for t in planted}

    # The counts reach the stage table and the report.
    assert "3 overlapping the R8-3 test and validation sets removed (3 test, 0 validation held out of train.jsonl)" in corpus_figures(manifest)
    assert decontamination_sentence(manifest).startswith(
        "Removed 3 documents overlapping the R8-3 test set and validation set (held out of train.jsonl by validation_fraction) "
        "(1 exact copies, 1 near duplicates, 1 containing a task text)"
    )
    assert "not checked" in decontamination_sentence(manifest_off)


def test_a_test_file_found_whole_in_the_corpus_is_removed_and_counted(tmp_path, tiny_config, stories, test_texts):
    store, aid, manifest = build_corpus(corpus_config(tiny_config, stories + test_texts, tmp_path))
    m = manifest["metrics"]["decontamination"]
    assert (m["removed"], m["exact"], m["task_texts_found"]) == (len(test_texts), len(test_texts), len(test_texts))
    assert manifest["decontamination"]["files"][0]["texts_found"] == len(test_texts)
    assert not corpus_texts(store, aid) & set(test_texts)


def test_too_little_corpus_left_is_an_error_naming_the_task_file(tmp_path, tiny_config, stories, test_texts, task_files):
    raw = corpus_config(tiny_config, test_texts + stories[:20], tmp_path)
    with pytest.raises(InputError) as error:
        build_corpus(raw)
    message = str(error.value)
    assert str(task_files[1]) in message and "evaluate.task.test_files" in message
    assert f"removed {len(test_texts)} of the {len(test_texts) + 20} corpus documents" in message
    assert "ingest.decontaminate.max_removed_fraction=0.5" in message
    assert ArtifactStore(raw["store"]).ids() == []  # nothing published

    # Allowed to remove that much, it goes on; too few left for a validation split is the same error.
    assert build_corpus({**raw, "ingest": {**raw["ingest"], "decontaminate": {"max_removed_fraction": 0.9}}})[2]["metrics"]["documents"] > 0
    few = corpus_config({**tiny_config, "store": str(tmp_path / "few")}, test_texts + stories[:2], tmp_path / "few-corpus", max_removed_fraction=1)
    with pytest.raises(InputError, match=r"too few to give both a train and a validation split.*evaluate\.task\.test_files"):
        build_corpus(few)


def test_the_corpus_id_follows_the_task_texts_not_labels_or_other_settings(tmp_path, tiny_config, task_files):
    def ingest_id(raw: dict) -> str:
        return plan(validate_config(raw), until="ingest")["ingest"]

    def with_task(**task) -> dict:
        evaluate = tiny_config["evaluate"]
        return {**tiny_config, "evaluate": {**evaluate, "task": {**evaluate["task"], **task}}}

    def with_decontaminate(raw: dict, **settings) -> dict:
        return {**raw, "ingest": {**raw["ingest"], "decontaminate": settings}}

    train, test = task_files
    records = [json.loads(line) for line in test.read_text().splitlines()]
    relabelled = write_jsonl(tmp_path / "relabelled.jsonl", [{**r, "label": "earn"} for r in records])
    edited = write_jsonl(tmp_path / "edited.jsonl", [{**records[0], "text": records[0]["text"] + " More."}] + records[1:])
    fewer_train = write_jsonl(tmp_path / "train.jsonl", [json.loads(line) for line in train.read_text().splitlines()][:-1])

    base = ingest_id(tiny_config)
    assert ingest_id({**tiny_config, "evaluate": {**tiny_config["evaluate"], "seeds": [3, 4], "learning_rate": 1e-3}}) == base
    assert ingest_id(with_task(name="renamed")) == base
    # The validation split is held out of the train file: another train file holds out other texts.
    assert ingest_id(with_task(train_files=[str(fewer_train)])) != base
    assert ingest_id(with_task(test_files=[str(relabelled)])) == base  # labels are not what decontamination reads
    assert ingest_id(with_decontaminate(tiny_config, max_removed_fraction=0.9)) == base  # a check, not an output
    assert ingest_id(with_task(test_files=[str(edited)])) != base
    assert ingest_id(with_task(validation_files=[str(relabelled)])) != base  # more texts to check against
    assert ingest_id(with_decontaminate(tiny_config, ngram_words=10)) != base
    off = ingest_id(with_decontaminate(tiny_config, enabled=False))
    assert off != base
    assert ingest_id(with_task(test_files=[str(edited)]) | {"ingest": {**tiny_config["ingest"], "decontaminate": {"enabled": False}}}) == off
    assert ingest_id(with_decontaminate(tiny_config, enabled=False, ngram_words=10)) == off


def test_on_by_default_where_texts_are_given_and_errors_named(tmp_path, tiny_config, stories):
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"text": t} for t in stories[:60]])
    store = ArtifactStore(tmp_path / "store")
    # Without task texts (as TAPT builds a corpus of the task's own train text), `auto` is off.
    aid = ingest.run(IngestConfig(inputs=[str(path)], validation_fraction=0.1), store)
    assert "decontamination" not in store.manifest(aid)["metrics"]
    with pytest.raises(InputError, match="ingest.decontaminate.enabled is true but the stage was given no task texts"):
        ingest.run(IngestConfig(inputs=[str(path)], decontaminate={"enabled": True}), store)
    with pytest.raises(ConfigError) as error:
        validate_config({**tiny_config, "ingest": {**tiny_config["ingest"], "decontaminate": {"ngram_word": 8, "min_containment": 0}}})
    assert "ingest.decontaminate.ngram_word: unknown key; did you mean 'ngram_words'?" in str(error.value)
    assert "ingest.decontaminate.min_containment: Input should be greater than 0" in str(error.value)
    # A bad task file is named before any corpus is read.
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a test text", "label": "earn"}\n{"text": \n')
    raw = {**tiny_config, "evaluate": {**tiny_config["evaluate"], "task": {**tiny_config["evaluate"]["task"], "test_files": [str(broken)]}}}
    with pytest.raises(InputError, match=re.escape(f"{broken}:2")):
        decontamination_targets(validate_config(raw))


# --- the matching, against its definition --------------------------------------------------------------


def _words(text: str) -> list[str]:
    return re.sub(r"[\W_]+", " ", unicodedata.normalize("NFKC", text).casefold()).split()


def _grams(words: list[str], k: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + k]) for i in range(len(words) - k + 1)}


def expected_kinds(documents: list[str], texts: list[str], n=8, k=5, containment=0.5, threshold=0.8) -> list[str | None]:
    """The kind of overlap of each document by the definition, computed the slow way on Python sets."""
    words = [_words(t) for t in texts]
    shingles = [_grams(w, k) for w in words]
    grams = [_grams(w, min(n, len(w))) for w in words]
    kinds = []
    for document in documents:
        mine = _words(document)
        mine_shingles, mine_grams = _grams(mine, k), {m: _grams(mine, m) for m in {min(n, len(w)) for w in words}}
        if any(w == mine for w in words):
            kinds.append("exact")
        elif any(len(w) >= k and len(s & mine_shingles) / len(s | mine_shingles) >= threshold for w, s in zip(words, shingles)):
            kinds.append("near")
        elif any(len(w) >= decontaminate.SHORTEST_CONTAINED and len(g & mine_grams[min(n, len(w))]) >= containment * len(g)
                 for w, g in zip(words, grams)):  # fmt: skip
            kinds.append("contained")
        else:
            kinds.append(None)
    return kinds


def test_each_document_gets_the_kind_its_definition_gives(stories, test_texts, monkeypatch):
    extra = "Full width café " + test_texts[41]
    rows = [(f"test.jsonl:{i + 1}", t) for i, t in enumerate(test_texts)] + [("extra.jsonl:1", extra)]
    targets = Targets.from_files("R8", [(TaskFile("test_files", "test.jsonl", "0" * 64), rows)])
    cfg = IngestConfig(inputs=["x"])
    rng = random.Random(1)
    documents = list(stories[:40])
    for i, text in enumerate(test_texts[:40]):
        copy = edit(text, min(rng.choice([0, 1, 2, 4, 8, 16, 32]), len(text.split(" "))), seed=i)
        documents += [copy, stories[100 + i] + "\n" + copy]  # edited, alone and inside a longer document
    documents.append(test_texts[40].upper().replace(" ", "  ").replace(".", " ;"))  # case, spacing, punctuation
    documents.append(unicodedata.normalize("NFKD", "Ｆｕｌｌ ｗｉｄｔｈ café, " + test_texts[41]))  # full width, decomposed accent
    expected = expected_kinds(documents, [t for _, t in rows])
    assert expected[-2:] == ["exact", "exact"]
    counted = {kind: expected.count(kind) for kind in decontaminate.KINDS}
    assert counted["exact"] >= 5 and counted["near"] >= 3 and counted["contained"] >= 10 and expected.count(None) >= 40

    screen = Decontaminator(cfg, targets)
    assert screen.screen(documents, "corpus.jsonl") == [kind is not None for kind in expected]
    assert screen.removed == counted
    # Screened in many small passes, the same (a text's hashes do not depend on where it sits in a pass).
    monkeypatch.setattr(decontaminate, "_PASS_BYTES", 4096)
    again = Decontaminator(cfg, targets)
    assert [again.screen([d], "corpus.jsonl")[0] for d in documents[:20]] + again.screen(documents[20:], "c") == [k is not None for k in expected]
    assert again.removed == counted
    assert screen.screen(stories[40:100], "corpus.jsonl") == [False] * 60  # other stories: nothing


# --- splits carved out of the train file ---------------------------------------------------------------


def own_data(folder, tiny_config, task_files, stories) -> dict:
    """README's "Your own data" path: a folder of .txt documents and one labelled CSV with no test file, every
    labelled text also a document of the folder (as `dapt init` writes it: test_fraction, validation_fraction)."""
    import csv

    records = [json.loads(line) for line in task_files[0].read_text().splitlines()]
    docs = folder / "docs"
    docs.mkdir(parents=True)
    for i, text in enumerate([r["text"] for r in records] + stories[:60]):
        (docs / f"doc{i:03d}.txt").write_text(text)
    with open(folder / "labelled.csv", "w", newline="") as f:
        writer = csv.writer(f, delimiter=";")
        writer.writerow(["document", "category"])
        writer.writerows([r["text"], r["label"]] for r in records)
    task = {"name": "news", "train_files": [str(folder / "labelled.csv")], "test_fraction": 0.2, "text_field": "document",
            "label_field": "category", "csv_delimiter": ";"}  # fmt: skip
    return {**tiny_config, "ingest": {**tiny_config["ingest"], "inputs": [str(docs)], "txt_mode": "file"},
            "evaluate": {**tiny_config["evaluate"], "task": task, "validation_fraction": 0.1}}  # fmt: skip


def test_splits_carved_out_of_the_train_file_are_decontaminated_and_train_texts_stay(tmp_path, tiny_config, task_files, stories):
    from pretrain.data.tasks import held_out_texts, read_task

    raw = own_data(tmp_path, tiny_config, task_files, stories)
    config = validate_config(raw)
    data = read_task(config.evaluate.task, 0.1, log_notes=False)  # what the evaluate stage scores and selects on
    sets = {s.key: s for s in held_out_texts(config.evaluate.task, 0.1)}
    assert sorted(text for _, text in sets["test_files"].rows) == sorted(data.test.texts)
    assert sorted(text for _, text in sets["validation_files"].rows) == sorted(data.validation.texts)
    assert (sets["test_files"].held_out_by, sets["validation_files"].held_out_by) == ("test_fraction", "validation_fraction")

    store, aid, manifest = build_corpus(raw)
    m, details = manifest["metrics"]["decontamination"], manifest["decontamination"]
    held = len(data.test) + len(data.validation)
    assert m["task_texts"] == held and m["task_texts_found"] == held  # every held-out text was a document
    by_set = {f["key"]: f for f in details["files"]}
    assert by_set["test_files"]["documents_removed"] + by_set["validation_files"]["documents_removed"] == m["removed"] >= held - 2
    assert by_set["test_files"]["texts_found"] == len(data.test)
    cleaner = Cleaner(IngestConfig(inputs=["x"], strip_patterns=[TRAILER]))
    kept = corpus_texts(store, aid)
    assert not kept & {cleaner(t)[0] for t in data.test.texts + data.validation.texts}
    # The texts left in train are the task's unlabelled text: adaptation may read them. Only one that itself
    # overlaps a held-out text (Reuters reprints a story now and then) is removed.
    train_left = {cleaner(t)[0] for t in data.train.texts}
    off_raw = {**raw, "store": str(tmp_path / "off"), "ingest": {**raw["ingest"], "decontaminate": {"enabled": False}}}
    off_store, off_aid, _ = build_corpus(off_raw)
    lost = corpus_texts(off_store, off_aid) & train_left - kept
    assert len(lost) <= 2 and len(kept & train_left) > 100

    # Manifest, stage table and report say which set each removed document matched.
    assert {e["set"] for e in details["examples"]} == {"test_files", "validation_files"} or len(details["examples"]) == 20
    assert all(e["held_out_by"] in ("test_fraction", "validation_fraction") for e in details["examples"])
    figures = corpus_figures(manifest)
    assert f"{m['removed']} overlapping the news test and validation sets removed ({by_set['test_files']['documents_removed']} test held out of labelled.csv" in figures
    sentence = decontamination_sentence(manifest)
    assert "the news test set (held out of labelled.csv by test_fraction) and validation set (held out of labelled.csv by validation_fraction)" in sentence
    assert f"{len(data.test)} of its {len(data.test)} texts found" in sentence
    from pretrain.core.summaries import removed_documents

    named = removed_documents(manifest)
    assert named and all(line.startswith("`docs/doc") and "labelled.csv:" in line and "held out of labelled.csv by" in line for line in named)
    assert not any(str(tmp_path) in line for line in named + [figures, sentence])


def test_a_train_file_too_small_to_hold_anything_out_is_an_error_at_plan_time(tmp_path, tiny_config, task_files, stories):
    raw = own_data(tmp_path, tiny_config, task_files, stories)
    one_each = tmp_path / "one-each.csv"
    one_each.write_text("document;category\nOil prices rose sharply on Monday in New York;crude\nThe company agreed to buy its rival;acq\n")
    raw["evaluate"]["task"]["train_files"] = [str(one_each)]
    with pytest.raises(InputError, match=r"evaluate.task.train_files: 2 examples, too few to hold out a test split; give test_files"):
        plan(validate_config(raw), until="ingest")
