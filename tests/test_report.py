"""The report's verdict: 'helped' only when the test-set interval excludes 0 and every seed agrees."""

from pretrain.report import verdict


def _comparison(per_seed, low, high):
    return {"per_seed": per_seed, "better_in_seeds": sum(d > 0 for d in per_seed), "bootstrap": {"low": low, "high": high}}


def test_verdict_needs_the_interval_and_the_seeds():
    assert verdict(_comparison([0.05, 0.03, 0.04], 0.01, 0.07)) == "helped"
    assert verdict(_comparison([0.05, -0.01, 0.04], 0.01, 0.07)) == "made no clear difference"  # one seed disagrees
    assert verdict(_comparison([0.05, 0.03, 0.04], -0.01, 0.07)) == "made no clear difference"  # interval holds 0
    assert verdict(_comparison([-0.05, -0.03, -0.04], -0.07, -0.01)) == "hurt"
