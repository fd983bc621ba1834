"""Export: a standalone Hugging Face folder that loads with no project code, a model card, int8, the Hub call."""

import json
import re
import subprocess
import sys
import sysconfig

import pytest
import torch

from conftest import build_until, make_tiny_config
from flows.cli import main
from pretrain.core import registry
from pretrain.core.errors import UserError
from pretrain.handoff import export as export_module

TEXTS = ["Oil prices rose on Monday as [MASK] output fell.", "The company said quarterly net profit was 4.5 mln dlrs."]


@pytest.fixture(scope="module")
def built(tmp_path_factory, corpus_file, task_files, tiny_base):
    """A tiny pipeline run up to evaluate (one seed), its model promoted to `production`."""
    raw = make_tiny_config(tmp_path_factory.mktemp("export") / "store", corpus_file, task_files, tiny_base)
    _, store, ids = build_until(raw, "evaluate")
    registry.promote(store, ids["pretrain"], "production")
    return store, ids


def _pipeline_logits(store, aid):
    """MLM logits and encoder states as the pipeline loads the model (from the artifact, with its own helpers)."""
    from transformers import BertForMaskedLM

    from pretrain.models.modelfiles import model_folder
    from pretrain.models.fast_tokenizers import load_fast_tokenizer

    folder = model_folder(store, aid, "test")
    tokenizer = load_fast_tokenizer(folder)
    model = BertForMaskedLM.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model(**tokenizer(TEXTS, padding=True, return_tensors="pt"), output_hidden_states=True)
    return out.logits.numpy(), out.hidden_states[-1].numpy()


CLEAN_SCRIPT = r'''
import importlib.util, json, sys
assert importlib.util.find_spec("pretrain") is None and importlib.util.find_spec("flows") is None, "project code is importable"
import torch
from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer
folder, texts = sys.argv[1], json.loads(sys.argv[2])
tokenizer = AutoTokenizer.from_pretrained(folder)
batch = tokenizer(texts, padding=True, return_tensors="pt")
with torch.no_grad():
    logits = AutoModelForMaskedLM.from_pretrained(folder).eval()(**batch).logits
    states = AutoModel.from_pretrained(folder).eval()(**batch).last_hidden_state
    classifier = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3).eval()
    classes = classifier(**batch).logits
print(json.dumps({"logits": logits.tolist(), "states": states.tolist(), "classes": list(classes.shape), "tokenizer": type(tokenizer).__name__}))
'''


