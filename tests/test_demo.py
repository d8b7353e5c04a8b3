"""End-to-end demos, as the README runs them."""

import json

import pytest

from conftest import TINY, requires_shared
from test_cli import cli


def test_default_demo_runs_offline_on_digits():
    out = json.loads(cli("demo", "--json", "--name", "na-test-demo-digits").stdout)
    assert out["n_flipped"] == 162 and out["influence_method"] == "linear"
    assert set(out["baselines"]) == {"average_influence", "self_influence", "label_quality", "loss"}
    assert out["corruption_score"]["auroc"] > 0.9
    assert out["timings_s"]["total"] > 0


@pytest.mark.slow
@requires_shared
def test_seed_scenario_demo_meets_the_quality_bar():
    out = json.loads(cli("demo", "--data", str(TINY), "--classes", "dining_table", "gondola",
                         "--name", "na-test-demo-seed", "--json").stdout)
    assert out["n_samples"] == 1100 and out["n_flipped"] == 100
    assert out["corruption_score"]["auroc"] >= 0.96
    assert out["corruption_score"]["precision_at_k"] >= 0.80
    assert out["baselines"]["average_influence"]["auroc"] < out["corruption_score"]["auroc"]
    # A second run reuses the imported dataset and cached features, and is deterministic.
    again = json.loads(cli("demo", "--data", str(TINY), "--classes", "dining_table", "gondola",
                           "--name", "na-test-demo-seed", "--json").stdout)
    assert again["corruption_score"] == out["corruption_score"] and again["baselines"] == out["baselines"]
    # Whether the first run computed features depends on what earlier tests cached;
    # the second run must find every one of them in the cache.
    assert 0 <= out["features_computed"] <= out["n_samples"] and again["features_computed"] == 0
