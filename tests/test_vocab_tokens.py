import numpy as np
import pytest
from transformers import AutoTokenizer

from pretrain import base, ingest, tokens, vocab
from pretrain.core.artifacts import ArtifactStore
from pretrain.core.config import BaseModelConfig, IngestConfig, VocabConfig
from pretrain.core.errors import InputError
from pretrain.data import formats
from pretrain.data.formats import read_split
from pretrain.models import fast_tokenizers


@pytest.fixture
def built(tmp_path, corpus_file, tiny_base):
    store = ArtifactStore(tmp_path / "store")
    corpus = ingest.run(IngestConfig(inputs=[str(corpus_file)], validation_fraction=0.1), store)
    base_id = base.run(BaseModelConfig(source=str(tiny_base)), store)
    return store, corpus, base_id


def test_vocab_trains_domain_wordpiece_and_measures_fertility(built):
    store, corpus, base_id = built
    cfg = VocabConfig(vocab_size=400, min_frequency=1)
    aid = vocab.run(cfg, store, corpus=corpus, base=base_id)
    assert aid == vocab.stage_id(cfg, corpus=corpus, base=base_id)
    m = store.manifest(aid)["metrics"]
    assert m["mode"] == "keep"
    assert m["domain_vocab_size"] == 400
    assert m["model_vocab_size"] == m["base_vocab_size"]
    assert 1.0 <= m["fertility_domain"] < 3 and 1.0 <= m["fertility_base"] < 3
    folder = store.local_dir(aid)
    domain = AutoTokenizer.from_pretrained(folder / "domain_tokenizer")
    assert domain.is_fast and len(domain) == 400
    encoded = domain("Crude oil prices rose")
    assert domain.convert_ids_to_tokens(encoded["input_ids"])[0] == "[CLS]"
    assert domain.decode(encoded["input_ids"], skip_special_tokens=True) == "crude oil prices rose"
    # keep mode: the model's tokenizer is the base's, unchanged
    base_tok = AutoTokenizer.from_pretrained(store.local_dir(base_id))
    model_tok = AutoTokenizer.from_pretrained(folder / "tokenizer")
    text = "Shares of Exxon Corp fell 3.5 pct."
    assert model_tok(text)["input_ids"] == base_tok(text)["input_ids"]


def test_fertility_ignores_padding_and_truncation(tiny_base):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    tokenizer.backend_tokenizer.enable_padding(length=64)
    tokenizer.backend_tokenizer.enable_truncation(max_length=3)
    backend = fast_tokenizers.plain_backend(tokenizer)
    fit = fast_tokenizers.measure_fit("x", backend, ["oil", "oil prices rose sharply today in the session"])
    assert 1.0 <= fit["fertility_x"] < 3 and fit["validation_tokens_x"] < 64
    assert len(backend.encode("oil prices rose sharply today", add_special_tokens=False).ids) >= 5


def test_empty_domain_vocabulary_is_an_error(built, monkeypatch):
    store, corpus, base_id = built
    monkeypatch.setattr(vocab, "read_split", lambda folder, split: iter([[]]))  # a train split with no text
    with pytest.raises(InputError, match="empty domain vocabulary"):
        vocab.run(VocabConfig(vocab_size=400), store, corpus=corpus, base=base_id)
    assert store.ids() == [corpus, base_id] or set(store.ids()) == {corpus, base_id}


def test_tokens_are_the_documents_with_separators(built):
    store, corpus, base_id = built
    vocab_id = vocab.run(VocabConfig(vocab_size=400, min_frequency=1), store, corpus=corpus, base=base_id)
    aid = tokens.run(None, store, corpus=corpus, vocab=vocab_id)
    folder = store.local_dir(aid)
    meta = formats.load_meta(folder)
    assert meta["dtype"] == "uint16"
    stream = formats.open_split(folder, "validation")
    sep = meta["special_ids"]["sep"]
    documents = [t for batch in read_split(store.local_dir(corpus), "validation") for t in batch]
    assert int((stream == sep).sum()) == len(documents) == meta["splits"]["validation"]["documents"]
    tokenizer = AutoTokenizer.from_pretrained(store.local_dir(vocab_id) / "tokenizer")
    length = int(np.argmax(stream == sep))
    encoding = tokenizer(documents[0], add_special_tokens=False, truncation=False)
    assert np.asarray(stream[:length]).tolist() == encoding["input_ids"]
    # one packed bit per token: set where a word starts (any fast tokenizer's word ids, not "##")
    starts = formats.TokenStream(folder, "validation").word_starts(0, length + 1).tolist()
    words = encoding.word_ids()
    assert starts == [i == 0 or words[i] != words[i - 1] for i in range(length)] + [True]
    pieces = tokenizer.convert_ids_to_tokens(encoding["input_ids"])
    assert all(s != p.startswith("##") for s, p in zip(starts, pieces))  # for BERT the two views agree
    for shard in meta["splits"]["validation"]["shards"]:
        assert (folder / shard["words"]).stat().st_size == (shard["tokens"] + 7) // 8
    assert store.manifest(aid)["metrics"]["bytes_per_token"] <= 2.13  # uint16 ids + 1 bit


def test_base_model_without_safetensors_is_refused(tmp_path, tiny_base):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_base / "config.json").read_text())
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(InputError, match="no safetensors weights.*pytorch_model.bin: pickle-based weights are never loaded"):
        base.run(BaseModelConfig(source=str(folder)), ArtifactStore(tmp_path / "store"))


def test_base_model_id_is_content_only(tmp_path, tiny_base):
    import shutil

    copy = tmp_path / "elsewhere"
    shutil.copytree(tiny_base, copy)
    store = ArtifactStore(tmp_path / "store")
    assert base.run(BaseModelConfig(source=str(tiny_base)), store) == base.run(BaseModelConfig(source=str(copy)), store)
    m = store.manifest(base.stage_id(BaseModelConfig(source=str(copy))))
    assert "model.safetensors" in m["files"] and m["metrics"]["num_hidden_layers"] == 2


def test_demo_base_model_from_package(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    aid = base.run(BaseModelConfig(source="pkg:cognition/model"), store)
    m = store.manifest(aid)
    assert "heads.pt" not in m["files"]  # never copy (or unpickle) anything but safe formats
    assert m["metrics"]["vocab_size"] == 30522
