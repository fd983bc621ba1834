"""Vocabulary extension: choosing domain pieces, the extended tokenizer, and the new embedding rows."""

import json
import shutil
import unicodedata

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from conftest import build_until, read_jsonl_gz
from pretrain import base, ingest, vocab
from pretrain.configfile import validate_config
from pretrain.core.artifacts import ArtifactStore
from pretrain.core.config import BaseModelConfig, IngestConfig, VocabConfig
from pretrain.core.errors import ConfigError, InputError
from pretrain.data import formats
from pretrain.models import extend, fast_tokenizers
from pretrain.training.mlm import mlm_head


@pytest.fixture
def built(tmp_path, corpus_file, tiny_base):
    store = ArtifactStore(tmp_path / "store")
    corpus = ingest.run(IngestConfig(inputs=[str(corpus_file)], strip_patterns=[r"(?i)\s*reuter\s*\x03\s*$"], validation_fraction=0.1), store)
    base_id = base.run(BaseModelConfig(source=str(tiny_base)), store)
    return store, corpus, base_id


def _extend(store, corpus, base_id, **settings):
    cfg = VocabConfig(mode="extend", vocab_size=2000, min_frequency=2, max_new_tokens=300, min_token_count=2, **settings)
    return vocab.run(cfg, store, corpus=corpus, base=base_id)


def test_wordpiece_split_is_what_the_tokenizer_does(tiny_base, corpus_file):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    backend = fast_tokenizers.plain_backend(tokenizer)
    model = json.loads(backend.to_str())["model"]
    words = {w for r in read_jsonl_gz(corpus_file)[:50] for w, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(r["text"]))}
    assert len(words) > 500
    for word in words:
        expected = [t.id for t in backend.model.tokenize(word)]
        assert extend.wordpiece_split(word, model["vocab"], False, model["vocab"]["[UNK]"]) == expected, word


def test_extend_chooses_pieces_that_save_tokens(built):
    store, corpus, base_id = built
    aid = _extend(store, corpus, base_id)
    folder = store.local_dir(aid)
    spec = json.loads((folder / "model_init.json").read_text())
    base_tokenizer = AutoTokenizer.from_pretrained(store.local_dir(base_id))
    new = spec["new_tokens"]
    assert spec["mode"] == "extend" and 0 < len(new) <= 300
    assert [t["id"] for t in new] == list(range(len(base_tokenizer), len(base_tokenizer) + len(new)))
    assert [t["score"] for t in new] == sorted((t["score"] for t in new), reverse=True)
    base_vocab = base_tokenizer.get_vocab()
    for t in new:
        assert t["token"] not in base_vocab and len(t["base_pieces"]) >= 2
        assert t["score"] == t["frequency"] * (len(t["base_pieces"]) - 1) and t["frequency"] >= 2
        assert not all(unicodedata.category(c)[0] in "NPS" for c in t["token"].removeprefix("##"))
    assert any(t["token"].startswith("##") for t in new) and any(not t["token"].startswith("##") for t in new)

    m = store.manifest(aid)["metrics"]
    assert m["added_tokens"] == len(new) and m["model_vocab_size"] == len(base_tokenizer) + len(new)
    assert m["fertility_model"] < m["fertility_base"] and m["sequence_saving_percent"] > 5
    assert m["split3_share_model"] < m["split3_share_base"]
    assert 0 < len(m["top_added_tokens"]) <= 30
    counts = [t["count"] for t in m["top_added_tokens"]]
    assert counts == sorted(counts, reverse=True)


def test_extended_tokenizer_round_trips_and_reloads(built):
    store, corpus, base_id = built
    folder = store.local_dir(_extend(store, corpus, base_id))
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    assert tokenizer.is_fast
    texts = [t for batch in formats.read_split(store.local_dir(corpus), "validation") for t in batch]
    normalizer = tokenizer.backend_tokenizer.normalizer
    new_ids = {t["id"] for t in json.loads((folder / "model_init.json").read_text())["new_tokens"]}
    used_new = 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        used_new += sum(i in new_ids for i in ids)
        decoded = tokenizer.decode(ids)
        # the same characters come back (the decoder re-spaces punctuation, so compare without spaces)
        assert "".join(decoded.split()) == "".join(normalizer.normalize_str(text).split()) or "[UNK]" in decoded
    assert used_new > 0
    tokenizer.save_pretrained(folder.parent / "resaved")
    again = AutoTokenizer.from_pretrained(folder.parent / "resaved")
    assert all(again(t)["input_ids"] == tokenizer(t)["input_ids"] for t in texts)


