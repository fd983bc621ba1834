"""dapt embed: batched CLS/mean embeddings in input order, from an alias or a folder; clear errors."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from flows.cli import main
from pretrain.core import registry
from pretrain.core.artifacts import ArtifactStore
from pretrain.core.errors import UserError
from pretrain.handoff.embed import embed

TEXTS = ["oil prices rose", "the company reported a quarterly net profit of four mln dlrs, up from last year", "wheat", "shares fell sharply"]


@pytest.fixture
def store(tmp_path, tiny_base):
    store = ArtifactStore(tmp_path / "s")
    with store.build("pretrain", "m-" + "3" * 20, config={}) as b:
        shutil.copytree(tiny_base, b.dir / "model")
    registry.promote(store, "m-" + "3" * 20, "production")
    return store


def _reference(folder, texts, pooling):
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    out = []
    with torch.no_grad():
        for text in texts:  # one at a time: no padding at all
            batch = tokenizer(text, return_tensors="pt")
            states = model(**batch).last_hidden_state[0]
            out.append((states[0] if pooling == "cls" else states.mean(0)).numpy())
    return np.stack(out)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_embeddings_match_unbatched_model_in_input_order(store, tmp_path, tiny_base, pooling, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(TEXTS)))
    out = tmp_path / "out.parquet"
    assert main(["embed", "production", "--input", str(source), "--output", str(out), "--pooling", pooling, "--batch-size", "3", "--store", store.url]) == 0
    assert "4 embeddings (32 dims" in capsys.readouterr().out
    table = pq.read_table(out)
    assert table.column("text").to_pylist() == TEXTS and table.column("row").to_pylist() == [0, 1, 2, 3]
    assert table.column("location").to_pylist()[1] == f"{source}:2"
    vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(vectors, _reference(tiny_base, TEXTS, pooling), atol=1e-5)
    meta = json.loads(table.schema.metadata[b"dapt"])
    assert meta["model"] == "m-" + "3" * 20 and meta["pooling"] == pooling


def test_embed_reads_text_lines_from_a_folder_model(tmp_path, tiny_base):
    source = tmp_path / "in.txt"
    source.write_text("\n".join(TEXTS) + "\n\n")
    result = embed(None, str(tiny_base), str(source), str(tmp_path / "o.parquet"), progress=False)
    assert result["texts"] == 4 and pq.read_table(tmp_path / "o.parquet").num_rows == 4


def test_embed_errors_name_the_problem(store, tmp_path, capsys):
    good = tmp_path / "in.jsonl"
    good.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(UserError, match="--pooling max: choose one of cls, mean\n--output o.csv: must end in .parquet"):
        embed(store, "production", str(good), "o.csv", pooling="max")
    with pytest.raises(UserError, match="in.jsonl:1: no field 'text' \\(fields here: 'body'\\); set --text-field"):
        embed(store, "production", str(good), str(tmp_path / "o.parquet"))
    with pytest.raises(UserError, match="--input .*missing.jsonl: no such file"):
        embed(store, "production", str(tmp_path / "missing.jsonl"), str(tmp_path / "o.parquet"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken\n')
    assert main(["embed", "production", "--input", str(bad), "--output", str(tmp_path / "o.parquet"), "--store", store.url]) == 2
    assert f"{bad}:2: not valid JSON" in capsys.readouterr().err
    assert main(["embed", "staging", "--input", str(good), "--output", str(tmp_path / "o.parquet"), "--store", store.url]) == 2
    assert "alias 'staging' is not in the store" in capsys.readouterr().err
    assert not (tmp_path / "o.parquet").exists()
