"""Embeddings: one vector per text from a model artifact, an alias or an exported folder, into Parquet.

    dapt embed production --input docs.jsonl --output docs.parquet
    dapt embed m-722717eccb734486a6b7 --input notes.txt --output notes.parquet --pooling mean

Inputs are read with the ingest readers (`.txt` one text per line by default, `.jsonl`, `.csv`/`.tsv`,
`.parquet`, each also compressed), so a bad record is named by file and line. Texts are sorted by
length into batches (less padding), embedded with the encoder's `last_hidden_state`, pooled (`cls`:
the [CLS] vector; `mean`: the mean over the text's tokens, padding excluded), and written back in
input order: columns `row`, `location`, `text`, `embedding` (float32 list), and the input's own id
column (`id_field`, `id` by default when the input has one) under its name; the model id and pooling
go into the file's metadata.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretrain.core import registry
from pretrain.core.artifacts import ArtifactStore
from pretrain.core.errors import InputError, UserError
from pretrain.core.logs import get_logger
from pretrain.models.families import max_sequence_length, model_inputs
from pretrain.models.modelfiles import load_model, require_safetensors

log = get_logger(__name__)

POOLINGS = ("cls", "mean")


# Output columns; an input id column of the same name is written as `input_<name>`.
COLUMNS = ("row", "location", "text", "embedding")


def read_texts(path: str, text_field: str = "text", txt_mode: str = "line",
               id_field: str | None = None) -> tuple[list[str], list[str], list | None]:  # fmt: skip
    """(locations, texts, ids) of every record of `path` with a non-empty text.

    ids: the values of `id_field` (None when not given); with the default (`id_field` None) the
    `id` field is taken when the first record has one.
    """
    from pretrain.data.io import field_text, read_records

    if "://" not in path and not Path(path).is_file():
        raise InputError(f"--input {path}: no such file")
    locations, texts, ids = [], [], []
    wanted = id_field
    for location, record in read_records(path, txt_mode=txt_mode, text_field=text_field):
        if not locations and not ids and wanted is None and "id" in record:
            wanted = "id"
        text = field_text(record, text_field, location, "--text-field")
        if wanted is not None and wanted not in record:
            fields = ", ".join(map(repr, list(record)[:12]))
            raise InputError(f"{location}: no field {wanted!r} (fields here: {fields}); set --id-field to the field with the ids")
        if text and text.strip():
            locations.append(location)
            texts.append(text)
            if wanted is not None:
                ids.append(record[wanted])
    if not texts:
        raise InputError(f"--input {path}: no non-empty texts in field {text_field!r}")
    return locations, texts, (ids if wanted is not None else None)


def _id_column(ids: list):
    """The ids as one Arrow column: integers stay integers, anything else (or a mix) becomes text."""
    import pyarrow as pa

    if all(isinstance(v, int) and not isinstance(v, bool) for v in ids):
        return pa.array(ids, pa.int64())
    return pa.array([None if v is None else str(v) for v in ids], pa.string())


def _model_folder(store: ArtifactStore | None, name: str) -> tuple[Path, str]:
    if os.path.isdir(name) and (Path(name) / "config.json").is_file():
        return Path(name), str(Path(name).resolve())
    if store is None:
        raise UserError(f"{name}: not a model folder, and no store to look it up in")
    from pretrain.handoff.export import model_folder

    aid = registry.resolve(store, name)
    return model_folder(store, aid), aid


def pool(states: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per sequence from (batch, length, hidden) states."""
    if pooling == "cls":
        return states[:, 0]
    weights = mask.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1)


@torch.no_grad()
def embed(
    store: ArtifactStore | None,
    model: str,
    input_path: str,
    output_path: str,
    pooling: str = "cls",
    batch_size: int = 32,
    max_seq_length: int | None = None,
    text_field: str = "text",
    txt_mode: str = "line",
    progress: bool = True,
    id_field: str | None = None,
) -> dict[str, Any]:
    """Embed every text of `input_path` with `model` (artifact id, alias or folder) into `output_path` (Parquet).

    `id_field`: the input's id column, written beside each embedding (default: `id`, when there is one).
    `progress`: show progress (pretrain.core.progress: a bar on a terminal, log lines elsewhere).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoModel

    from pretrain.core.progress import progress as show_progress

    from pretrain.models.fast_tokenizers import load_fast_tokenizer

    problems = []
    if pooling not in POOLINGS:
        problems.append(f"--pooling {pooling}: choose one of {', '.join(POOLINGS)}")
    if batch_size < 1:
        problems.append(f"--batch-size {batch_size}: must be at least 1")
    if not str(output_path).endswith(".parquet"):
        problems.append(f"--output {output_path}: must end in .parquet")
    if problems:
        raise UserError("\n".join(problems))
    folder, model_id = _model_folder(store, model)
    require_safetensors(folder, "model folder")
    locations, texts, ids = read_texts(input_path, text_field, txt_mode, id_field)
    tokenizer = load_fast_tokenizer(folder)
    model_config = json.loads((folder / "config.json").read_text())
    limit = max_sequence_length(model_config) or 512
    length = min(max_seq_length or limit, limit)
    encoder = load_model(AutoModel, folder, "model folder").eval()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder.to(device)
    # Longest first, so batches hold similar lengths (little padding) and memory peaks at once, early.
    order = np.argsort([-len(t) for t in texts], kind="stable")
    vectors = np.empty((len(texts), encoder.config.hidden_size), dtype=np.float32)
    starts = range(0, len(texts), batch_size)
    shown = show_progress(len(starts), f"embed {Path(input_path).name}", unit="batch") if progress else contextlib.nullcontext()
    with shown as bar:
        for start in starts:
            rows = order[start : start + batch_size]
            batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=length, return_tensors="pt").to(device)
            states = encoder(**model_inputs(batch, model_config)).last_hidden_state
            vectors[rows] = pool(states, batch["attention_mask"], pooling).float().cpu().numpy()
            if bar is not None:
                bar.update(1)
    columns = {
        "row": pa.array(np.arange(len(texts)), pa.int64()),
        "location": locations,
        "text": texts,
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
    }
    id_name = None
    if ids is not None:
        name = id_field or "id"
        id_name = f"input_{name}" if name in COLUMNS else name
        columns = {id_name: _id_column(ids), **columns}
    table = pa.table(columns)
    meta = {"model": model_id, "requested_as": model, "pooling": pooling, "max_seq_length": length, "input": str(input_path), "id_column": id_name}
    table = table.replace_schema_metadata({"dapt": json.dumps(meta)})
    Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{output_path}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, output_path)  # never a half-written Parquet file under the requested name
    log.info("embed: %d texts -> %s (%s pooling, %d dims, model %s)", len(texts), output_path, pooling, vectors.shape[1], model_id)
    return {**meta, "texts": len(texts), "dimensions": int(vectors.shape[1])}
