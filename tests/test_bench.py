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



def test_split_files_is_a_seeded_stratified_subset():
    """_common.split_files, the one lister of gpu.py, grid_signals.py, speed.py and scale_out.py."""
    sys.path.insert(0, str(BENCH))
    import _common

    paths, _, classes = _common.split_files(FIXTURES, "train")
    assert classes == ["airplane", "frog", "truck"] and len(paths) == 150
    sub, sub_labels, sub_classes = _common.split_files(FIXTURES, "train", n=20, seed=1, only=["truck", "frog"])
    assert sub_classes == ["frog", "truck"]
    assert np.bincount(sub_labels).tolist() == [10, 10]
    assert set(sub) <= set(paths) and list(sub) == sorted(sub)
    assert all(Path(p).parent.name == sub_classes[y] for p, y in zip(sub, sub_labels))
    again, _, _ = _common.split_files(FIXTURES, "train", n=20, seed=1, only=["truck", "frog"])
    other, _, _ = _common.split_files(FIXTURES, "train", n=20, seed=2, only=["truck", "frog"])
    assert list(again) == list(sub) and list(other) != list(sub)


def test_grid_readers_shared_by_the_studies(tmp_path, monkeypatch):
    """quality_grid's stored_cells, by_row and pooled, which bench/studies/limits.py reads the grid with."""
    sys.path.insert(0, str(BENCH))
    import quality_grid as qg

    from noise_audit.metrics import calibration

    for data, names in (("cifar32", ("uniform-0.2-1", "pair-0.05-0", "uniform-0.05-3", "clean")),
                        ("ten64", ("uniform-0.1-2", "uniform-0.1-0", "pair-0.1-1"))):
        (tmp_path / data).mkdir()
        for name in names:
            (tmp_path / data / f"{name}.npz").write_bytes(b"")
    monkeypatch.setattr(qg, "GRID", tmp_path)

    def cells(part=None):
        return [c[:4] for c in qg.stored_cells(part)]

    assert cells() == [("ten64", "pair", "0.1", 1), ("ten64", "uniform", "0.1", 0), ("ten64", "uniform", "0.1", 2),
                       ("cifar32", "pair", "0.05", 0), ("cifar32", "uniform", "0.05", 3),
                       ("cifar32", "uniform", "0.2", 1)]
    assert cells("tuning") == [("ten64", "pair", "0.1", 1), ("ten64", "uniform", "0.1", 0)]
    assert cells("reported") == [c for c in cells() if c not in cells("tuning")]

    rows = qg.by_row([(("cifar32", "uniform", 0.2, 0), "a"), (("pair224", "pair", 0.1, 0), "b"),
                      (("cifar32", "uniform", 0.05, 1), "c"), (("cifar32", "uniform", 0.2, 1), "d"),
                      (("pair224", "uniform", 0.1, 2), "e")])
    assert list(rows.items()) == [(("pair224", "uniform", 0.1), ["e"]), (("pair224", "pair", 0.1), ["b"]),
                                  (("cifar32", "uniform", 0.05), ["c"]), (("cifar32", "uniform", 0.2), ["a", "d"])]

    # pooled over the cells' samples, not the mean of each cell's calibration
    pairs = [(np.full(10, 0.9), np.arange(10) < 9), (np.full(40, 0.9), np.arange(40) < 4)]
    got = qg.pooled(iter(pairs))
    assert got == calibration(np.r_[pairs[0][0], pairs[1][0]], np.r_[pairs[0][1], pairs[1][1]])
    assert got["error_rate"] == pytest.approx(13 / 50) and got["ece"] == pytest.approx(0.9 - 13 / 50)
    assert np.mean([calibration(*p)["ece"] for p in pairs]) == pytest.approx((0.0 + 0.8) / 2)
