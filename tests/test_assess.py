"""`dapt assess`: every signal measured on a tiny model and corpus, the no-MLM-head case, the estimate's wording."""

import json

import pytest

from conftest import build_until, write_config

from pretrain import assess
from pretrain.chain import plan
from pretrain.configfile import validate_config


@pytest.fixture
def assessed(tiny_config):
    raw = {**tiny_config, "pretrain": {**tiny_config["pretrain"], "assess": True}, "evaluate": {**tiny_config["evaluate"], "label_budgets": [10, None]}}
    config, store, ids = build_until(raw, "assess")
    return config, store, ids, json.loads((store.local_dir(ids["assess"]) / "assessment.json").read_text())


def test_assess_measures_and_prints_every_signal(assessed):
    config, store, ids, result = assessed
    s = result["signals"]
    assert s["mlm_head"] is True
    # The domain shift is the ratio of the two per-word perplexities, each over real words.
    assert s["words_scored_corpus"] > 0 and s["words_scored_reference"] > 0
    assert s["domain_shift"] == pytest.approx(s["word_perplexity_corpus"] / s["word_perplexity_reference"], rel=1e-3)
    # The pilot starts from the base model on the same windows and masks: its "before" is the corpus signal.
    assert s["pilot"]["word_perplexity_before"] == pytest.approx(s["word_perplexity_corpus"], rel=1e-6)
    assert s["pilot"]["steps"] == 1 and s["pilot"]["budget_steps"] == 12  # 5% of 12 steps, at least one
    for share in ("split3_share_corpus", "split3_share_reference", "top_words_whole", "domain_wordpiece_overlap"):
        assert 0 <= s[share] <= 1, share
    # 50 per label in the file; evaluate holds 10% of them out for validation (no validation_files), as assess counts.
    assert result["task"]["train_per_class"] == {"acq": 45, "crude": 45, "earn": 45}
    # One estimate per label budget, judged at the examples per class the budget keeps.
    assert result["task"]["label_budgets"] == [10, None]
    assert [(r["budget"], r["labels_per_class"]) for r in result["estimates"]] == [(10, 10), (None, 45)]
    text = assess.describe(result)
    for signal in ("per-word perplexity of the base model", "domain shift x", "3+ pieces", "vocabulary overlap", "pilot: 1 of 12 steps",
                   "task R8-3: 135 train examples, 3 classes", "label budgets: 10, all", "estimate:", "=>", "how the estimate was calibrated"):  # fmt: skip
        assert signal in text, signal
    # The stage's manifest carries the key figures for the stage table.
    metrics = store.manifest(ids["assess"])["metrics"]
    assert metrics["domain_shift"] == s["domain_shift"] and metrics["estimate"] == result["summary"]


def test_an_extended_vocabulary_is_assessed_with_the_base_tokenizer(assessed, tiny_config):
    # The model's tokenizer gains rows the base model does not have: the perplexity signals still read the
    # texts as the base does, so they equal those of `keep`; the pilot trains the extended model.
    config, store, ids, kept = assessed
    raw = {**tiny_config, "store": config.store, "vocab": {**tiny_config["vocab"], "mode": "extend", "max_new_tokens": 20, "min_token_count": 1},
           "pretrain": {**tiny_config["pretrain"], "assess": True}}  # fmt: skip
    _, _, extended_ids = build_until(raw, "assess")
    assert extended_ids["vocab"] != ids["vocab"]
    extended = json.loads((store.local_dir(extended_ids["assess"]) / "assessment.json").read_text())["signals"]
    for signal in ("word_perplexity_corpus", "word_perplexity_reference", "split3_share_corpus", "top_words_whole"):
        assert extended[signal] == kept["signals"][signal], signal
    assert extended["pilot"]["steps"] == 1


