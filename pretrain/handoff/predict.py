"""Predict: run an exported task model over a file of texts; labels and scores per row, keyed by the input's id.

    dapt predict exported/reuters-classifier --input data/reuters/r8_test.jsonl.gz --out predictions.jsonl
    dapt predict exported/reuters-classifier/model.int8.onnx --input tickets.csv --out p.parquet --text-field body --id-field ticket_id

The model is an export folder (`dapt export f-…`; plain Hugging Face, loaded with
`AutoModelForSequenceClassification`) or an ONNX file in such a folder (`model.onnx`,
`model.int8.onnx`; run with ONNX Runtime, the tokenizer and labels from the folder). The input is
read with the ingest readers (`.jsonl`, `.csv`/`.tsv`, `.parquet`, `.txt`, also compressed). Each
output row holds the input's id (`--id-field`; the row's file:line when the input has none), the
label (a list of labels for multi-label models) and the score of every label (softmax, or sigmoid
for multi-label), in input order. This is how a receiving team checks the handoff on its own data.
A row whose text is null, empty or blank gets no label, never an invented one: it is left out, and
counted with its file:line (`--on-empty fail` makes it an error instead).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretrain.core.errors import InputError, UserError
from pretrain.core.logs import get_logger
from pretrain.core.progress import progress
from pretrain.models.families import max_sequence_length, model_inputs

log = get_logger(__name__)

OUTPUTS = (".jsonl", ".parquet")
ON_EMPTY = ("skip", "fail")  # a row with no text: left out and counted, or an error naming it


def read_rows(path: str, text_field: str, id_field: str | None, on_empty: str = "skip") -> tuple[list[Any], list[str], list[str]]:
    """(ids, texts, skipped) of the records of `path`; a missing text field is an error naming it, the file and the line.

    A record whose text is null, empty or only whitespace gets no label (there is nothing to label):
    `on_empty="skip"` leaves it out and lists its location in `skipped`, `"fail"` raises naming it.
    """
    from pretrain.data.io import field_text, read_records

    if on_empty not in ON_EMPTY:
        raise UserError(f"--on-empty {on_empty}: choose {' or '.join(ON_EMPTY)}")
    if "://" not in path and not Path(path).is_file():
        raise InputError(f"--input {path}: no such file")
    ids, texts, skipped = [], [], []
    for location, record in read_records(path, txt_mode="line", text_field=text_field):
        text = field_text(record, text_field, location, "--text-field")
        if id_field is not None and id_field not in record:
            fields = ", ".join(map(repr, list(record)[:12]))
            raise InputError(f"{location}: no field {id_field!r} (fields here: {fields}); set --id-field to the field that holds the id")
        if text is None or not text.strip():
            if on_empty == "fail":
                raise InputError(f"{location}: no text in {text_field!r} ({'null' if text is None else 'empty'}); "
                                 "remove the row, or pass --on-empty skip to leave such rows out (counted)")  # fmt: skip
            skipped.append(location)
            continue
        ids.append(record[id_field] if id_field is not None else location)
        texts.append(text)
    if not texts:
        why = f"all {len(skipped):,} have no text in {text_field!r}" if skipped else "it has none"
        raise InputError(f"--input {path}: no records to label ({why})")
    return ids, texts, skipped


def _id_field(path: str, requested: str | None, text_field: str) -> str | None:
    """`--id-field` if given; else `id` when the first record has one; else None (the row's file:line)."""
    from pretrain.data.io import read_records

    if requested is not None:
        return requested
    for _, record in read_records(path, txt_mode="line", text_field=text_field):
        return "id" if "id" in record else None
    return None


def check_model(model: str) -> tuple[Path, dict]:
    """(folder, config) of an exported task model (folder or .onnx in one); a clear error for anything else. Loads no weights."""
    path = Path(model)
    folder = path.parent if path.suffix == ".onnx" else path
    if not path.exists() or not (folder / "config.json").is_file():
        raise UserError(f"{model}: not an export folder (with config.json) or an .onnx file in one; make one with `dapt export f-… --to DIR`")
    config = json.loads((folder / "config.json").read_text())
    if "id2label" not in config or not any("ForSequenceClassification" in a for a in config.get("architectures") or []):
        raise UserError(
            f"{model}: {config.get('architectures')} is not a sequence classifier with labels; `dapt predict` runs exported task models "
            "(`dapt export f-… --to DIR`), not encoders"
        )
    return folder, config


def load(model: str) -> tuple[Any, str]:
    """(engine, runtime): a Hugging Face classifier, or an ONNX Runtime session for a .onnx file."""
    path = Path(model)
    if path.suffix == ".onnx":
        from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf, NoSuchFile

        from pretrain.handoff.quantize import OrtClassifier

        try:
            return OrtClassifier(path), f"onnxruntime {path.name}"
        except (InvalidProtobuf, InvalidGraph, NoSuchFile, Fail) as e:
            raise InputError(
                f"{model}: ONNX Runtime cannot load it ({type(e).__name__}: {str(e).splitlines()[0][:200]}); it is not a (complete) ONNX "
                "model: export it again with `dapt export f-… --to DIR --format onnx`, or give the export folder instead"
            ) from None
    from transformers import AutoModelForSequenceClassification

    from pretrain.models.modelfiles import load_model

    return load_model(AutoModelForSequenceClassification, path, "task model").eval(), "transformers"


@torch.no_grad()
def predict(
    model: str,
    input_path: str,
    out: str,
    text_field: str = "text",
    id_field: str | None = None,
    batch_size: int = 32,
    max_seq_length: int | None = None,
    on_empty: str = "skip",
) -> dict[str, Any]:
    """Label every text of `input_path` with the task model `model` (folder or .onnx) into `out` (.jsonl or .parquet).

    Rows with no text are never labelled: left out (`on_empty="skip"`, their locations in `skipped`) or an error.
    """
    if not str(out).endswith(OUTPUTS):
        raise UserError(f"--out {out}: must end in {' or '.join(OUTPUTS)}")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    from pretrain.models.fast_tokenizers import load_fast_tokenizer

    folder, config = check_model(model)
    if "://" not in input_path and not Path(input_path).is_file():
        raise InputError(f"--input {input_path}: no such file")
    id_field = _id_field(input_path, id_field, text_field)
    ids, texts, skipped = read_rows(input_path, text_field, id_field, on_empty)  # bad input fails here, before the model is loaded
    if skipped:
        log.warning("predict: %d rows have no text and get no label: %s", len(skipped), ", ".join(skipped[:10]) + (", …" if len(skipped) > 10 else ""))
    tokenizer = load_fast_tokenizer(folder)
    engine, runtime = load(model)
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    multi = config.get("problem_type") == "multi_label_classification"
    facts = _export_facts(model)
    length = min(max_seq_length or facts.get("max_seq_length") or 512, max_sequence_length(config) or 512)
    thresholds = np.array([facts["thresholds"][label] for label in labels]) if multi and facts.get("thresholds") else 0.5
    order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths per batch: little padding
    scores = np.empty((len(texts), len(labels)), dtype=np.float32)
    with progress(len(texts), desc=f"predict {Path(input_path).name}", unit="text") as bar:
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=length, return_tensors="pt")
            logits = engine(**model_inputs(batch, config)).logits.float()
            scores[rows] = (torch.sigmoid(logits) if multi else torch.softmax(logits, -1)).numpy()
            bar.update(len(rows))
    decided = scores >= thresholds if multi else scores.argmax(-1)
    records = [
        {"id": _plain(i), "label": [labels[k] for k in np.flatnonzero(d)] if multi else labels[int(d)],
         "scores": {label: round(float(v), 6) for label, v in zip(labels, row)}}
        for i, d, row in zip(ids, decided, scores)
    ]  # fmt: skip
    _write(records, out, {"model": str(model), "runtime": runtime, "input": str(input_path), "labels": labels, "id_field": id_field,
                          "skipped_without_text": skipped})  # fmt: skip
    log.info("predict: %d texts -> %s (%s, %s)", len(records), out, model, runtime)
    return {"model": str(model), "runtime": runtime, "texts": len(records), "labels": labels, "id_field": id_field, "out": str(out),
            "skipped": skipped}  # fmt: skip


def _export_facts(model: str) -> dict:
    """max_seq_length and (multi-label) thresholds of the run, from dapt_export.json when the folder has one."""
    path = Path(model)
    facts_file = (path.parent if path.suffix == ".onnx" else path) / "dapt_export.json"
    if not facts_file.is_file():
        return {}
    run = json.loads(facts_file.read_text()).get("run") or {}
    return {"max_seq_length": run.get("max_seq_length"), "thresholds": run.get("thresholds")}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _write(records: list[dict], out: str, meta: dict) -> None:
    """Write under a temporary name and rename: never a half-written file under the requested name."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{out}.tmp")
    if str(out).endswith(".jsonl"):
        with open(tmp, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(records)
        pq.write_table(table.replace_schema_metadata({"dapt": json.dumps(meta)}), tmp)
    os.replace(tmp, out)
