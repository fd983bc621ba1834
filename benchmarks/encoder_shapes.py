"""Masked-LM configs of every encoder family the pipeline supports, at any shape, built in-process (no Hub).

Used by `mlm_throughput.py --family` and by the tests' family matrix (tests/test_families.py). Each
config carries what makes its family what it is at its release, with the shape (layers, hidden size,
heads, feed-forward size) given: DeBERTa-v3's relative-position attention with position buckets and
no absolute positions, ModernBERT's alternating global / sliding-window layers, ELECTRA's generator
(an embedding size of its own), RoBERTa's and XLM-R's single segment. `deberta-v2-new-head` is a
DeBERTa-v2 with the non-legacy MLM head (`legacy: false`).
"""

from __future__ import annotations

FAMILIES = ("bert", "roberta", "xlm-roberta", "deberta-v2", "modernbert", "electra", "distilbert")
VARIANTS = FAMILIES + ("deberta-v2-new-head",)


def encoder_config(family: str, vocab_size: int, *, layers: int, hidden: int, heads: int, intermediate: int,
                   max_positions: int = 512, pad_id: int = 0, cls_id: int | None = None, sep_id: int | None = None):  # fmt: skip
    """A transformers config of `family` (a `model_type`, or `deberta-v2-new-head`) at the given shape."""
    import transformers as t

    shape = dict(vocab_size=vocab_size, num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads, intermediate_size=intermediate)
    if family == "bert":
        return t.BertConfig(max_position_embeddings=max_positions, pad_token_id=pad_id, **shape)
    if family in ("roberta", "xlm-roberta"):
        # RoBERTa's positions start after the padding id, so the table is 2 rows longer; one segment.
        config = t.RobertaConfig if family == "roberta" else t.XLMRobertaConfig
        return config(max_position_embeddings=max_positions + pad_id + 1, pad_token_id=pad_id, type_vocab_size=1,
                      bos_token_id=cls_id, eos_token_id=sep_id, **shape)  # fmt: skip
    if family.startswith("deberta-v2"):
        # deberta-v3-base's attention: relative positions in buckets, shared keys, no absolute positions.
        return t.DebertaV2Config(
            max_position_embeddings=max_positions, pad_token_id=pad_id, type_vocab_size=0, relative_attention=True,
            max_relative_positions=-1, position_buckets=min(256, max_positions // 2), norm_rel_ebd="layer_norm", share_att_key=True,
            pos_att_type=["p2c", "c2p"], position_biased_input=False, layer_norm_eps=1e-7, legacy=family == "deberta-v2", **shape,
        )  # fmt: skip
    if family == "modernbert":
        return t.ModernBertConfig(
            max_position_embeddings=max(max_positions, 512), pad_token_id=pad_id, cls_token_id=cls_id, sep_token_id=sep_id,
            bos_token_id=cls_id, eos_token_id=sep_id, global_attn_every_n_layers=3, local_attention=128, **shape,
        )  # fmt: skip
    if family == "electra":
        # A generator, as google/electra-*-generator: the masked-LM half of ELECTRA, embeddings narrower than hidden.
        return t.ElectraConfig(max_position_embeddings=max_positions, pad_token_id=pad_id, embedding_size=max(hidden // 2, 16), **shape)
    if family == "distilbert":
        return t.DistilBertConfig(vocab_size=vocab_size, n_layers=layers, dim=hidden, n_heads=heads, hidden_dim=intermediate,
                                  max_position_embeddings=max_positions, pad_token_id=pad_id)  # fmt: skip
    raise ValueError(f"unknown family {family!r}; one of {', '.join(VARIANTS)}")
