"""Benchmark row of issue 26: finding flipped box classes in mosaics of real photographs.

Mosaics of Tiny ImageNet's 64 px photographs (``bench/make_mosaics.py``: 2x2 to
3x3 tiles on grey, every tile a box with its class; ten classes, train + val,
5,500 boxes by default) get 10% of their box classes flipped (``uniform``, then
``pair``) with ``na.inject_label_noise``; ``na.audit`` audits the noisy field
box by box. Compared on the same boxes, by average precision against the
flips: the corruption score, each single signal, and cleanlab's
``find_label_issues`` on the same crops' features (out-of-fold probabilities
of a logistic regression, issues ranked by self-confidence; the boxes it does
not flag ranked after, by the same quality).

``python bench/objects.py [--per-class N] [--backbone efficientnet_lite0] [--image-size 64]``
prints the table and writes ``bench/results/objects.json``.
"""

from __future__ import annotations

import argparse
import time

import _common as C  # noqa: I001  (sets the environment before FiftyOne)
import numpy as np


def _cleanlab_scores(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int) -> np.ndarray:
    """cleanlab's ranking of the boxes (higher = more suspicious), from out-of-fold probabilities."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.preprocessing import StandardScaler

    probs = np.zeros((len(y), int(y.max()) + 1))
    for train, held in StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(x, y, groups):
        scaler = StandardScaler().fit(x[train])
        clf = LogisticRegression(max_iter=2000).fit(scaler.transform(x[train]), y[train])
        probs[held] = clf.predict_proba(scaler.transform(x[held]))
    issues = find_label_issues(y, probs, return_indices_ranked_by="self_confidence")
    quality = get_label_quality_scores(y, probs, method="self_confidence")
    score = -quality  # boxes not flagged: after every flagged one, by quality
    score[issues] += 10.0
    return score


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-class", type=int, default=None, help="tiles per class and split (default all)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default=None)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    C.require_data()
    import fiftyone as fo

    import noise_audit as na
    from make_mosaics import build_mosaics, load_mosaics, tiles_of, write_labels
    from noise_audit.core import objects
    from noise_audit.core.auditing import build_backbone
    from noise_audit.core.head import resolve_device
    from noise_audit.metrics import detection_metrics

    out_dir = C.DATA / f"mosaics-{a.per_class or 'all'}-{a.seed}"
    if not (out_dir / "labels.json").is_file():
        records = []
        for split in ("train", "val"):
            records += build_mosaics(tiles_of(C.TINY, split, None, a.per_class), out_dir, split, a.seed)
        write_labels(records, out_dir)
    name = f"na-bench-objects-{a.per_class or 'all'}"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = load_mosaics(out_dir, name)
    n_boxes = sum(len(v) for v in ds.values("ground_truth.detections"))
    rows, payload = [], {"machine": C.machine(), "n_images": len(ds), "n_boxes": n_boxes, "settings": vars(a),
                         "strategies": {}}
    device = resolve_device("auto")
    bb = build_backbone(a.backbone, a.weights, None, a.image_size, a.seed, False, "fp32", device)[0]
    bb.to(device)
    t = time.perf_counter()  # the crops' features once, as an attribute every noisy copy carries
    ds.compute_patch_embeddings(objects.patch_embedder(bb, device), "ground_truth", embeddings_field="emb",
                                progress=False)
    payload["features_s"] = round(time.perf_counter() - t, 2)
    for strategy in ("uniform", "pair"):
        na.inject_label_noise(ds, "ground_truth", fraction=a.fraction, seed=a.seed, strategy=strategy,
                              noisy_field=f"gt_{strategy}")
    kw = dict(backbone=a.backbone, weights=a.weights, image_size=a.image_size, progress=False, seed=a.seed)
    t = time.perf_counter()
    na.audit(ds, "gt_uniform", key="objs_cold", **kw)  # features from FiftyOne's crops
    payload["cold_audit_s"] = round(time.perf_counter() - t, 2)
    for strategy in ("uniform", "pair"):
        noisy = f"gt_{strategy}"
        t = time.perf_counter()
        r = na.audit(ds, noisy, key=f"objs_{strategy}", embeddings_field="emb", progress=False, seed=a.seed)
        warm = time.perf_counter() - t
        flag_by_id = dict(zip([i for s in ds.values(f"{noisy}.detections.id") for i in s],
                              [f for s in ds.values(f"{noisy}.detections.label_flipped") for f in s]))
        flipped = np.array([flag_by_id[i] for i in r.ids], dtype=bool)
        res = {"n_flipped": int(flipped.sum()), "warm_audit_s": round(warm, 2), "timings": r.timings, "signals": {}}
        for sname, values in r.suspicion().items():
            res["signals"][sname] = detection_metrics(values, flipped)
        x = objects.attribute_vectors(ds, noisy, objects.read_objects(ds, noisy, warn=False), "emb")
        rows_obj = objects.read_objects(ds, noisy, warn=False)
        pos = {i: k for k, i in enumerate(rows_obj.ids)}
        x = x[[pos[i] for i in r.ids]]
        cl = _cleanlab_scores(x, np.asarray(r.labels), np.asarray(r.sample_ids), a.seed)
        res["signals"]["cleanlab_find_label_issues"] = detection_metrics(cl, flipped)
        payload["strategies"][strategy] = res
        for sname, m in res["signals"].items():
            rows.append([strategy, sname] + [f"{m[k]:.3f}" for k in C.METRICS])
    print(f"{n_boxes} boxes in {len(ds)} mosaics; {a.fraction:.0%} of the box classes flipped")
    print(C.table(rows, ["noise", "signal", *C.METRIC_NAMES]))
    print(f"crop features {payload['features_s']} s; cold audit (crops + backbone) {payload['cold_audit_s']} s; "
          + "; ".join(f"warm audit {s} {res['warm_audit_s']} s" for s, res in payload["strategies"].items()))
    print(C.write_json("objects", payload))
    ds.delete()


if __name__ == "__main__":
    main()
