import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pretrain.training.mlm import Masking, MaskedLM, MlmHead, mlm_head

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from encoder_shapes import VARIANTS, encoder_config  # noqa: E402

SPECIAL = (0, 2, 3, 4)  # pad, cls, sep, mask in these tests


def _masking(**overrides):
    values = dict(mlm_probability=0.15, mask_replace_prob=0.8, random_replace_prob=0.1, mask_id=4, special_ids=SPECIAL, vocab_size=1000)
    values.update(overrides)
    return Masking(**values)


def _blocks(batch=64, length=128, vocab=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, length), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    ids[::4, 64:] = 0  # some padding
    return ids


def test_masking_proportions_on_a_large_batch():
    ids = _blocks(batch=512)
    out = _masking()(ids, torch.Generator().manual_seed(1))
    eligible = ~torch.isin(ids, torch.tensor(SPECIAL))
    n = int(eligible.sum())
    selected = out["masked_positions"]
    share = len(selected) / n
    # Binomial(n, 0.15): 5 standard deviations is a test that fails only when the rate is wrong.
    assert abs(share - 0.15) < 5 * (0.15 * 0.85 / n) ** 0.5
    assert torch.equal(ids.view(-1)[selected], out["masked_labels"])
    after = out["input_ids"].view(-1)[selected]
    as_mask = (after == 4).float().mean().item()
    unchanged = (after == out["masked_labels"]).float().mean().item()
    assert abs(as_mask - 0.8) < 0.02
    # unchanged = the 10% kept plus random draws that hit the same id (1/995)
    assert abs(unchanged - 0.1) < 0.02
    assert abs((1 - as_mask - unchanged) - 0.1) < 0.02


def test_special_tokens_and_padding_are_never_masked_or_drawn():
    ids = _blocks()
    out = _masking(mlm_probability=0.9, mask_replace_prob=0.0, random_replace_prob=1.0)(ids, torch.Generator().manual_seed(2))
    flat = ids.view(-1)
    assert not torch.isin(flat[out["masked_positions"]], torch.tensor(SPECIAL)).any()
    changed = out["input_ids"].view(-1)[out["masked_positions"]]
    assert not torch.isin(changed, torch.tensor(SPECIAL)).any()
    untouched = torch.ones_like(flat, dtype=torch.bool)
    untouched[out["masked_positions"]] = False
    assert torch.equal(out["input_ids"].view(-1)[untouched], flat[untouched])


def test_masking_is_a_function_of_the_generator():
    ids = _blocks()
    a = _masking()(ids, torch.Generator().manual_seed(5))
    b = _masking()(ids, torch.Generator().manual_seed(5))
    assert all(torch.equal(a[k], b[k]) for k in a)


def _tiny(kind: str):
    """A 2-layer masked-LM model of a family (or variant) of benchmarks/encoder_shapes.py, vocabulary 300."""
    from transformers import AutoModelForMaskedLM

    torch.manual_seed(0)
    config = encoder_config(kind, 300, layers=2, hidden=32, heads=2, intermediate=64, max_positions=64, pad_id=0, cls_id=2, sep_id=3)
    model = AutoModelForMaskedLM.from_config(config)
    # Fresh models start with zero output biases; the test must see them used.
    for parameter in model.parameters():
        if parameter.dim() == 1 and parameter.numel() == 300:
            torch.nn.init.normal_(parameter, std=0.5)
    return model


@pytest.mark.parametrize("kind", VARIANTS)
def test_masked_only_head_loss_equals_full_head_loss(kind):
    model = _tiny(kind).eval()
    ids = torch.randint(5, 300, (4, 32), generator=torch.Generator().manual_seed(3))
    batch = _masking(vocab_size=300)(ids, torch.Generator().manual_seed(4))
    labels = torch.full_like(ids, -100).view(-1)
    labels[batch["masked_positions"]] = batch["masked_labels"]
    full = model(input_ids=batch["input_ids"], labels=labels.view(ids.shape)).loss
    wrapped = MaskedLM(model)
    assert wrapped._head.project is not None  # the fast path, not the full-vocabulary fallback
    assert wrapped._head.encoder is not model
    assert wrapped._head.output_bias is not None and wrapped._head.output_bias.numel() == 300
    fast = wrapped(**batch)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)
    # and the gradients agree too
    model.zero_grad()
    full.backward()
    full_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    MaskedLM(model)(**batch).backward()
    for name, grad in full_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6)


