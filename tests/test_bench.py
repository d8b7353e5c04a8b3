"""The benchmark scripts: the GPU audit script on a CPU at small n, and the helpers the others share.

``bench/gpu.py`` is meant for a lent H200, but the same code runs on a CPU; here
it audits 100 + 40 real CIFAR-10 images from fixtures/ (two classes, 32 px) and its JSON
is checked, including the library's closed-form influence against its pyDVL
path (DirectInfluence) on the same features.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(BENCH), env.get("PYTHONPATH", "")])
    env.setdefault("FIFTYONE_DATABASE_NAME", "noise_audit_tests")
    env["FIFTYONE_DO_NOT_TRACK"] = "true"
    return env


def test_gpu_script_runs_on_cpu_at_small_n(tmp_path):
    cmd = [sys.executable, str(BENCH / "gpu.py"), "--device", "cpu", "--data", str(FIXTURES),
           "--classes", "frog", "truck", "--n-train", "100", "--n-test", "40", "--image-size", "32",
           "--workers", "2", "--repeats", "1", "--check-pydvl", "--out", "gpu_small", "--results-dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "gpu_small.json").read_text())
    assert out["device"] == "cpu" and out["precision"] == "fp32"  # the audit's default
    assert (out["n_train"], out["n_test"], out["n_classes"]) == (100, 40, 2)
    assert out["n_flipped"] == 10  # 10% uniform flips of the training labels
    run = out["runs"][0]
    stages = ("features", "head", "cross_validation", "influence", "scores")
    assert all(run["timings_s"][s] >= 0 for s in stages)
    assert run["timings_s"]["total"] == pytest.approx(sum(run["timings_s"][s] for s in stages), abs=1e-3)
    assert out["target_met"] == (run["timings_s"]["total"] < out["target_s"])
    assert run["n_parameters"] == 2 * (1280 + 1)
    for signal in ("corruption_score", "average_influence", "self_influence", "label_quality", "loss", "loo_loss"):
        m = run["metrics"][signal]
        assert 0 <= m["auroc"] <= 1 and m["k"] == 10 and m["n"] == 140
    assert run["metrics"]["corruption_score"]["auroc"] > 0.8  # flips are found even at 32 px
    check = out["pydvl_check"]  # the library's closed form == its pyDVL DirectInfluence path
    for signal in ("average_influence", "self_influence", "loss"):
        assert check[signal]["pearson"] > 0.999999
        assert check[signal]["max_rel_diff"] < 1e-6
    assert check["label_quality_is_p_given"] < 1e-12


def test_quality_mistakenness_formula_is_brains():
    """quality.py's numpy copy of Brain's mistakenness (checked against Brain in every first-seed cell)."""
    sys.path.insert(0, str(BENCH))
    import quality
    from fiftyone.brain.internal.core.mistakenness import _compute_mistakenness_class

    logits = np.random.default_rng(1).normal(size=(50, 4)) * 3
    given = np.random.default_rng(2).integers(0, 4, size=50)
    ours = quality.mistakenness(logits, given)
    theirs = [_compute_mistakenness_class(lg.tolist(), float(lg.argmax() == g)) for lg, g in zip(logits, given)]
    assert np.allclose(ours, theirs, atol=1e-12)


def test_growth_exponent():
    sys.path.insert(0, str(BENCH))
    import speed

    ns = [1000, 5000, 20000]
    assert speed.growth_exponent(ns, [2e-3 * n ** 1.5 for n in ns]) == pytest.approx(1.5)


def test_doc_tables_bold_the_best_value_and_read_the_json():
    sys.path.insert(0, str(BENCH))
    import tables

    assert tables.bold_best([{"mean": 0.91}, {"mean": 0.93}, {"mean": 0.9300001}], lambda v: f"{v['mean']:.3f}") == [
        "0.910", "**0.930**", "**0.930**"]
    results = {"summary": {"grid": [
        {"scenario": "pair", "image_size": 224, "strategy": "pair", "rate": 0.1, "seeds": [0, 1],
         "metrics": {s: {m: {"mean": 0.5 + 0.01 * i, "std": 0.0, "n": 2}
                         for m in ("auroc", "average_precision", "precision_at_k", "recall_at_10pct")}
                     for i, (s, _) in enumerate(tables.SIGNALS)}},
        {"scenario": "pair", "image_size": 224, "strategy": "uniform", "rate": 0.1, "seeds": [0, 1],
         "metrics": {s: {m: {"mean": 0.9 - 0.01 * i, "std": 0.0, "n": 2}
                         for m in ("auroc", "average_precision", "precision_at_k", "recall_at_10pct")}
                     for i, (s, _) in enumerate(tables.SIGNALS)}},
    ]}}
    entries = tables.grid_entries(results, "pair", 224)
    assert [e["strategy"] for e in entries] == ["uniform", "pair"]
    wins = tables.wins_table(entries)
    # uniform: the score (first signal) is best; pair: the last signal (average influence) is.
    assert wins[2].startswith("| uniform | 10% | corruption score 0.900 |")
    assert wins[3].startswith("| pair | 10% | average influence 0.570 | 0.500 |")
