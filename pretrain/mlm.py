"""Masked-language-model pieces: dynamic masking and a prediction head run only where tokens are masked.

The usual recipe (BertForMaskedLM with labels) projects every position onto the whole vocabulary and
then ignores ~85% of them in the loss. `MaskedLM` runs the encoder, gathers the masked positions
(known on the host when the batch is built, so no device sync) and runs the head on those alone. The
loss is the same cross-entropy over the same positions; the decoder stays the tied input embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.logs import get_logger

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
        # A plain tuple, not submodules: the state dict stays exactly the wrapped model's.
        self._parts = mlm_parts(model)
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
        encoder, head = self._parts
        if head is None:
            labels = torch.full_like(input_ids, -100).view(-1).index_copy(0, masked_positions, masked_labels)
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), labels, reduction=reduction)
        hidden = encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        selected = hidden.reshape(-1, hidden.size(-1)).index_select(0, masked_positions)
        logits = head(selected)
        return F.cross_entropy(logits.float(), masked_labels, reduction=reduction)


def _distilbert_head(model: nn.Module):
    def head(hidden: torch.Tensor) -> torch.Tensor:
        return model.vocab_projector(model.vocab_layer_norm(model.activation(model.vocab_transform(hidden))))

    return head


def mlm_parts(model: nn.Module) -> tuple[nn.Module, Callable | None]:
    """(encoder, head) of a BERT-family masked-LM model; head None means: use the full model forward."""
    model_type = getattr(model.config, "model_type", "")
    if hasattr(model, "cls") and hasattr(model, "bert"):
        return model.bert, model.cls
    if hasattr(model, "lm_head") and hasattr(model, "roberta"):
        return model.roberta, model.lm_head
    if model_type == "distilbert":
        return model.distilbert, _distilbert_head(model)
    log.warning("masked-only MLM head not implemented for model type %r; using the full-vocabulary head", model_type)
    return model, None
