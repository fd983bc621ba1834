"""The report's verdict: from the interval over seeds and test examples, and none with fewer than 3 seeds."""

from pretrain.chain import key_figures
from pretrain.core.summaries import format_comparison
from pretrain.finetuning.scoring import MIN_SEEDS_FOR_VERDICT, interval_method
from pretrain.report import headline_text, verdict


def _comparison(per_seed, low, high, said):
    return {"model": "adapted", "baseline": "base", "metric": "macro_f1", "difference": sum(per_seed) / len(per_seed), "difference_std": 0.01,
            "per_seed": per_seed, "better_in_seeds": sum(d > 0 for d in per_seed), "verdict": said, "t_test_p": 0.2,
            "interval": {"confidence": 0.95, "samples": 1000, "seeds": len(per_seed), "low": low, "high": high},
            "bootstrap": {"confidence": 0.95, "samples": 1000, "low": 0.001, "high": 0.02}}  # fmt: skip


def _results(comparison):
    return {"task": "R8", "type": "single_label", "primary_metric": "macro_f1", "comparisons": [comparison], "seeds": [0, 1, 2],
            "interval_method": interval_method(1000), "min_seeds_for_verdict": MIN_SEEDS_FOR_VERDICT, "labels": ["a", "b"],
            "sizes": {"test": 100}, "models": {}}  # fmt: skip


def test_verdict_words_and_the_headline():
    assert verdict(_comparison([0.05, 0.03, 0.04], 0.01, 0.07, "helped")) == "helped"
    assert verdict(_comparison([0.05, -0.01, 0.04], -0.01, 0.07, "no clear difference")) == "made no clear difference"
    assert verdict(_comparison([-0.05, -0.03, -0.04], -0.07, -0.01, "hurt")) == "hurt"
    assert verdict(_comparison([0.05], 0.01, 0.07, "no verdict")) is None

    text = "\n".join(headline_text(_results(_comparison([0.05, 0.03, 0.04], 0.01, 0.07, "helped")), lambda m: m))
    assert text.startswith("**Domain adaptation helped on R8**: test macro_f1 adapted − base **+0.040** (mean over 3 seeds; adapted better in 3, tied in 0, worse in 0 of 3)")
    assert "95% interval over seeds and test examples [+0.010, +0.070]" in text
    # the method, in one sentence
    assert ("The 95% interval is a t-interval on the mean of the per-seed differences whose variance adds two parts: the seed-to-seed "
            "variance of the differences (over the number of seeds) and the test-sampling variance the seeds share (from a paired "
            "bootstrap over test examples, 1,000 resamples") in text
    one = "\n".join(headline_text(_results(_comparison([0.05], 0.01, 0.07, "no verdict")), lambda m: m))
    assert one.startswith("**No verdict on R8** with 1 seed (a verdict needs at least 3: list more in `evaluate.seeds`): test macro_f1")
    assert "helped" not in one.split("\n")[0]
    line = format_comparison(_results(_comparison([0.05, -0.01, 0.04], -0.01, 0.07, "no clear difference"))).splitlines()[-1]
    assert line == ("adapted − base macro-F1: +0.027 ± 0.010 over seeds (better in 2, tied in 0, worse in 1 of 3); 95% interval over seeds and test [-0.010, +0.070]: "
                    "no clear difference; secondary: paired t-test p=0.2, 95% test-only bootstrap CI [+0.001, +0.020]")  # fmt: skip


def test_key_figures_show_the_vocabulary_change_and_per_word_perplexity():
    figures = key_figures()  # the stage table's: what each stage's row shows
    # TAPT's stages build artifacts of the kinds DAPT's do, and show them the same way.
    assert [figures[f"tapt-{s}"] for s in ("corpus", "vocab", "tokens")] == [figures[s] for s in ("ingest", "vocab", "tokens")]
    assert figures["tapt"] is figures["pretrain"] and "report" not in figures
    vocab = {"stage": "vocab", "metrics": {"mode": "extend", "base_vocab_size": 30522, "domain_vocab_size": 16000, "model_vocab_size": 33522,
                                           "added_tokens": 3000, "fertility_base": 1.3332, "fertility_domain": 1.2742,
                                           "fertility_model": 1.2604, "sequence_saving_percent": 5.46}}  # fmt: skip
    assert figures["vocab"](vocab) == "extend: 33,522 tokens (+3,000), 1.26 tokens/word, 5.5% shorter (base 1.33; domain WordPiece 16,000: 1.27)"
    keep = {"stage": "vocab", "metrics": {**vocab["metrics"], "mode": "keep"}}
    assert figures["vocab"](keep) == "keep: base 30,522 tokens, 1.33 tokens/word (domain WordPiece 16,000: 1.27)"
    assert max(len(figures["vocab"](vocab)), len(figures["vocab"](keep))) <= 110  # a Prefect table cell shows it whole
    trained = {"stage": "pretrain", "metrics": {"validation_perplexity_before": 4927.8, "validation_perplexity_after": 39.6, "steps": 600,
                                                "tokens_per_second": 9526.2, "validation_word_perplexity_before": 9000.0,
                                                "validation_word_perplexity_after": 80.25}}  # fmt: skip
    assert figures["pretrain"](trained) == "validation perplexity 4,927.8 -> 39.6 (steps 600, 9,526 tok/s); per word 9,000.0 -> 80.2"


def test_ties_are_counted_as_ties_wherever_seeds_are_counted():
    from pretrain.core.summaries import seed_counts, seed_tally

    tied = _comparison([0.02, 0.0, 0.0], -0.01, 0.03, "no clear difference")
    assert seed_tally(tied) == (1, 2, 0) and seed_counts(tied) == "better in 1, tied in 2, worse in 0"
    text = "\n".join(headline_text(_results(tied), lambda m: m))
    assert "adapted better in 1, tied in 2, worse in 0 of 3" in text and "1/3" not in text
    assert "(better in 1, tied in 2, worse in 0 of 3)" in format_comparison(_results(tied))


def test_the_report_warns_about_a_small_validation_split_where_the_run_does():
    from pretrain import report
    from pretrain.training import kit

    assert report.FEW_EVAL_BLOCKS == kit.FEW_EVAL_BLOCKS
