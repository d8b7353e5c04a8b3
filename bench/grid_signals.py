"""Per-cell signals of the pre-registered quality grid, stored for analysis.

For every data set x strategy x rate x seed of the grid (docs/benchmarks.md,
"Quality grid"), this runs the audit's computation on cached features
without a database, with the library's own stages (``pipeline.linear_signals``,
the scores and the flips of ``na.inject_label_noise``), and stores every
per-sample array an audit has, plus the truth, in
``.cache/grid/<data>/<strategy>-<rate>-<seed>.npz``. ``bench/quality_grid.py``
then scores and tabulates them; storing the arrays lets the score be studied
on the tuning cells without recomputing the heads.

    python bench/grid_signals.py --data ten64 --seeds 0 1            # the tuning cells
    python bench/grid_signals.py                                      # everything

The same grid with bfloat16 features (``--precision bf16``, into
``.cache/grid-bf16``), for ``bench/precision_study.py`` to compare cell by cell
with the fp32 grid. ``--flips-from`` takes the flips from another grid's clean
audit (the ``confusion`` and ``influential`` strategies pick them from it), so
both grids audit the very same noisy labels and differ only in the features::

    python bench/grid_signals.py --precision bf16 --data pair224 ten64 --flips-from /work/main/.cache/grid
"""

import argparse
import time
from pathlib import Path

import numpy as np
from scipy.special import softmax

from _common import ROOT, SEED_CLASSES, cifar_root, split_files, tiny_classes, tiny_files

STRATEGIES = ("uniform", "pair", "confusion", "influential")
RATES = (0.05, 0.1, 0.2, 0.3)
SEEDS = (0, 1, 2, 3, 4)
DATA = ("pair224", "ten64", "cifar32")
OUT = ROOT / ".cache" / "grid"


def load(data, precision="fp32"):
    """``(raw features, clean labels, is_test, classes)`` of a grid data set."""
    from noise_audit.core import features as feats

    if data == "pair224":
        classes, size = list(SEED_CLASSES), 224
        paths, y, test = tiny_files(classes)
    elif data == "ten64":
        classes, size = tiny_classes("ten"), 64
        paths, y, test = tiny_files(classes)
    else:  # 5,000 CIFAR-10 training images and 1,000 held-out test images
        root = cifar_root()
        p_tr, y_tr, classes = split_files(root, "train", 5000, seed=0)
        p_te, y_te, _ = split_files(root, "test", 1000, seed=0)
        paths, y = np.concatenate([p_tr, p_te]), np.concatenate([y_tr, y_te])
        test = np.r_[np.zeros(len(p_tr), bool), np.ones(len(p_te), bool)]
        size = 32
    bb = feats.get_backbone("efficientnet_lite0", image_size=size, precision=precision)
    raw, _ = feats.extract_features(list(paths), bb, progress=False)
    return raw, y, test, classes


def run_cell(raw, y, is_test, n_classes, seed, folds=5, flipped=None):
    """Every per-sample array of an audit of labels ``y``: the library's stages
    (``pipeline.linear_signals``, ``scores.audit_signals``) on in-memory features."""
    from noise_audit.core import features as feats, pipeline, scores
    from noise_audit.core.auditing import DEFAULT_L2, _Clock
    from noise_audit.core.blocks import Blocks

    mean, std = feats.standardization(raw, rows=~is_test)
    x = np.subtract(raw, mean, dtype=np.float64) / std
    blocks = Blocks.from_arrays({"x": x, "y": y, "train": ~is_test, "fold": pipeline.fold_ids(y, folds, seed)})
    clock = _Clock(None)
    s = pipeline.linear_signals(blocks, x.shape[1], n_classes, DEFAULT_L2, folds, clock)
    signals, num_issues, suspect = scores.audit_signals(y, is_test, s.oos_logits, s.clean_oos_logits,
                                                        s.average_influence, s.self_influence, s.loss)
    cells = dict(l2=s.l2, oos_logits=s.oos_logits, clean_oos_logits=s.clean_oos_logits, test_pred=s.test_pred,
                 num_issues=num_issues, suspect=suspect, seconds=sum(clock.timings.values()), **signals)
    if flipped is not None:  # what cleaning buys: remove as many as there are suspects, three ways
        from noise_audit.core.cleaning import random_removal, refit_accuracy

        top = suspect & ~is_test
        removals = {"suspects": top, "random": random_removal(~is_test, int(top.sum()), seed),
                    "flipped": flipped}
        acc = refit_accuracy(blocks, x.shape[1], n_classes, s.l2, removals, init=s.head)
        acc["none"] = float((s.test_pred == y[is_test]).mean())
        cells.update({f"accuracy_{k}": v for k, v in acc.items()})
    return cells


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", choices=DATA, default=list(DATA))
    p.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    p.add_argument("--rates", nargs="+", type=float, default=list(RATES))
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--redo", action="store_true", help="recompute cells already stored")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="the backbone's precision")
    p.add_argument("--out", type=Path, default=None, help="default .cache/grid, or .cache/grid-bf16 for bf16")
    p.add_argument("--flips-from", type=Path, default=None,
                   help="a grid whose clean audits pick the flips (default: this grid's own)")
    args = p.parse_args()
    from noise_audit.core.flips import choose_flips

    root = args.out or (OUT if args.precision == "fp32" else OUT.with_name(f"grid-{args.precision}"))
    for data in args.data:
        t = time.perf_counter()
        raw, y, is_test, classes = load(data, args.precision)
        out = root / data
        out.mkdir(parents=True, exist_ok=True)
        clean_file = out / "clean.npz"
        if args.redo or not clean_file.is_file():
            np.savez(clean_file, y=y, is_test=is_test, **run_cell(raw, y, is_test, len(classes), 0))
        clean = np.load(args.flips_from / data / "clean.npz" if args.flips_from else clean_file)
        if not np.array_equal(clean["y"], y):
            raise SystemExit(f"{data}: the clean labels of --flips-from differ from this data set's")
        print(f"[{data}] {len(y)} samples, {len(classes)} classes, features + clean audit "
              f"{time.perf_counter() - t:.1f} s", flush=True)
        train = np.flatnonzero(~is_test)
        for strategy in args.strategies:
            for rate in args.rates:
                for seed in args.seeds:
                    f = out / f"{strategy}-{rate}-{seed}.npz"
                    if f.is_file() and not args.redo:
                        continue
                    t = time.perf_counter()
                    idx, new = choose_flips(y[train], len(classes), rate, strategy, seed,
                                            influence=clean["average_influence"][train],
                                            reference_probs=softmax(clean["oos_logits"][train], axis=1))
                    y_noisy = y.copy()
                    y_noisy[train[idx]] = new
                    flipped = y_noisy != y
                    cell = run_cell(raw, y_noisy, is_test, len(classes), seed, flipped=flipped)
                    np.savez(f, y=y, y_noisy=y_noisy, flipped=flipped, is_test=is_test, **cell)
                    print(f"[{data}] {strategy} {rate:.0%} seed {seed}: {flipped.sum()} flips, "
                          f"{time.perf_counter() - t:.1f} s", flush=True)


if __name__ == "__main__":
    main()
