"""Same answers: the closed-form influence path against pyDVL and against an earlier version.

For each scenario (the seed pair at 224 px; 5,000 CIFAR-10 training images
plus 1,000 held-out at 32 px), with 10% uniform flips (seed 0):

1. ``na.audit`` with the default settings (``method="auto"``); every signal's
   AUROC / AP against the flips, and the stage timings;
2. pyDVL's ``DirectInfluence`` (float64, exact Hessian) on the audit's own
   head and features: Pearson correlation of its average influence and
   self-influence with the audit's;
3. with ``--src DIR``, the same audit by another checkout's code (e.g. the
   commit before the fast path, ``git worktree add /tmp/before 1ea0339``), so
   the AP of every signal can be compared with what it was.

    python bench/agreement.py                                  # current code
    python bench/agreement.py --src /tmp/before/src --tag before --no-reference
    python bench/agreement.py --compare before                 # table: current vs before

JSON: ``bench/results/agreement.json`` (one entry per ``--tag``).
"""

import argparse
import json
import sys
import time

import numpy as np

# --src must win over _common's src/ on sys.path, so parse it first.
_pre = argparse.ArgumentParser(add_help=False)
_pre.add_argument("--src")
_known, _ = _pre.parse_known_args()
import _common  # noqa: E402, F401  (sets the environment before FiftyOne is imported)
if _known.src:
    sys.path.insert(0, _known.src)

from noise_audit.signals import SIGNALS as ALL_SIGNALS, suspicion  # noqa: E402

from _common import RESULTS, SEED_CLASSES, TINY, cifar_files, cifar_root, machine, require_data, table, write_json  # noqa: E402

SIGNALS = tuple(s.name for s in sorted(ALL_SIGNALS, key=lambda s: s.name != "corruption_score"))  # the score first


def build(scenario):
    import fiftyone as fo

    import noise_audit as na

    name = f"bench-agreement-{scenario}"
    if fo.dataset_exists(name):
        fo.load_dataset(name).delete()
    if scenario == "pair":
        ds = na.load_image_folder(TINY, name=name, classes=SEED_CLASSES)
        size = 224
    else:
        root = cifar_root()
        tp, tl, classes = cifar_files(root, "train", n=5000)
        vp, vl, _ = cifar_files(root, "test", n=1000)
        ds = fo.Dataset(name)
        ds.add_samples([fo.Sample(filepath=p, tags=[t], ground_truth=fo.Classification(label=classes[y]))
                        for ps, ls, t in ((tp, tl, "train"), (vp, vl, "val")) for p, y in zip(ps, ls)], progress=False)
        size = 32
    na.inject_label_noise(ds.match_tags("train"), fraction=0.1, seed=0)
    return ds, size


def pearson(a, b):
    return float(np.corrcoef(a, b)[0, 1])


def reference(ds, key):
    """pyDVL DirectInfluence on the audit's head and features: ``(average, self)`` influence in view order."""
    from noise_audit.core import explain
    from noise_audit.core import influence as infl
    from noise_audit.store.runs import load_audit

    config, results = load_audit(ds, key)
    bb, head = explain._audit_model(config, results)
    ids, y = list(results.ids), np.array(results.labels)
    te = np.array(results.is_test)
    x = explain._audit_features(ds, config, results, ids, bb)
    t = time.perf_counter()
    model = infl.fit_influence_model(head, x[~te], y[~te], config.regularization, "direct")
    avg = np.zeros(len(y))
    avg[~te] = infl.average_influence(model, head, x[te], y[te], x[~te], y[~te])
    avg[te] = infl.average_influence(model, head, x[~te], y[~te], x[te], y[te])
    selfi = infl.self_influence(model, x, y)
    return avg, selfi, time.perf_counter() - t


def run(scenario, with_reference):
    import noise_audit as na

    ds, size = build(scenario)
    try:
        t = time.perf_counter()
        r = na.audit(ds, "ground_truth_noisy", image_size=size, progress=False)
        wall = time.perf_counter() - t
        flipped = np.array(ds.values("label_flipped"), dtype=bool)
        metrics = {}
        for s in SIGNALS:
            v = np.asarray(r.signals[s], float)
            metrics[s] = na.detection_metrics(suspicion(s, v), flipped)
        out = {"n": len(flipped), "n_parameters": r.config["n_parameters"], "influence_method": r.config["influence_method"],
               "wall_s": wall, "timings": r.timings, "metrics": metrics,
               "signals": {s: np.asarray(r.signals[s], float).tolist() for s in ("average_influence", "self_influence", "label_quality")}}
        if with_reference:
            avg, selfi, secs = reference(ds, "noise_audit")
            out["pydvl_direct"] = {"seconds": secs,
                                   "pearson_average_influence": pearson(avg, r.signals["average_influence"]),
                                   "pearson_self_influence": pearson(selfi, r.signals["self_influence"]),
                                   "max_rel_diff_average_influence": float(np.abs(avg - r.signals["average_influence"]).max() / np.abs(avg).max())}
        return out
    finally:
        ds.delete()


def compare(tag):
    data = json.loads((RESULTS / "agreement.json").read_text())
    cur, old = data["current"], data[tag]
    rows = []
    for scenario in cur["scenarios"]:
        c, o = cur["scenarios"][scenario], old["scenarios"][scenario]
        for s in SIGNALS:
            if s in c["metrics"] and s in o["metrics"]:
                rows.append([scenario, s, f"{o['metrics'][s]['average_precision']:.4f}", f"{c['metrics'][s]['average_precision']:.4f}",
                             f"{c['metrics'][s]['average_precision'] - o['metrics'][s]['average_precision']:+.4f}"])
        for s in ("average_influence", "self_influence", "label_quality"):
            rows.append([scenario, f"Pearson {s}, {tag} vs current", "", f"{pearson(c['signals'][s], o['signals'][s]):.6f}", ""])
        if "pydvl_direct" in c:
            d = c["pydvl_direct"]
            rows.append([scenario, "Pearson average influence vs pyDVL Direct", "", f"{d['pearson_average_influence']:.8f}", ""])
            rows.append([scenario, "Pearson self-influence vs pyDVL Direct", "", f"{d['pearson_self_influence']:.6f}", ""])
    print(table(rows, ["scenario", "signal / check", tag, "current", "difference"]))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", help="another checkout's src/ to run instead of this one")
    p.add_argument("--tag", default="current")
    p.add_argument("--scenarios", nargs="+", default=["pair", "cifar5k"], choices=["pair", "cifar5k"])
    p.add_argument("--no-reference", action="store_true", help="skip pyDVL DirectInfluence")
    p.add_argument("--compare", metavar="TAG", help="print current vs TAG from the JSON and exit")
    args = p.parse_args()
    if args.compare:
        return compare(args.compare)
    require_data()
    import noise_audit

    path = RESULTS / "agreement.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    entry = {"command": " ".join(["python", "bench/agreement.py", *sys.argv[1:]]), "machine": machine(),
             "code": noise_audit.__file__, "scenarios": {}}
    for scenario in args.scenarios:
        print(f"{scenario}...", flush=True)
        entry["scenarios"][scenario] = run(scenario, not args.no_reference)
        data[args.tag] = entry
        write_json("agreement", data)


if __name__ == "__main__":
    main()
