"""Re-audit after a review: how long the loop's last step takes, against the first audit.

For each data set, in one process, side by side:

1. **cold**: ``na.audit`` of the noisy labels (10% uniform flips of the
   training images, seed 0) with an empty feature cache (a fresh temporary
   folder): every image is decoded and run through the backbone;
2. a review by an oracle: every flagged suspect is decided, ``relabel`` to
   its true class where it was flipped, ``keep`` where it was not
   (``na.review``), then ``na.apply_review`` into a new field;
3. **warm**: ``na.reaudit`` of that field (the first audit's settings and
   held-out set, features read from the cache, the head started from the
   first audit's: ``warm_start``), twice;
4. **cached, cold head**: the same re-audit without the warm start (features
   from the cache, the head from zero), twice, alternating with 3.

Goal (issue 24): a warm re-audit takes at most 10% of the cold audit.
Reported: wall seconds of each (and per stage), the ratios to cold, the
estimated number of wrong labels before and after (with the true number of
flips left), and the review's own seconds.

Data: the seed scenario (dining_table vs gondola from Tiny ImageNet, 1,100
images at 224 px, held-out = val/) and CIFAR-10 (50,000 training images +
10,000 test images held out, EfficientNet-Lite0 at the native 32 px).

    python bench/reaudit.py                  # both
    python bench/reaudit.py --data seed
    python bench/reaudit.py --data cifar
"""

import argparse
import json
import shutil
import tempfile
import time
from collections import defaultdict

import numpy as np

from _common import RESULTS, SEED_CLASSES, TINY, split_files, cifar_root, machine, require_data, table, write_json

SETTINGS = {"seed": {"image_size": 224}, "cifar": {"image_size": 32, "batch_size": 256}}


def seed_dataset(name):
    import noise_audit as na

    return na.load_image_folder(TINY, name=name, classes=SEED_CLASSES, overwrite=True)


def cifar_dataset(name):
    import fiftyone as fo

    root = cifar_root()
    samples = []
    for split, tag in (("train", "train"), ("test", "val")):
        paths, labels, classes = split_files(root, split)
        samples += [fo.Sample(filepath=p, tags=[tag], ground_truth=fo.Classification(label=classes[y]))
                    for p, y in zip(paths, labels)]
    ds = fo.Dataset(name, overwrite=True)
    ds.add_samples(samples, progress=False)
    return ds


def oracle_review(ds, key):
    """Decides every flagged suspect from the truth; returns (seconds, decisions by kind)."""
    import noise_audit as na

    ids, flagged, flipped, truth = ds.values(["id", f"{key}_suspect", "label_flipped", "ground_truth.label"])
    groups = defaultdict(list)
    for i, s, f, t in zip(ids, flagged, flipped, truth):
        if s:
            groups[("relabel", t) if f else ("keep", None)].append(i)
    t0 = time.perf_counter()
    for (decision, label), group in groups.items():
        na.review(ds, key, group, decision, label=label, reviewer="oracle")
    counts = defaultdict(int)
    for (decision, _), group in groups.items():
        counts[decision] += len(group)
    return time.perf_counter() - t0, dict(counts)


def flips_left(ds, field):
    truth, labels = ds.values(["ground_truth.label", f"{field}.label"])
    return int(sum(a != b for a, b in zip(truth, labels)))


def run(data):
    import noise_audit as na

    name = f"bench-reaudit-{data}"
    ds = seed_dataset(name) if data == "seed" else cifar_dataset(name)
    na.inject_label_noise(ds.match_tags("train"), fraction=0.1, seed=0)
    cache = tempfile.mkdtemp(prefix="noise-audit-reaudit-cache-")
    try:
        settings = dict(SETTINGS[data], cache_dir=cache, progress=True)
        t = time.perf_counter()
        first = na.audit(ds, "ground_truth_noisy", key="first", **settings)
        cold = time.perf_counter() - t
        review_s, decided = oracle_review(ds, "first")
        t = time.perf_counter()
        applied = na.apply_review(ds, "first", out_field="reviewed")
        apply_s = time.perf_counter() - t
        runs = {"warm": [], "cached_cold_head": []}
        last = {}
        for _ in range(2):
            for kind, warm in (("warm", "first"), ("cached_cold_head", None)):
                t = time.perf_counter()
                r = na.reaudit(ds, "first", "reviewed", new_key=kind, overwrite=True, warm_start=warm, progress=False)
                runs[kind].append({"wall_s": time.perf_counter() - t, "stages_s": r.timings,
                                   "features_computed": int(r.features_computed)})
                last[kind] = r
        estimates = na.review_estimates(ds, "first")
        out = {
            "data": data, "n_samples": len(first.ids), "n_held_out": int(first.is_test.sum()),
            "image_size": SETTINGS[data]["image_size"], "flipped": int(sum(ds.values("label_flipped"))),
            "cold": {"wall_s": cold, "stages_s": first.timings, "features_computed": int(first.features_computed)},
            "review": {"decisions": decided, "seconds": review_s, "apply_seconds": apply_s, "applied": applied},
            "reaudits": runs,
            "best_s": {k: min(x["wall_s"] for x in v) for k, v in runs.items()},
            "estimated_errors": {"first": int(first.num_label_issues),
                                 "after_review_expected_left": estimates["review"]["errors_left"]["expected"],
                                 "reaudit": int(last["warm"].num_label_issues)},
            "true_flips_left": {"first": flips_left(ds, "ground_truth_noisy"), "reviewed": flips_left(ds, "reviewed")},
            "same_scores_warm_vs_cold_head": float(np.max(np.abs(last["warm"].corruption_score
                                                                 - last["cached_cold_head"].corruption_score))),
        }
        out["ratio_to_cold"] = {k: v / cold for k, v in out["best_s"].items()}
        return out
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        ds.delete()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=["seed", "cifar", "both"], default="both")
    args = p.parse_args()
    require_data()
    previous = RESULTS / "reaudit.json"  # one data set at a time keeps the other's results
    results = json.loads(previous.read_text()) if previous.exists() and args.data != "both" else {"runs": {}}
    results.update(machine=machine())
    results.setdefault("commands", {})[args.data] = f"python bench/reaudit.py --data {args.data}"
    for data in (["seed", "cifar"] if args.data == "both" else [args.data]):
        results["runs"][data] = run(data)
        write_json("reaudit", results)  # after each data set: a long run keeps what it has
    rows = []
    for data, r in results["runs"].items():
        rows.append([data, r["n_samples"], f"{r['cold']['wall_s']:.1f}", f"{r['best_s']['warm']:.1f}",
                     f"{r['ratio_to_cold']['warm']:.1%}", f"{r['best_s']['cached_cold_head']:.1f}",
                     f"{r['ratio_to_cold']['cached_cold_head']:.1%}",
                     f"{r['estimated_errors']['first']} -> {r['estimated_errors']['reaudit']}",
                     f"{r['true_flips_left']['first']} -> {r['true_flips_left']['reviewed']}"])
    print(table(rows, ["data", "samples", "cold s", "warm s", "warm/cold", "cached s", "cached/cold",
                       "est. errors", "true flips"]))
    write_json("reaudit", results)


if __name__ == "__main__":
    main()
