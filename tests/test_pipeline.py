"""The two ways through the head and influence stages give the same signals.

:func:`noise_audit.core.pipeline.linear_signals` (closed forms on row blocks, in
this process or on Dask workers) against
:func:`noise_audit.core.pipeline.reference_signals` (arrays, torch autograd, pyDVL's
exact ``DirectInfluence``), on scikit-learn's digits (real 8x8 scans), float64.
"""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from noise_audit.core import pipeline
from noise_audit.core.blocks import Blocks

L2, FOLDS = 0.3, 4
NAMES = ("average_influence", "self_influence", "loss", "oos_logits")


class _NoClock:
    def start(self, stage):
        pass

    def stop(self):
        pass


@pytest.fixture(scope="module")
def digits():
    d = load_digits(n_class=4)
    x = (d.data - d.data.mean(0)) / (d.data.std(0) + 1e-6)
    y = d.target.copy()
    y[::17] = (y[::17] + 1) % 4  # some flips
    is_test = np.zeros(len(y), dtype=bool)
    is_test[::5] = True
    return x, y, is_test, pipeline.fold_ids(y, FOLDS, 0)


def blocks_of(x, y, is_test, folds_of, rows=64, client=None):
    return Blocks.from_arrays({"x": x, "y": y, "train": ~is_test, "fold": folds_of}, rows=rows, client=client)


def rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


@pytest.fixture(scope="module")
def reference(digits):
    x, y, is_test, folds_of = digits
    return pipeline.reference_signals(x, y, is_test, folds_of, 4, L2, FOLDS, 0, "direct", _NoClock())


def test_linear_path_on_blocks_equals_the_pydvl_reference(digits, reference):
    x, y, is_test, folds_of = digits
    # small blocks: many partial sums, rows split across blocks, some blocks without held-out rows
    fast = pipeline.linear_signals(blocks_of(x, y, is_test, folds_of, rows=50), x.shape[1], 4, L2, FOLDS, _NoClock())
    assert fast.influence_method == "linear" and reference.influence_method == "direct"
    # Each side stops L-BFGS at a gradient norm near 1e-7, so each head is within
    # |g| / l2 ~ 3e-7 of the minimum: logits of the fold heads agree to ~1e-6
    # relative, and the one head's influence quantities tighter than that.
    tolerance = {"oos_logits": 1e-5}
    for name in NAMES:
        assert rel(getattr(fast, name), getattr(reference, name)) < tolerance.get(name, 1e-6), name
    np.testing.assert_array_equal(fast.test_pred, reference.test_pred)
    assert fast.history["grad_norm"] < 1e-6


def test_block_size_does_not_change_the_answer(digits):
    x, y, is_test, folds_of = digits
    one = pipeline.linear_signals(blocks_of(x, y, is_test, folds_of, rows=10_000), x.shape[1], 4, L2, FOLDS, _NoClock())
    many = pipeline.linear_signals(blocks_of(x, y, is_test, folds_of, rows=37), x.shape[1], 4, L2, FOLDS, _NoClock())
    for name in NAMES:
        assert rel(getattr(many, name), getattr(one, name)) < 1e-8, name


def test_regularization_auto_picks_the_same_l2(digits):
    x, y, is_test, folds_of = digits
    ref = pipeline.reference_signals(x, y, is_test, folds_of, 4, "auto", FOLDS, 0, "direct", _NoClock())
    fast = pipeline.linear_signals(blocks_of(x, y, is_test, folds_of), x.shape[1], 4, "auto", FOLDS, _NoClock())
    assert fast.l2 == ref.l2
    assert set(fast.l2_scores) == set(ref.l2_scores)
    for l2 in ref.l2_scores:
        assert fast.l2_scores[l2] == pytest.approx(ref.l2_scores[l2], rel=1e-6)


def test_dask_workers_give_the_local_answer(digits):
    from dask.distributed import Client, LocalCluster

    x, y, is_test, folds_of = digits
    local = pipeline.linear_signals(blocks_of(x, y, is_test, folds_of, rows=100), x.shape[1], 4, L2, FOLDS, _NoClock())
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        blocks = blocks_of(x, y, is_test, folds_of, rows=100, client=client)
        assert len({w for ws in client.who_has(blocks.parts).values() for w in ws}) == 2  # spread over both workers
        remote = pipeline.linear_signals(blocks, x.shape[1], 4, L2, FOLDS, _NoClock())
    for name in NAMES:
        assert rel(getattr(remote, name), getattr(local, name)) < 1e-6, name
