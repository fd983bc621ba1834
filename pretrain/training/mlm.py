"""Masked-language-model pieces: dynamic masking and a prediction head run only where tokens are masked.

The usual recipe (BertForMaskedLM with labels) projects every position onto the whole vocabulary and
then ignores ~85% of them in the loss. `MaskedLM` runs the encoder, gathers the masked positions
(known on the host when the batch is built, so no device sync) and runs the head on those alone. The
loss is the same cross-entropy over the same positions; the decoder stays the tied input embeddings.

Each family's head is taken apart by an adapter (`HEADS`, by `model_type`: BERT's `cls`, RoBERTa's
and XLM-R's `lm_head`, DeBERTa-v2's `cls.predictions` or `lm_predictions`, ModernBERT's `head` +
`decoder`, ELECTRA's generator head, DistilBERT's `vocab_*` layers); another family's recognisable
head is found generically; either is checked against the model's own logits before it is used
(`mlm_head`), and only a model with neither trains on the full-vocabulary head, with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.core.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Masking:
    """BERT's dynamic masking: select `mlm_probability` of the tokens, then 80/10/10 [MASK]/random/keep.

    With `whole_word`, words are selected (each with probability `mlm_probability`) and all their
    tokens are predicted together; the 80/10/10 choice is still made per token, as in BERT's release.
    Special tokens ([CLS], [SEP], [PAD], [MASK]) are never selected nor drawn as random replacements.
    """

    mlm_probability: float
    mask_replace_prob: float
    random_replace_prob: float
    mask_id: int
    special_ids: tuple[int, ...]
    vocab_size: int
    whole_word: bool = False

    def __post_init__(self) -> None:
        ordinary = torch.ones(self.vocab_size, dtype=torch.bool)
        ordinary[list(self.special_ids)] = False
        object.__setattr__(self, "_ordinary_ids", ordinary.nonzero().squeeze(1))
        object.__setattr__(self, "_special", torch.tensor(self.special_ids))

    def __call__(
        self, input_ids: torch.Tensor, generator: torch.Generator, word_starts: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Mask a (batch, seq) block of ids; returns inputs, flat masked positions and their labels.

        `word_starts` (bool, same shape) marks the first token of each word; needed for whole-word masking.
        """
        input_ids = input_ids.clone()
        special = torch.isin(input_ids, self._special.to(input_ids.dtype))
        if self.whole_word:
            if word_starts is None:
                raise ValueError("whole-word masking needs the word-start flags of the batch")
            # Number the words of each row; draw one uniform per word; a token follows its word.
            word_index = torch.cumsum(word_starts.long(), dim=1)
            draws = torch.rand((input_ids.size(0), input_ids.size(1) + 1), generator=generator)
            selected = (draws.gather(1, word_index) < self.mlm_probability) & ~special
        else:
            probability = torch.full(input_ids.shape, self.mlm_probability).masked_fill_(special, 0.0)
            selected = torch.bernoulli(probability, generator=generator).bool()
        positions = selected.view(-1).nonzero().squeeze(1)
        labels = input_ids.view(-1)[positions]
        action = torch.rand(positions.shape, generator=generator)
        to_mask = action < self.mask_replace_prob
        to_random = (action >= self.mask_replace_prob) & (action < self.mask_replace_prob + self.random_replace_prob)
        flat = input_ids.view(-1)
        flat[positions[to_mask]] = self.mask_id
        flat[positions[to_random]] = self._random_tokens(int(to_random.sum()), generator)
        return {"input_ids": input_ids, "masked_positions": positions, "masked_labels": labels}

    def _random_tokens(self, n: int, generator: torch.Generator) -> torch.Tensor:
        ids = self._ordinary_ids
        return ids[torch.randint(len(ids), (n,), generator=generator)]


def compiled(function: Callable) -> Callable:
    """`torch.compile` of a training step whose tensors have the masked positions as their first dimension.

    Every micro-batch masks a different number of tokens. Marking that dimension dynamic (`dynamic`
    below) gives one graph for every count instead of a recompilation per step; the other shapes
    (micro-batch x sequence length) are fixed in training, so they stay static.
    """
    return torch.compile(function)


