"""The encoder families the pipeline adapts, and what differs between them: which models qualify, attention, tokenizer kind.

A base model is any encoder transformers can load as `AutoModelForMaskedLM` (its `model_type` has a
masked-LM class) that is not an encoder-decoder: BERT, RoBERTa, XLM-R, DeBERTa-v2/v3, ModernBERT,
ELECTRA and DistilBERT are the ones tested through every stage (`FAMILIES`); ALBERT, CamemBERT, MPNet
and the other masked-LM encoders of transformers load and train the same way. A decoder-only model
(GPT-2, Llama) or an encoder-decoder (T5, BART) is refused with `masked_lm_problem` before anything runs.

Attention: the fused `torch.nn.functional.scaled_dot_product_attention` (SDPA) where the model's
transformers class supports it, else the model's own implementation (`eager`; DeBERTa-v2/v3 has no
SDPA path in transformers 5), chosen by `attention_implementation` and logged once per model type.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pretrain.core.logs import get_logger

log = get_logger(__name__)

# model_type -> the family's name in messages and tables. The families tested through every stage.
FAMILIES = {
    "bert": "BERT",
    "roberta": "RoBERTa",
    "xlm-roberta": "XLM-R",
    "deberta-v2": "DeBERTa-v2/v3",
    "modernbert": "ModernBERT",
    "electra": "ELECTRA",
    "distilbert": "DistilBERT",
}
SUPPORTED = "BERT, RoBERTa, XLM-R, DeBERTa-v2/v3, ModernBERT, ELECTRA, DistilBERT (or another masked-LM encoder of transformers)"
# The tokenizer models whose vocabulary `vocab.mode: extend` can add to (pretrain/models/extend.py).
EXTENDABLE_TOKENIZERS = ("WordPiece", "BPE", "Unigram")

_logged: set[tuple[str, str]] = set()


def family_name(model_type: str | None) -> str:
    """The family's name for a config's `model_type` (`deberta-v2` -> `DeBERTa-v2/v3`); the type itself when not a listed family."""
    return FAMILIES.get(model_type or "", str(model_type))


def masked_lm_problem(model_config: dict[str, Any]) -> str | None:
    """Why a model (its config.json as a dict) cannot be adapted by masked-LM pretraining, or None.

    Refused: a `model_type` with no masked-LM class in transformers (decoder-only models such as GPT-2,
    Llama), and encoder-decoder models (T5, BART: transformers files BART under masked LM because its
    denoising objective fills masks, but its encoder alone is not what downstream tasks fine-tune here).
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    model_type = model_config.get("model_type")
    if model_type is None:
        return "its config.json has no model_type; is this a Hugging Face model folder?"
    if model_config.get("is_encoder_decoder"):
        kind = "an encoder-decoder model"
    elif model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        causal = model_config.get("is_decoder") or any(str(a).endswith("ForCausalLM") or "LMHead" in str(a) for a in model_config.get("architectures") or [])
        kind = "a decoder-only (causal) language model" if causal or model_type in _causal_types() else "not a masked-language-model encoder"
    else:
        return None
    return (
        f"model_type {model_type!r} is {kind}; this pipeline continues masked-LM pretraining of an encoder: "
        f"{SUPPORTED}"
    )


def _causal_types() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def attention_implementation(config) -> str:
    """`sdpa` when the model class of `config` (a transformers config) supports it, else `eager`; logged once per model type."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    model_type = getattr(config, "model_type", "")
    try:
        supports = bool(getattr(MODEL_MAPPING[type(config)], "_supports_sdpa", False))
    except KeyError:  # a config class transformers has no model for: let it use its own default
        supports = False
    choice = "sdpa" if supports else "eager"
    if (model_type, choice) not in _logged:
        _logged.add((model_type, choice))
        if supports:
            log.info("attention: %s (%s) uses SDPA (torch scaled_dot_product_attention)", family_name(model_type), model_type)
        else:
            log.info("attention: %s (%s) has no SDPA path in this transformers version; using its own (eager) attention",
                     family_name(model_type), model_type)  # fmt: skip
    return choice


# Families whose learned positions start after the padding id (RoBERTa's fairseq heritage): 514 rows hold 512 tokens.
OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "roberta-prelayernorm", "xlm-roberta-xl"}


def max_sequence_length(model_config: dict[str, Any]) -> int | None:
    """The longest input (special tokens included) a model takes, from its config.json; None when it does not say."""
    limit = model_config.get("max_position_embeddings")
    if not isinstance(limit, int):
        return None
    if model_config.get("model_type") in OFFSET_POSITIONS:
        return limit - (model_config.get("pad_token_id") or 0) - 1
    return limit


def uses_token_types(model_config: dict[str, Any]) -> bool:
    """Whether a model has token type (segment) embeddings: BERT, ELECTRA yes; RoBERTa, XLM-R, DeBERTa-v3, ModernBERT, DistilBERT no."""
    return (model_config.get("type_vocab_size") or 1) > 1


def model_inputs(batch: dict, model_config: dict[str, Any]) -> dict:
    """A tokenizer's output without `token_type_ids` for a model that has no segment embeddings (ModernBERT's forward rejects them)."""
    return batch if uses_token_types(model_config) else {k: v for k, v in batch.items() if k != "token_type_ids"}


def tokenizer_kind(folder: Path) -> str | None:
    """The tokenizer model of a model folder (`WordPiece`, `BPE`, `Unigram`, `WordLevel`, ...) from its files; None when unknown."""
    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        try:
            return json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]["type"]
        except (ValueError, KeyError, TypeError):
            return None
    if (folder / "vocab.txt").is_file():
        return "WordPiece"
    if (folder / "merges.txt").is_file():
        return "BPE"
    return None


def extend_problem(folder: Path, model_type: str | None) -> str | None:
    """Why `vocab.mode: extend` cannot add to this base model's tokenizer, or None (also None when its kind is not known yet)."""
    kind = tokenizer_kind(folder)
    if kind is None or kind in EXTENDABLE_TOKENIZERS:
        return None
    return (
        f"the {family_name(model_type)} base model's tokenizer is a {kind} model, which extend cannot add to "
        f"(it extends {', '.join(EXTENDABLE_TOKENIZERS)} tokenizers); use vocab.mode: keep (or replace)"
    )
