"""A team's own path, as the README's "Your own data in 10 minutes" walks it: a folder of .txt documents and one
labelled CSV with no test file, every labelled text also a document of the folder; `dapt init`, the README's
`--set`, then the stages. What must hold: the held-out texts' documents are removed and named, the task model
exports in every format, the card and the hand-off facts name no folder of this machine, the model to hand over
is named (`best`), and each new option refuses bad input in one line.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from conftest import REUTERS, read_jsonl_gz
from flows.cli import main
from pretrain.chain import plan, run_stage
from pretrain.configfile import load_config
from pretrain.core.artifacts import ArtifactStore, file_digest
from pretrain.core.errors import InputError, UserError
from pretrain.handoff import export as export_module
from pretrain.scaffold import init


def _own_files(folder: Path, task_files) -> tuple[Path, Path]:
    """docs/ (every labelled text as a .txt document, plus 60 other stories) and labelled.csv (`;`, no test file)."""
    records = [json.loads(line) for line in task_files[0].read_text().splitlines()]
    labelled = {r["text"] for r in records}
    others = [r["text"] for r in read_jsonl_gz(REUTERS / "corpus.jsonl.gz", limit=200) if r["text"] not in labelled][:60]
    docs = folder / "docs"
    docs.mkdir(parents=True)
    for i, text in enumerate([r["text"] for r in records] + others):
        (docs / f"doc{i:03d}.txt").write_text(text)
    with open(folder / "labelled.csv", "w", newline="") as f:
        writer = csv.writer(f, delimiter=";")
        writer.writerow(["document", "category"])
        writer.writerows([r["text"], r["label"]] for r in records)
    return docs, folder / "labelled.csv"


@pytest.fixture(scope="module")
def own(tmp_path_factory, task_files, tiny_base):
    """The whole chain on the own-data path (init-written config, README's `--set pretrain.max_steps`), built to the report."""
    folder = tmp_path_factory.mktemp("team")
    docs, labelled = _own_files(folder, task_files)
    out = folder / "my.yaml"
    init([str(docs)], str(labelled), None, str(tiny_base), str(out))
    config = load_config(out, ["pretrain.max_steps=12", f"store={folder / 'store'}", "evaluate.num_epochs=4"])
    store = ArtifactStore(config.store)
    ids: dict[str, str] = {}
    for stage in plan(config):
        ids[stage] = run_stage(stage, config, store, ids)
    results = json.loads((store.local_dir(ids["evaluate"]) / "results.json").read_text())
    return folder, config, store, ids, results


def _no_local_path(text: str, folder: Path) -> None:
    """No part of the folder the data sat in (its path, the temporary root above it) is in `text`."""
    for part in (str(folder), str(folder.parent), folder.name):
        assert part not in text, f"{part!r} found"


@pytest.mark.slow
def test_the_held_out_texts_documents_are_removed_counted_and_named(own):
    folder, config, store, ids, results = own
    corpus = store.manifest(ids["ingest"])
    m, details = corpus["metrics"]["decontamination"], corpus["decontamination"]
    held = results["sizes"]["test"] + results["sizes"]["validation"]
    assert m["task_texts"] == held and m["removed"] >= held - 2  # each held-out text was a document (a few are near each other)
    assert {f["held_out_by"] for f in details["files"]} == {"test_fraction", "validation_fraction"}
    report = (store.local_dir(ids["report"]) / "report.md").read_text()
    assert "held out of labelled.csv by test_fraction" in report and "  Removed documents (the first 20 of" in report
    assert "  - `docs/doc" in report and ": an exact copy of labelled.csv:" in report
    assert "**Domain adaptation" in report.splitlines()[2] or "**No verdict" in report.splitlines()[2]
    assert "(single-label classification into 3 labels; test: " in report and "examples held out of labelled.csv by test_fraction)" in report
    assert "## Which model to hand over" in report and results["best"]["finetune"] in report
    blocks = store.manifest(ids["pretrain"])["metrics"]["validation_blocks"]  # 2% of 210 documents: a handful of blocks
    assert blocks < 50 and f"**Warning: the validation perplexity rests on {blocks} blocks of 64 tokens** (under 50)" in report
    _no_local_path(report, folder)


@pytest.mark.slow
def test_results_name_the_best_run_chosen_on_validation_and_export_best_takes_it(own, tmp_path, capsys):
    folder, config, store, ids, results = own
    best, metric = results["best"], results["primary_metric"]
    means = {name: sum(r["validation"][metric] for r in e["runs"]) / len(e["runs"]) for name, e in results["models"].items()}
    assert best["model"] == max(means, key=means.get) and "test scores played no part" in best["why"]
    assert best["finetune"] == results["models"][best["model"]]["best_run"]["finetune"]
    assert main(["export", "best", "--to", str(tmp_path / "a"), "--store", store.url]) == 0
    assert f"exported {best['finetune']} to" in capsys.readouterr().out
    assert export_module.export(store, ids["evaluate"][:6], tmp_path / "b")["artifact"] == best["finetune"]  # an evaluation: its best

    # Listing the runs says which model, rate and seed each is, and which one the evaluation chose.
    assert main(["artifacts", "list", "--stage", "finetune", "--store", store.url]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 6 and all(" lr 0.0005 seed " in line for line in listed)
    chosen = [line for line in listed if "best of" in line]
    assert len(chosen) == 1 and chosen[0].startswith(best["finetune"]) and f"{best['model']} (" in chosen[0]

    # Promoting a task model is a hand-off export and embed can use: no warning; a corpus still warns.
    assert main(["artifacts", "promote", best["finetune"], "production", "--store", store.url]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["artifacts", "promote", ids["ingest"], "corpus", "--store", store.url]) == 0
    assert "warning: " in capsys.readouterr().err
    texts = tmp_path / "texts.jsonl"
    texts.write_text('{"text": "Oil prices rose."}\n{"text": "Net profit fell."}\n')
    assert main(["embed", "production", "--input", str(texts), "--output", str(tmp_path / "e.parquet"), "--store", store.url]) == 0


@pytest.mark.slow
def test_the_card_and_the_hand_off_facts_name_no_local_path_and_stay_short(own, tmp_path):
    folder, config, store, ids, results = own
    for name in (results["best"]["finetune"], ids["pretrain"]):
        export_module.export(store, name, tmp_path / name)
        card = (tmp_path / name / "README.md").read_text()
        facts = (tmp_path / name / "dapt_export.json").read_text()
        _no_local_path(card, folder)
        _no_local_path(facts, folder)
        assert "/tmp/" not in card and "site-packages" not in card
        assert len(card.splitlines()) < 150  # 210 corpus files: summarised, not listed
        headings = [line for line in card.splitlines() if line.startswith("## ")]
        assert len(headings) == len(set(headings))
    card = (tmp_path / results["best"]["finetune"] / "README.md").read_text()
    assert "held out of labelled.csv by test_fraction" in card and "`labelled.csv` (sha256 `" in card
    assert card.count(f"Evaluation `{ids['evaluate']}`") == 1
    encoder = (tmp_path / ids["pretrain"] / "README.md").read_text()
    assert "210 files" in encoder and "contents sha256:" in encoder and "`docs/doc000.txt`" in encoder  # the corpus, summarised
    verdict = next(c for c in results["comparisons"] if c["model"] == "adapted" and c["metric"] == results["primary_metric"])["verdict"]
    if verdict != "helped":  # the base model's own task model is named as as good a choice
        base = results["models"]["base"]["best_run"]["finetune"]
        assert f"the base model's task model `{base}`" in card or "That is the base model's own task model" in card


@pytest.mark.slow
def test_a_task_model_of_a_carved_test_split_exports_to_onnx_and_int8(own, tmp_path, capsys):
    folder, config, store, ids, results = own
    best = results["best"]["finetune"]
    run = json.loads((store.local_dir(best) / "run.json").read_text())
    record = run["test_examples"]
    assert (record["from"], record["held_out_by"], record["examples"]) == ("train_files", "test_fraction", results["sizes"]["test"])
    assert main(["export", "best", "--to", str(tmp_path / "x"), "--format", "onnx", "--quantize", "int8", "--store", store.url]) == 0
    q = json.loads((tmp_path / "x" / "onnx.json").read_text())
    assert q["test_examples"] == record["examples"] and q["fp32"]["accuracy"] == pytest.approx(run["test"]["accuracy"], abs=1e-5)
    assert q["test_source"] == f"the {record['examples']} test examples {best} was scored on (held out of labelled.csv by test_fraction)"
    assert "held out of labelled.csv by test_fraction" in (tmp_path / "x" / "README.md").read_text()

    # --test: another labelled file with the task's fields.
    other = folder / "other.csv"
    rows = list(csv.reader(open(folder / "labelled.csv"), delimiter=";"))
    with open(other, "w", newline="") as f:
        csv.writer(f, delimiter=";").writerows(rows[:11])
    assert main(["export", best, "--to", str(tmp_path / "y"), "--format", "onnx", "--test", str(other), "--store", store.url]) == 0
    q = json.loads((tmp_path / "y" / "onnx.json").read_text())
    assert q["test_examples"] == 10 and "given with --test" in q["test_source"]

    # The file the test split was held out of: gone, or changed. Each an error naming it and offering --test.
    moved = folder / "labelled.moved"
    (folder / "labelled.csv").rename(moved)
    try:
        assert main(["export", best, "--to", str(tmp_path / "z"), "--format", "onnx", "--store", store.url]) == 2
        err = capsys.readouterr().err
        assert "its test examples were held out of task.train_files" in err and "labelled.csv" in err and "which is gone" in err
        assert "--test FILE (the task's fields: text 'document', label 'category', ';'-separated)" in err
        with open(folder / "labelled.csv", "w", newline="") as f:
            csv.writer(f, delimiter=";").writerows(rows[:40])
        with pytest.raises(InputError, match=r"changed since the run was scored: \d+ of its \d+ distinct test texts are there; restore"):
            export_module.export(store, best, tmp_path / "z", format="onnx")
        assert not (tmp_path / "z").exists()
    finally:
        moved.replace(folder / "labelled.csv")


# --- bad input to the new options: one line naming the culprit -------------------------------------------


def test_test_needs_format_onnx_and_an_existing_labelled_file(tmp_path, capsys):
    store = tmp_path / "store"
    assert main(["export", "best", "--to", str(tmp_path / "x"), "--test", "t.csv", "--store", str(store)]) == 2
    assert capsys.readouterr().err == "error: --test t.csv: only the ONNX measurement reads a test set; add --format onnx, or leave out --test\n"
    assert main(["export", "best", "--to", str(tmp_path / "x"), "--format", "onnx", "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: best: no evaluation in the store") and "dapt artifacts list --stage finetune" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_test_file_problems_are_named(own, tmp_path):
    folder, config, store, ids, results = own
    best = results["best"]["finetune"]
    with pytest.raises(UserError, match=r"--test .*nope.csv: no such file; give a labelled file with the task's fields \(text 'document'"):
        export_module.export(store, best, tmp_path / "a", format="onnx", test=folder / "nope.csv")
    wrong = folder / "wrong.csv"
    wrong.write_text("text;label\nOil rose;crude\n")
    with pytest.raises(InputError, match=r"--test .*wrong.csv: .*no field 'document'.* \(the file needs the task's fields: text 'document', label 'category'"):
        export_module.export(store, best, tmp_path / "a", format="onnx", test=wrong)
    unknown = folder / "unknown.csv"
    unknown.write_text("document;category\nThe weather was fine all week;weather\n")
    with pytest.raises(InputError, match=r"labels \['weather'\] are not among the model's labels"):
        export_module.export(store, best, tmp_path / "a", format="onnx", test=unknown)
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_best_of_an_evaluation_without_one_says_what_to_do(own, tmp_path):
    folder, config, store, ids, results = own
    copy = tmp_path / "store"
    shutil.copytree(store.root, copy)
    path = copy / ids["evaluate"] / "results.json"
    older = json.loads(path.read_text())
    del older["best"]
    path.write_text(json.dumps(older))
    manifest = json.loads((copy / ids["evaluate"] / "manifest.json").read_text())  # as an older dapt wrote it: consistent
    manifest["files"]["results.json"] = file_digest(path)
    (copy / ids["evaluate"] / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=rf"best: evaluation {ids['evaluate']} names no best run \(its results.json is from a dapt before"):
        export_module.export(ArtifactStore(copy), "best", tmp_path / "x")