def dynamic(*tensors: torch.Tensor) -> None:
    """Mark the first dimension of each tensor (masked positions, their labels or logits) as varying between calls."""
    for tensor in tensors:
        torch._dynamo.mark_dynamic(tensor, 0)


class MaskedLM(nn.Module):
    """A Hugging Face *ForMaskedLM model whose head runs only on the masked positions.

    With `compile`, training steps run through `torch.compile` (the masked-position count dynamic, see
    `compiled`); evaluation (`model.eval()`) stays eager, so switching modes never recompiles.
    """

    def __init__(self, model: nn.Module, compile: bool = False):
        super().__init__()
        self.model = model
        # Not a submodule: the state dict stays exactly the wrapped model's.
        self._head = mlm_head(model)
        self._compiled = compiled(self._loss) if compile else None

    def forward(
        self,
        input_ids: torch.Tensor,
        masked_positions: torch.Tensor,
        masked_labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor:
        if self._compiled is not None and self.training:
            dynamic(masked_positions, masked_labels)
            return self._compiled(input_ids, masked_positions, masked_labels, attention_mask, reduction)
        return self._loss(input_ids, masked_positions, masked_labels, attention_mask, reduction)

    def _loss(self, input_ids, masked_positions, masked_labels, attention_mask, reduction) -> torch.Tensor:
        logits = self._head.masked_logits(input_ids, masked_positions, attention_mask)
        return F.cross_entropy(logits.float(), masked_labels, reduction=reduction)


# --- the prediction head of each family -----------------------------------------------------------------


@dataclass(frozen=True)
class MlmHead:
    """A masked-LM model taken apart: the encoder, and the head that maps hidden states to vocabulary logits.

    `project` None means the model is not taken apart (an unrecognised family): `masked_logits` then
    runs the full model and keeps the masked rows. `output_bias` is the vocabulary-sized output bias
    (None when the family has none), which vocabulary extension initialises for new tokens.
    """

    family: str
    model: nn.Module
    encoder: nn.Module
    project: Callable[[torch.Tensor], torch.Tensor] | None
    output_bias: nn.Parameter | None

    def masked_logits(self, input_ids: torch.Tensor, masked_positions: torch.Tensor,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Logits at the flat masked positions only, (masked tokens, vocabulary)."""
        if self.project is None:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            return logits.reshape(-1, logits.size(-1)).index_select(0, masked_positions)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        return self.project(hidden.reshape(-1, hidden.size(-1)).index_select(0, masked_positions))


def _bert(model):  # BertForMaskedLM: cls.predictions = transform (dense, act, LayerNorm) + decoder tied to the embeddings
    return model.bert, model.cls, model.cls.predictions.bias


def _roberta(model):  # RoBERTa, XLM-R, CamemBERT: lm_head = dense, gelu, layer_norm, decoder (+ bias)
    return model.roberta, model.lm_head, model.lm_head.bias


def _distilbert(model):
    def project(hidden: torch.Tensor) -> torch.Tensor:
        return model.vocab_projector(model.vocab_layer_norm(model.activation(model.vocab_transform(hidden))))

    return model.distilbert, project, model.vocab_projector.bias


def _deberta_v2(model):
    # Two heads: `legacy` (the default, what the released checkpoints use) is BERT's `cls.predictions`;
    # otherwise `lm_predictions.lm_head` multiplies by the word embeddings it is handed.
    if getattr(model, "legacy", True):
        return model.deberta, model.cls, model.cls.predictions.bias
    head, embeddings = model.lm_predictions, model.deberta.embeddings.word_embeddings

    def project(hidden: torch.Tensor) -> torch.Tensor:
        return head(hidden, embeddings)

    return model.deberta, project, head.lm_head.bias


def _electra(model):  # the generator's head: dense, gelu, LayerNorm (generator_predictions), then generator_lm_head
    def project(hidden: torch.Tensor) -> torch.Tensor:
        return model.generator_lm_head(model.generator_predictions(hidden))

    return model.electra, project, model.generator_lm_head.bias


def _modernbert(model):  # its sparse_prediction path: head (dense, act, norm) then decoder, on the kept rows
    def project(hidden: torch.Tensor) -> torch.Tensor:
        return model.decoder(model.head(hidden))

    return model.model, project, model.decoder.bias


# model_type -> (encoder, project, output bias). XLM-R and CamemBERT are RoBERTa's classes under other names.
HEADS: dict[str, Callable] = {
    "bert": _bert,
    "roberta": _roberta,
    "xlm-roberta": _roberta,
    "camembert": _roberta,
    "distilbert": _distilbert,
    "deberta-v2": _deberta_v2,
    "electra": _electra,
    "modernbert": _modernbert,
}
# A family not listed: a head under one of these names, called on the base model's hidden states, is
# used when it gives the model's own logits (ALBERT's `predictions`, MPNet's `lm_head`, ...).
GENERIC_HEAD_NAMES = ("cls", "lm_head", "predictions")


def mlm_head(model: nn.Module, check: bool = True) -> MlmHead:
    """The encoder and masked-only head of a masked-LM model: the family's own, else a recognisable one, else the full model.

    With `check`, whichever is found is checked once on a short input (eval mode, no gradients, no
    random numbers drawn): encoder + head must give the model's own logits, or the full-vocabulary
    head is used, with a warning, rather than train a different loss. (Without it, for callers that
    only need the encoder.)
    """
    model_type = getattr(model.config, "model_type", "")
    found = None
    if model_type in HEADS:
        try:
            found = HEADS[model_type](model)
        except AttributeError:  # a transformers release that renamed the family's modules
            found = None
    if found is None:
        found = _generic(model)
    if found is not None:
        encoder, project, bias = found
        head = MlmHead(model_type, model, encoder, project, bias)
        problem = _mismatch(head) if check else None
        if problem is None:
            return head
        log.warning("masked-only MLM head for model type %r does not reproduce the model's logits (%s); using the full-vocabulary head",
                    model_type, problem)  # fmt: skip
    else:
        log.warning("masked-only MLM head not implemented for model type %r; using the full-vocabulary head", model_type)
    output = model.get_output_embeddings()
    bias = getattr(output, "bias", None) if output is not None else None
    return MlmHead(model_type, model, model, None, bias if bias is not None and bias.numel() == model.config.vocab_size else None)


def _generic(model: nn.Module):
    encoder = getattr(model, "base_model", None)
    if encoder is None or encoder is model:
        return None
    for name in GENERIC_HEAD_NAMES:
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            output = model.get_output_embeddings()
            bias = getattr(output, "bias", None) if output is not None else None
            return encoder, head, bias
    return None


@torch.no_grad()
def _mismatch(head: MlmHead) -> str | None:
    """None when encoder + head give the full model's logits on a short input; else what differs."""
    model = head.model
    device = next(model.parameters()).device
    ids = ((torch.arange(8) * 7 + 5) % model.get_input_embeddings().num_embeddings).unsqueeze(0).to(device)
    was_training = model.training
    model.eval()
    try:
        full = model(input_ids=ids).logits
        full = full.reshape(-1, full.size(-1))
        fast = head.masked_logits(ids, torch.arange(ids.numel(), device=device))
    except Exception as e:  # noqa: BLE001 - any failure means: do not take this model apart
        return f"{type(e).__name__}: {e}"
    finally:
        model.train(was_training)
    if fast.shape != full.shape:
        return f"logits of shape {tuple(fast.shape)} instead of {tuple(full.shape)}"
    if not torch.allclose(fast.float(), full.float(), rtol=1e-4, atol=1e-4):
        return f"logits differ by up to {(fast.float() - full.float()).abs().max().item():.3g}"
    return None


def encoder_of(model: nn.Module) -> nn.Module:
    """The encoder of a masked-LM model (embeddings and layers, no MLM head); the model itself when not recognised."""
    return mlm_head(model, check=False).encoder