def test_extended_model_keeps_base_outputs_and_starts_new_rows_at_their_pieces(built, tiny_base):
    store, corpus, base_id = built
    folder = store.local_dir(_extend(store, corpus, base_id))
    spec = json.loads((folder / "model_init.json").read_text())
    original = AutoModelForMaskedLM.from_pretrained(tiny_base).eval()
    extended = AutoModelForMaskedLM.from_pretrained(tiny_base).eval()
    extend.extend_embeddings(extended, spec["new_tokens"], "subword_mean", mlm_head)

    rows = extended.get_input_embeddings().weight
    bias = extended.cls.predictions.bias
    old = original.get_input_embeddings().weight.shape[0]
    assert rows.shape[0] == old + len(spec["new_tokens"])
    assert extended.cls.predictions.decoder.weight.data_ptr() == rows.data_ptr()  # still tied
    for t in spec["new_tokens"]:
        torch.testing.assert_close(rows[t["id"]], original.get_input_embeddings().weight[t["base_pieces"]].mean(0))
        torch.testing.assert_close(bias[t["id"]], original.cls.predictions.bias[t["base_pieces"]].mean())
    assert torch.equal(rows[:old], original.get_input_embeddings().weight)

    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    sentences = [s for t in formats.read_split(store.local_dir(corpus), "validation") for text in t for s in text.split(".")]
    plain = [s for s in sentences if len(s.split()) > 6 and max(tokenizer(s)["input_ids"]) < old]
    assert plain  # sentences that use no new token
    ids = tokenizer(plain[0], return_tensors="pt")
    with torch.no_grad():
        a = original(**ids, output_hidden_states=True)
        b = extended(**ids, output_hidden_states=True)
    assert all(torch.equal(x, y) for x, y in zip(a.hidden_states, b.hidden_states))
    torch.testing.assert_close(b.logits[..., :old], a.logits, rtol=0, atol=1e-5)


def test_resize_default_init_is_the_fallback(built, tiny_base):
    store, corpus, base_id = built
    spec = json.loads((store.local_dir(_extend(store, corpus, base_id)) / "model_init.json").read_text())
    original = AutoModelForMaskedLM.from_pretrained(tiny_base)
    model = AutoModelForMaskedLM.from_pretrained(tiny_base)
    extend.extend_embeddings(model, spec["new_tokens"], "resize_default", mlm_head)
    rows, old_rows = model.get_input_embeddings().weight, original.get_input_embeddings().weight
    old = old_rows.shape[0]
    assert rows.shape[0] == old + len(spec["new_tokens"]) == model.cls.predictions.bias.shape[0]
    assert model.cls.predictions.decoder.weight.data_ptr() == rows.data_ptr()  # still tied
    assert torch.equal(rows[:old], old_rows) and torch.equal(model.cls.predictions.bias[:old], original.cls.predictions.bias)
    # transformers' mean resizing: every new row is drawn around the mean of all old rows (covariance
    # scaled by 1e-9), not started from its own pieces as subword_mean does.
    torch.testing.assert_close(rows[old:], old_rows.mean(0).expand(len(spec["new_tokens"]), -1), rtol=0, atol=1e-4)
    for t in spec["new_tokens"]:
        assert not torch.allclose(rows[t["id"]], old_rows[t["base_pieces"]].mean(0), atol=1e-3), t["token"]