def _clean_python(script, *args, cwd):
    """Run `script` with only the standard library and site-packages on sys.path: no .pth (so no editable dapt), no cwd."""
    stdlib = [p for p in sys.path if p.startswith(sys.base_prefix) and "site-packages" not in p]
    paths = [*stdlib, sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
    prologue = f"import sys; sys.path[:] = {list(dict.fromkeys(paths))!r}\n"
    return subprocess.run([sys.executable, "-I", "-S", "-c", prologue + script, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_export_loads_without_project_code_and_gives_the_pipelines_logits(built, tmp_path, capsys):
    store, ids = built
    assert main(["export", "production", "--to", str(tmp_path / "out"), "--store", store.url]) == 0
    assert f"exported {ids['pretrain']} to" in capsys.readouterr().out
    out = tmp_path / "out"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md", "dapt_export.json"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))  # nothing pickled

    result = _clean_python(CLEAN_SCRIPT, str(out), json.dumps(TEXTS), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    clean = json.loads(result.stdout.strip().splitlines()[-1])
    logits, states = _pipeline_logits(store, ids["pretrain"])
    assert torch.allclose(torch.tensor(clean["logits"]), torch.from_numpy(logits), atol=1e-5, rtol=0)
    assert torch.allclose(torch.tensor(clean["states"]), torch.from_numpy(states), atol=1e-5, rtol=0)
    assert clean["classes"] == [2, 3]

    facts = json.loads((out / "dapt_export.json").read_text())
    assert facts["artifact"] == ids["pretrain"] and facts["requested_as"] == "production" and facts["evaluation"] == ids["evaluate"]
    manifest = store.manifest(ids["pretrain"])
    assert facts["files"]["model.safetensors"]["sha256"] == manifest["files"]["model/model.safetensors"]["sha256"]


@pytest.mark.slow
def test_model_card_says_where_the_model_came_from(built, tmp_path):
    store, ids = built
    export_module.export(store, ids["pretrain"], tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    corpus = store.manifest(ids["ingest"])
    assert corpus["sources"][0]["sha256"] in card and f"{corpus['metrics']['documents']:,} documents" in card
    assert "mode `keep`" in card and "added tokens: 0" in card
    assert "12 optimizer steps" in card and "x cpu" in card and "s of training" in card
    assert f"Evaluation `{ids['evaluate']}`" in card and "| adapted (this model) |" in card and "| base |" in card
    # the seed-aware interval and its verdict (one seed: none)
    assert re.search(r"^- adapted − base, macro-F1: [+-]\d\.\d{3} .* CI \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]: no verdict$", card, re.M)
    assert "## Intended use and limits" in card
    assert "## The pooler" in card and "no pooler weights" in card and "MISSING" in card  # the MLM checkpoint has none: said, not hidden
    assert all(aid in card for aid in ids.values() if not aid.startswith("e-"))  # the whole lineage chain
    base = store.manifest(ids["base"])["origin"]["source"]
    assert f"`{base.rsplit('/', 1)[-1]}`" in card and base not in card  # a local folder by its own name, never its path


@pytest.mark.slow
def test_export_refuses_bad_requests_with_clear_messages(built, tmp_path):
    store, ids = built
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(UserError, match="full: the folder exists and is not empty"):
        export_module.export(store, ids["pretrain"], tmp_path / "full")
    with pytest.raises(UserError, match=f"artifact {ids['ingest']} is a ingest artifact, not a model"):
        export_module.export(store, ids["ingest"], tmp_path / "a")
    with pytest.raises(UserError, match="alias 'staging' is not in the store"):
        export_module.export(store, "staging", tmp_path / "b")
    assert main(["export", "nope", "--to", str(tmp_path / "c"), "--store", store.url]) == 2
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


class FakeHfApi:
    calls: list = []

    def __init__(self, token=None):
        FakeHfApi.calls.append(("init", token))

    def create_repo(self, **kwargs):
        FakeHfApi.calls.append(("create_repo", kwargs))
        return f"https://huggingface.co/{kwargs['repo_id']}"

    def upload_folder(self, **kwargs):
        FakeHfApi.calls.append(("upload_folder", kwargs))


@pytest.mark.slow
def test_push_to_hub_builds_the_right_calls_and_never_writes_the_token(built, tmp_path, monkeypatch, capsys, caplog):
    store, ids = built
    secret = "hf_SECRETtoken1234567890"
    monkeypatch.setenv("HF_TOKEN", secret)
    FakeHfApi.calls = []
    facts = export_module.export(store, "production", tmp_path / "out", push_to_hub="org/reuters-bert", hf_api_factory=FakeHfApi)
    assert FakeHfApi.calls == [
        ("init", secret),
        ("create_repo", {"repo_id": "org/reuters-bert", "repo_type": "model", "private": True, "exist_ok": True}),
        ("upload_folder", {"folder_path": str(tmp_path / "out"), "repo_id": "org/reuters-bert", "repo_type": "model",
                           "commit_message": f"dapt export of {ids['pretrain']}"}),
    ]  # fmt: skip
    assert facts["hub_url"] == "https://huggingface.co/org/reuters-bert"
    written = [p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()]
    written += [p.read_bytes() for p in (tmp_path / "s").rglob("*") if p.is_file()] if (tmp_path / "s").exists() else []
    written += [p.read_bytes() for p in __import__("pathlib").Path(store.root).rglob("*") if p.is_file() and p.suffix == ".json"]
    assert all(secret.encode() not in data for data in written)
    assert secret not in capsys.readouterr().out + caplog.text

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-login"))
    with pytest.raises(UserError, match="needs a Hugging Face token: set HF_TOKEN"):
        export_module.push(tmp_path / "out", "org/x", ids["pretrain"], api_factory=FakeHfApi)


def test_onnx_export_and_int8_quantization_keep_the_logits(tiny_base, tmp_path):
    """model.onnx reproduces PyTorch's logits at any batch and length; model.int8.onnx holds int8 weights and stays close."""
    import onnx
    from transformers import AutoModelForSequenceClassification

    from pretrain.handoff.quantize import OrtClassifier, export_onnx, quantize_int8

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=3).eval()
    export_onnx(model, tmp_path / "model.onnx")
    quantize_int8(tmp_path / "model.onnx", tmp_path / "model.int8.onnx")
    int8_types = {init.data_type for init in onnx.load(str(tmp_path / "model.int8.onnx")).graph.initializer}
    assert onnx.TensorProto.INT8 in int8_types and onnx.TensorProto.INT8 not in {
        init.data_type for init in onnx.load(str(tmp_path / "model.onnx")).graph.initializer
    }
    fp32, int8 = OrtClassifier(tmp_path / "model.onnx"), OrtClassifier(tmp_path / "model.int8.onnx")
    for shape in ((1, 5), (7, 40)):  # batch and sequence length other than the export's example
        ids = torch.randint(5, 500, shape)
        mask = torch.ones_like(ids)
        mask[0, shape[1] // 2 :] = 0  # padding
        with torch.no_grad():
            reference = model(input_ids=ids, attention_mask=mask).logits
        assert (fp32(input_ids=ids, attention_mask=mask).logits - reference).abs().max() <= 1e-4
        assert (int8(input_ids=ids, attention_mask=mask).logits - reference).abs().max() < 0.05 * reference.abs().max() + 1e-3
