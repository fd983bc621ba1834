"""The report's verdict: 'helped' only when the test-set interval excludes 0 and every seed agrees."""

from pretrain.report import verdict
from pretrain.summaries import key_figures


def _comparison(per_seed, low, high):
    return {"per_seed": per_seed, "better_in_seeds": sum(d > 0 for d in per_seed), "bootstrap": {"low": low, "high": high}}


def test_verdict_needs_the_interval_and_the_seeds():
    assert verdict(_comparison([0.05, 0.03, 0.04], 0.01, 0.07)) == "helped"
    assert verdict(_comparison([0.05, -0.01, 0.04], 0.01, 0.07)) == "made no clear difference"  # one seed disagrees
    assert verdict(_comparison([0.05, 0.03, 0.04], -0.01, 0.07)) == "made no clear difference"  # interval holds 0
    assert verdict(_comparison([-0.05, -0.03, -0.04], -0.07, -0.01)) == "hurt"


def test_key_figures_show_the_vocabulary_change_and_per_word_perplexity():
    vocab = {"stage": "vocab", "metrics": {"mode": "extend", "base_vocab_size": 30522, "domain_vocab_size": 16000, "model_vocab_size": 33522,
                                           "added_tokens": 3000, "fertility_base": 1.3332, "fertility_domain": 1.2742,
                                           "fertility_model": 1.2604, "sequence_saving_percent": 5.46}}  # fmt: skip
    assert key_figures(vocab) == "extend: 33,522 tokens (+3,000), 1.26 tokens/word, 5.5% shorter (base 1.33; domain WordPiece 16,000: 1.27)"
    keep = {"stage": "vocab", "metrics": {**vocab["metrics"], "mode": "keep"}}
    assert key_figures(keep) == "keep: base 30,522 tokens, 1.33 tokens/word (domain WordPiece 16,000: 1.27)"
    assert max(len(key_figures(vocab)), len(key_figures(keep))) <= 110  # a Prefect table cell shows it whole
    trained = {"stage": "pretrain", "metrics": {"validation_perplexity_before": 4927.8, "validation_perplexity_after": 39.6, "steps": 600,
                                                "tokens_per_second": 9526.2, "validation_word_perplexity_before": 9000.0,
                                                "validation_word_perplexity_after": 80.25}}  # fmt: skip
    assert key_figures(trained) == "validation perplexity 4,927.8 -> 39.6 (steps 600, 9,526 tok/s); per word 9,000.0 -> 80.2"