@pytest.mark.slow
def test_extend_and_replace_pretrain(tiny_config):
    for mode in ("extend", "replace"):
        raw = {**tiny_config, "store": tiny_config["store"] + mode}
        raw["vocab"] = {"mode": mode, "vocab_size": 1200, "min_frequency": 2, "max_new_tokens": 200, "min_token_count": 2}
        _, store, ids = build_until(raw, "pretrain")
        model = AutoModelForMaskedLM.from_pretrained(store.local_dir(ids["pretrain"]) / "model")
        tokenizer = AutoTokenizer.from_pretrained(store.local_dir(ids["pretrain"]) / "model")
        assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
        metrics = store.manifest(ids["pretrain"])["metrics"]
        assert metrics["validation_perplexity_after"] < metrics["validation_perplexity_before"]
        if mode == "replace":
            assert len(tokenizer) == 1200
            base_model = AutoModelForMaskedLM.from_pretrained(store.local_dir(ids["base"]))
            # no base weights: even a layer whose shape matches starts elsewhere
            assert not torch.allclose(model.bert.encoder.layer[0].output.dense.weight, base_model.bert.encoder.layer[0].output.dense.weight, atol=0.05)


def test_bad_input(built, tmp_path, tiny_base):
    store, corpus, base_id = built
    with pytest.raises(ConfigError, match=r"max_new_tokens \(5000\) is larger than the domain vocabulary .*vocab_size 1000"):
        validate_config({"vocab": {"mode": "extend", "vocab_size": 1000, "max_new_tokens": 5000}, "ingest": {}, "pretrain": {}, "evaluate": {}})

    # a tokenizer with more tokens than the model has embedding rows (fewer is fine: DeBERTa-v3, ModernBERT pad theirs)
    folder = tmp_path / "mismatched"
    small = AutoModelForMaskedLM.from_pretrained(tiny_base)
    small.resize_token_embeddings(593)
    small.save_pretrained(folder)
    for f in tiny_base.glob("*token*"):
        (folder / f.name).write_bytes(f.read_bytes())
    mismatched = base.run(BaseModelConfig(source=str(folder)), store)
    with pytest.raises(InputError, match=r"its tokenizer has 600 tokens but the model has 593 embedding rows"):
        _extend(store, corpus, mismatched)

    # weights that do not match their config.json: named at import, not deep inside a later stage
    inconsistent = tmp_path / "inconsistent"
    shutil.copytree(tiny_base, inconsistent)
    config = json.loads((inconsistent / "config.json").read_text())
    config["vocab_size"] += 7
    (inconsistent / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"transformers cannot load it as a masked-LM model .*same model\?"):
        base.run(BaseModelConfig(source=str(inconsistent)), store)

    # a base model without a (fast) tokenizer
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((tiny_base / name).read_bytes())
    with pytest.raises(InputError, match="no tokenizer files"):
        base.run(BaseModelConfig(source=str(bare)), store)
    with pytest.raises(InputError, match="no tokenizer files"):
        fast_tokenizers.load_fast_tokenizer(bare)

    # a cased/uncased mismatch would add pieces the base never produces
    with pytest.raises(InputError, match="vocab.lowercase is False but the base tokenizer is uncased"):
        _extend(store, corpus, base_id, lowercase=False)
    assert not [i for i in store.ids() if i.startswith("v-")]  # nothing half-built


def test_word_perplexity_scores_the_same_words_under_both_vocabularies(built):
    from pretrain import tokens
    from pretrain.training import kit

    store, corpus, base_id = built
    masked_text = {}
    for mode in ("keep", "extend"):
        cfg = VocabConfig(mode=mode, vocab_size=2000, min_frequency=2, max_new_tokens=300, min_token_count=2)
        vocab_id = vocab.run(cfg, store, corpus=corpus, base=base_id)
        folder = store.local_dir(tokens.run(None, store, corpus=corpus, vocab=vocab_id))
        tokenizer = AutoTokenizer.from_pretrained(store.local_dir(vocab_id) / "tokenizer")
        batches = kit.word_eval_batches(folder, 64, 5_000, 8, seed=1)
        labels = torch.cat([b["masked_labels"] for b, _ in batches]).tolist()
        masked_text[mode] = ("".join(tokenizer.decode(labels).split()), sum(w for _, w in batches), len(labels))
    assert masked_text["keep"][0] == masked_text["extend"][0]  # the same words, in the same order
    assert masked_text["keep"][1] == masked_text["extend"][1] > 100
    assert masked_text["extend"][2] < masked_text["keep"][2]  # in fewer tokens