def test_assess_is_no_part_of_the_pretrain_id(tiny_config):
    off = plan(validate_config(tiny_config))
    on = plan(validate_config({**tiny_config, "pretrain": {**tiny_config["pretrain"], "assess": True}}))
    assert "assess" not in off and "assess" in on
    # Only the report, whose stage table gains the assessment's row, is another artifact.
    assert {stage: on[stage] for stage in off if stage != "report"} == {stage: aid for stage, aid in off.items() if stage != "report"}
    assert on["report"] != off["report"]


def test_a_base_without_an_mlm_head_says_so_and_measures_no_perplexity(tiny_config, tiny_base, tmp_path):
    from transformers import BertConfig, BertModel

    folder = tmp_path / "encoder"
    BertModel(BertConfig.from_pretrained(tiny_base)).save_pretrained(folder)  # a sentence-encoder-like base: no head
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tiny_base / name).read_bytes())
    raw = {**tiny_config, "base_model": {"source": str(folder)}, "pretrain": {**tiny_config["pretrain"], "assess": True}}
    _, store, ids = build_until(raw, "assess")
    result = json.loads((store.local_dir(ids["assess"]) / "assessment.json").read_text())
    s = result["signals"]
    assert s["mlm_head"] is False and "no masked-LM head" in s["unavailable"] and "cls.predictions" in s["unavailable"]
    assert not {"word_perplexity_corpus", "domain_shift", "pilot"} & set(s)
    assert 0 <= s["split3_share_corpus"] <= 1  # the tokenizer signals do not need the head
    text = assess.describe(result)
    assert "perplexity signals: unavailable" in text and "pilot: not run (no masked-LM head)" in text


def test_dapt_assess_prints_the_assessment(tiny_config, tmp_path, capsys):
    from flows.cli import main

    path = write_config(tmp_path / "tiny.yaml", tiny_config)  # pretrain.assess off: `dapt assess` runs it anyway
    assert main(["assess", str(path)]) == 0
    out = capsys.readouterr().out
    assert "signals (tiny, assessment a-" in out and "domain shift x" in out and "estimate:" in out


def test_the_summary_sentence_names_the_largest_helped_and_the_smallest_unlikely_budget():
    rows = [
        {"budget": 10, "labels_per_class": 10, "estimate": "likely to help", "why": ""},
        {"budget": 50, "labels_per_class": 50, "estimate": "likely to help", "why": ""},
        {"budget": None, "labels_per_class": 2000, "estimate": "unlikely to help", "why": ""},
    ]
    assert assess.summary_sentence(rows) == "likely to help at <= 50 labels per class; unlikely with all 2,000 labels per class"
    rows[1]["estimate"] = "unlikely to help"
    assert assess.summary_sentence(rows) == "likely to help at 10 labels per class; unlikely at 50 labels per class or more"


def test_the_rule_reproduces_the_rows_it_was_written_from_and_the_text_says_how_it_did():
    rows = assess.calibration_rows()
    assert all(assess.agrees(r) for r in rows if r["role"] == "fit")
    held = [r for r in rows if r["role"] == "held out"]
    text = assess.calibration_text()
    assert f"written from {sum(r['role'] == 'fit' for r in rows)} measured verdicts" in text
    assert (f"{sum(map(assess.agrees, held))} of {len(held)} estimates matched" in text) if held else "no held-out domain" in text


def test_the_rule_never_says_likely_when_the_pilot_moves_nothing_or_the_corpus_is_general_english():
    moving = {"pilot": {"log_perplexity_drop": 0.2}, "domain_shift": 3.0}
    assert assess.rule(moving, 10)[0] == "likely to help" and assess.rule(moving, 500)[0] == "unlikely to help"
    assert assess.rule({**moving, "pilot": {"log_perplexity_drop": 0.001}}, 10)[0] == "unlikely to help"
    assert assess.rule({**moving, "domain_shift": 0.9}, 10)[0] == "unlikely to help"
    assert assess.rule({}, 10)[0] == "likely to help"  # no MLM head: the labels alone decide