def test_the_output_bias_is_the_one_the_logits_use():
    # Extension initialises new entries of `output_bias`: it must be the bias the prediction adds.
    for kind in VARIANTS:
        model = _tiny(kind).eval()
        head = MaskedLM(model)._head
        ids = torch.randint(5, 300, (1, 8), generator=torch.Generator().manual_seed(0))
        positions = torch.arange(8)
        before = head.masked_logits(ids, positions)
        with torch.no_grad():
            head.output_bias[7] += 1.0
        after = head.masked_logits(ids, positions)
        changed = (after - before).abs().amax(0) > 1e-6
        assert changed.nonzero().flatten().tolist() == [7], kind


def test_decoder_stays_tied_and_state_dict_is_the_models():
    model = _tiny("bert")
    wrapped = MaskedLM(model)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert set(wrapped.state_dict()) == {f"model.{k}" for k in model.state_dict()}


def test_full_head_fallback_matches(caplog):
    model = _tiny("bert").eval()
    wrapped = MaskedLM(model)
    wrapped._head = MlmHead("bert", model, model, None, None)  # what an unknown architecture gets
    ids = torch.randint(5, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    batch = _masking(vocab_size=300)(ids, torch.Generator().manual_seed(0))
    logits = model(input_ids=batch["input_ids"]).logits.view(-1, 300)
    expected = F.cross_entropy(logits[batch["masked_positions"]], batch["masked_labels"])
    torch.testing.assert_close(wrapped(**batch), expected)


def test_a_recognisable_head_of_an_unlisted_family_still_runs_on_masked_positions_only():
    # ALBERT is not one of the listed families: its `predictions` head over `albert` is found and checked.
    import transformers as t

    torch.manual_seed(0)
    config = t.AlbertConfig(vocab_size=300, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    model = t.AlbertForMaskedLM(config).eval()
    head = mlm_head(model)
    assert head.project is model.predictions and head.encoder is model.albert
    ids = torch.randint(5, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    batch = _masking(vocab_size=300)(ids, torch.Generator().manual_seed(0))
    labels = torch.full_like(ids, -100).view(-1)
    labels[batch["masked_positions"]] = batch["masked_labels"]
    full = model(input_ids=batch["input_ids"], labels=labels.view(ids.shape)).loss
    torch.testing.assert_close(MaskedLM(model)(**batch), full, rtol=1e-5, atol=1e-6)


def test_a_head_that_does_not_reproduce_the_logits_falls_back_to_the_full_head(caplog):
    from transformers.modeling_outputs import MaskedLMOutput

    model = _tiny("bert").eval()
    model.config.model_type = "my-bert"  # an unlisted family whose `cls` head is found generically...
    own = model.forward
    # ...but whose forward does more than encoder + head (here: a temperature)
    model.forward = lambda **kwargs: MaskedLMOutput(logits=own(**kwargs).logits / 2)
    with caplog.at_level("WARNING"):
        head = mlm_head(model)
    assert head.project is None
    assert "does not reproduce the model's logits" in caplog.text


def _word_starts(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    starts = torch.rand(shape, generator=g) < 0.6  # words of 1-4+ pieces
    starts[:, 0] = True
    return starts


def test_whole_word_masking_masks_words_together_at_the_right_rate():
    ids = _blocks(batch=512)
    starts = _word_starts(ids.shape)
    out = _masking(whole_word=True)(ids, torch.Generator().manual_seed(7), word_starts=starts)
    selected = torch.zeros(ids.numel(), dtype=torch.bool)
    selected[out["masked_positions"]] = True
    selected = selected.view(ids.shape)
    special = torch.isin(ids, torch.tensor(SPECIAL))
    word = torch.cumsum(starts.long(), dim=1)
    # every word is all in or all out (special tokens never in)
    for row in range(0, 512, 37):
        for w in word[row].unique():
            members = (word[row] == w) & ~special[row]
            if members.any():
                assert selected[row][members].all() or not selected[row][members].any()
    assert not (selected & special).any()
    eligible = int((~special).sum())
    share = int(selected.sum()) / eligible
    # words are selected independently with p = 0.15, so the token share is 0.15 in expectation;
    # its spread is larger than for single tokens (words have ~1.7 pieces): 6 token-level sigmas.
    assert abs(share - 0.15) < 6 * (0.15 * 0.85 / eligible) ** 0.5 * 1.7
    after = out["input_ids"].view(-1)[out["masked_positions"]]
    assert abs((after == 4).float().mean().item() - 0.8) < 0.02


def test_whole_word_masking_needs_word_starts():
    with pytest.raises(ValueError, match="needs the word-start flags"):
        _masking(whole_word=True)(_blocks(), torch.Generator().manual_seed(0))
