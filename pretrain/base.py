"""Base model: copy the model to adapt into the store, so every lineage starts from pinned, hashed files.

    python -m pretrain.base --config configs/demo.yaml

Sources: a local folder, `pkg:<module>/<subdir>` (a model shipped inside an installed Python package,
e.g. the demo's `pkg:cognition/model`), or a Hugging Face Hub id (downloaded with `huggingface_hub`,
which needs network). Only safe formats are copied: config, safetensors weights and tokenizer files.
Pickle-based weights (`*.bin`, `*.pt`) are never loaded. The id depends only on the files' content.

The model must be a masked-LM encoder (`pretrain.models.families.masked_lm_problem`: a decoder-only or
encoder-decoder model is refused, naming its type, before anything is copied). A checkpoint without
its masked-LM head (a sentence-transformers encoder, an ELECTRA discriminator) is imported with a
warning, and its manifest says `mlm_head: new (randomly initialised)`: its perplexity before
pretraining is a random head's, which the stage table and the report say.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from pretrain.core.artifacts import ArtifactStore, file_digest
from pretrain.core.config import BaseModelConfig, package_dir
from pretrain.core.errors import InputError
from pretrain.core.ids import artifact_id
from pretrain.core.logs import get_logger
from pretrain.models.families import family_name, masked_lm_problem
from pretrain.models.modelfiles import new_mlm_weights, remote_code_note, require_safetensors

log = get_logger(__name__)

STAGE = "base"
# What a Hugging Face model folder needs, in formats that cannot run code when loaded.
SAFE_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
)
SAFE_PATTERNS = ("model-*-of-*.safetensors",)
# Any of these makes a tokenizer transformers can load as a fast one.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json")


def resolve_source(cfg: BaseModelConfig) -> tuple[Path, str]:
    """A local folder holding the base model, and a description of where it came from."""
    if cfg.source.startswith("pkg:"):
        folder = package_dir(cfg.source)
        if folder is None or not folder.is_dir():
            raise InputError(f"base_model.source {cfg.source!r}: package folder not found; is the package installed?")
        return folder, f"{cfg.source} ({folder})"
    local = Path(cfg.source).expanduser()
    if local.is_dir():
        return local, str(local.resolve())
    return _download(cfg)


def _download(cfg: BaseModelConfig) -> tuple[Path, str]:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError as e:  # pragma: no cover - transformers depends on huggingface_hub
        raise InputError(f"base_model.source {cfg.source!r} is a Hub id but huggingface_hub is missing ({e})") from None
    try:
        folder = snapshot_download(
            cfg.source, revision=cfg.revision, allow_patterns=list(SAFE_FILES) + list(SAFE_PATTERNS)
        )
    except RepositoryNotFoundError:
        raise InputError(f"base_model.source {cfg.source!r}: no such model on the Hugging Face Hub (or it is private)") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise InputError(
            f"base_model.source {cfg.source!r}: could not download from the Hugging Face Hub ({e}); "
            "without network, point base_model.source at a local folder"
        ) from None
    revision = Path(folder).name  # snapshot folders are named by the resolved commit
    return Path(folder), f"hf://{cfg.source}@{revision}"


def model_files(folder: Path) -> list[Path]:
    """The safe files of a model folder; a clear error if config or safetensors weights are missing."""
    files = [folder / name for name in SAFE_FILES if (folder / name).is_file()]
    for pattern in SAFE_PATTERNS:
        files += sorted(folder.glob(pattern))
    names = {f.name for f in files}
    if "config.json" not in names:
        raise InputError(f"base model {folder}: no config.json; is this a Hugging Face model folder?")
    if not any(n.endswith(".safetensors") for n in names):
        require_safetensors(folder, "base model")  # names the pickle-based weights it has instead
        raise InputError(f"base model {folder}: no model.safetensors (or model-*-of-*.safetensors shards)")
    try:
        model_config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except ValueError as e:
        raise InputError(f"base model {folder}: config.json is not valid JSON ({e})") from None
    if isinstance(model_config, dict) and model_config.get("auto_map"):
        remote_code_note(folder, "base model")  # an unknown model_type that asks for custom code is refused as such
    problem = masked_lm_problem(model_config if isinstance(model_config, dict) else {})
    if problem:
        raise InputError(f"base model {folder}: {problem}")
    if not names & set(TOKENIZER_FILES):
        raise InputError(
            f"base model {folder}: no tokenizer files ({', '.join(TOKENIZER_FILES)}); save the model's tokenizer "
            "into the folder, e.g. AutoTokenizer.from_pretrained(...).save_pretrained(DIR)"
        )
    return files


def stage_id(cfg: BaseModelConfig) -> str:
    folder, _ = resolve_source(cfg)
    return _identity(model_files(folder))[0]


def _identity(files: list[Path]) -> tuple[str, dict]:
    # Content only: the same weights from a different path or package are the same base model.
    config = {"files": {f.name: file_digest(f)["sha256"] for f in files}}
    return artifact_id(STAGE, config), config


def run(cfg: BaseModelConfig, store: ArtifactStore) -> str:
    """Copy the base model into the store (or find it there); returns its id."""
    started = time.time()
    folder, origin = resolve_source(cfg)
    files = model_files(folder)
    aid, config = _identity(files)
    if store.exists(aid):
        log.info("base %s: already in the store (cache hit)", aid)
        return aid
    log.info("base %s: importing %s", aid, origin)
    note = remote_code_note(folder, "base model")
    if note:
        log.warning("base %s: %s", aid, note)
    with store.build(STAGE, aid, config=config, started=started) as build:
        for f in files:
            shutil.copy2(f, build.dir / f.name)
        model_config = json.loads((folder / "config.json").read_text())
        build.extra["origin"] = {"source": cfg.source, "revision": cfg.revision, "resolved": origin}
        if note:
            build.extra["remote_code_ignored"] = note
        new_head = new_mlm_weights(build.dir)
        if new_head:
            log.warning(
                "base %s: the checkpoint has no masked-LM head (%s, ...: %d weights missing, e.g. an encoder saved without it, as "
                "sentence-transformers and ELECTRA discriminators are). It is initialised at random: pretraining trains it from "
                "scratch, and the validation perplexity 'before' is that of a random head, not the base model's.",
                aid, ", ".join(new_head[:3]), len(new_head),
            )  # fmt: skip
        build.metrics.update(
            family=family_name(model_config.get("model_type")),
            mlm_head="new (randomly initialised)" if new_head else "pretrained",
            model_type=model_config.get("model_type"),
            vocab_size=model_config.get("vocab_size"),
            hidden_size=model_config.get("hidden_size") or model_config.get("dim"),
            num_hidden_layers=model_config.get("num_hidden_layers") or model_config.get("n_layers"),
            max_position_embeddings=model_config.get("max_position_embeddings"),
            weight_bytes=sum(f.stat().st_size for f in files if f.suffix == ".safetensors"),
        )
        if new_head:
            build.metrics["mlm_head_new_weights"] = new_head
    return aid


if __name__ == "__main__":
    from pretrain.stage_cli import main

    main(STAGE)
