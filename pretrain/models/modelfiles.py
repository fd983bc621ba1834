"""Loading a Hugging Face model folder without running anything from it: safetensors weights only, no remote code.

Every place that loads model weights from a folder (the pretrain and distill stages, TAPT, fine-tuning
in evaluate, `dapt embed` on an artifact or any folder) calls `load_model`; `model_folder` finds the
folder of a model artifact, whichever stage built it. A folder with only
pickle-based weights (`pytorch_model.bin`, `*.pt`) is refused with how to convert it; `auto_map`
(custom model code) is never imported: the folder loads as the built-in transformers class of its
`model_type`, and `remote_code_note` says so when a model is imported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pretrain.core.errors import InputError
from pretrain.models.families import attention_implementation

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def require_safetensors(folder: Path, what: str = "model") -> None:
    """An InputError naming `folder` when it holds no safetensors weights (saying which pickle files it has instead)."""
    folder = Path(folder)
    if any(p.name.endswith(".safetensors") for p in folder.iterdir()):
        return
    unsafe = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    hint = (
        f" It has {', '.join(unsafe)}: pickle-based weights are never loaded. Convert them once with "
        "`AutoModelForMaskedLM.from_pretrained(DIR).save_pretrained(DIR)` in an environment you trust."
        if unsafe
        else ""
    )
    raise InputError(f"{what} {folder}: no safetensors weights.{hint}")


def model_folder(store: Any, aid: str, what: str) -> Path:
    """The Hugging Face folder of a model artifact in `store` (an `ArtifactStore`): an imported base model
    (`b-`), a pretrained (`m-`) or a distilled (`d-`) one; an InputError naming `what` for any other artifact."""
    stage = store.manifest(aid)["stage"]
    if stage == "base":
        return store.local_dir(aid)
    if stage in ("pretrain", "distill"):
        return store.local_dir(aid) / "model"
    raise InputError(f"{what}: artifact {aid} is a {stage} artifact, not a model; give a b-..., m-... or d-... id")


def load_model(auto_class: Any, folder: Path, what: str = "model", **kwargs: Any):
    """`auto_class.from_pretrained(folder, **kwargs)` from safetensors only, never running code from the folder.

    The attention implementation, unless given, is the model's fastest that transformers supports for
    it (`pretrain.models.families.attention_implementation`: SDPA, else the model's own).
    """
    require_safetensors(folder, what)
    if "attn_implementation" not in kwargs:
        from transformers import AutoConfig

        kwargs["attn_implementation"] = attention_implementation(AutoConfig.from_pretrained(folder, trust_remote_code=False))
    return auto_class.from_pretrained(folder, use_safetensors=True, trust_remote_code=False, **kwargs)


def new_mlm_weights(folder: Path) -> list[str]:
    """The weights `AutoModelForMaskedLM` initialises at random when loading `folder` (its MLM head, when the checkpoint has none)."""
    import transformers
    from transformers import AutoModelForMaskedLM

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the load report lists them: this function returns them instead
    try:
        _, info = load_model(AutoModelForMaskedLM, folder, "base model", output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"base model {folder}: transformers cannot load it as a masked-LM model ({first}); "
                         "are config.json and the weights from the same model?") from None  # fmt: skip
    finally:
        transformers.logging.set_verbosity(verbosity)
    return sorted(info.get("missing_keys") or [])


def remote_code_note(folder: Path, what: str = "model") -> str | None:
    """What to tell the user when `folder`'s config or tokenizer config asks for custom code (`auto_map`), else None.

    The custom code is never run; the folder loads as transformers' own classes for its `model_type`.
    An InputError when there are none (a `model_type` transformers does not know could only load as remote code).
    """
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    maps = {}
    for name in ("config.json", "tokenizer_config.json"):
        path = Path(folder) / name
        if path.is_file():
            try:
                mapping = json.loads(path.read_text(encoding="utf-8")).get("auto_map")
            except (ValueError, AttributeError):
                continue
            if mapping:
                maps[name] = mapping
    if not maps:
        return None
    model_type = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise InputError(
            f"{what} {folder}: model_type {model_type!r} is not built into transformers and its auto_map asks for custom code, "
            "which this pipeline never runs; use a model of a built-in architecture"
        )
    loads_as = MODEL_FOR_MASKED_LM_MAPPING_NAMES.get(model_type, CONFIG_MAPPING[model_type].__name__)
    listed = "; ".join(f"{name}: {', '.join(f'{k} -> {v}' for k, v in mapping.items())}" for name, mapping in maps.items())
    return (
        f"{what} {folder} asks for custom code ({listed}). Remote code is never run: it loads as transformers' built-in "
        f"{model_type!r} classes ({loads_as} for masked-LM pretraining), and the artifact records it so"
    )
