"""Speed: the influence step against the seed's way, every estimator, the audit stages, growth with n, cold features.

Parts (all by default, in one run):

- ``influence``: on one model (the seed pair's head, dining_table vs gondola,
  10% uniform flips with seed 0, default backbone and l2), the seed
  notebook's way of getting average influence (pyDVL ``CgInfluence`` on the
  full test x train matrix, then the mean over test samples) against one
  solve on the mean test gradient with every pyDVL estimator (direct, cg,
  lissa, arnoldi, ekfac, nystroem): wall time, speed-up, Pearson correlation
  with the seed's average influences and with the direct (exact) solution,
  and the same for self-influence.
- ``stages``: one ``na.audit`` of the seed pair with features cached (time of
  every stage), plus the backbone's throughput on uncached images.
- ``scaling``: CIFAR-10 (``../shared/data/cifar10-jpeg.tar.gz``, unpacked once
  into ``.data/cifar10``), ``na.audit`` of n = 1k, 5k, 20k, 50k training
  images plus the 10,000 held-out test images, each in a fresh process: time
  of every stage, peak resident memory, and the growth exponent b of
  ``time ~ n^b`` (least squares on log-log). Features are EfficientNet-Lite0
  at the images' native 32 px, computed once beforehand (their throughput is
  reported separately), so the audits read them from the cache: 224 px for
  60,000 images would take hours on a CPU (see ``bench/gpu.py``).
  Points past 50k (100k, 200k) replicate the training images: replica r of
  an image is a hard link under ``.data/cifar10-replicas/r/`` (a new path,
  so its features are computed and cached like any image's); the labels are
  the originals'. Duplicates make nothing easier to compute: the arithmetic
  per sample is the same.
  Up to 50k, the same process also times what a user would do instead on
  the same cached features: scikit-learn ``LogisticRegression`` +
  ``cross_val_predict`` (5 folds) + ``cleanlab.filter.find_label_issues``.

- ``cold``, ``decode``, ``cold_audit`` (not in the default run: they take
  long): feature extraction with nothing cached against the forward-pass
  floor, today's path beside it; decoding against the forward pass; a cold
  audit of 10,500 CIFAR-10 images at 224 px (see ``bench/feature_speed.py``).

    python bench/speed.py                          # influence, stages, scaling
    python bench/speed.py --parts influence stages
    python bench/speed.py --parts scaling --sizes 1000 5000 20000 50000
    python bench/speed.py --parts cold decode cold_audit --merge
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from _common import (RESULTS, ROOT, SEED_CLASSES, TINY, cifar_root, machine, require_data, split_files, table,
                     tiny_files, write_json)

ESTIMATORS = ("linear", "direct", "cg", "lissa", "arnoldi", "ekfac", "nystroem")
SIZES = (1000, 5000, 20000, 50000, 100000, 200000)
CIFAR_DATASET = "bench-speed-cifar10"
CIFAR_TRAIN = 50000
CIFAR_TEST = 10000
BASELINE_MAX_N = 50000
CIFAR_SIZE = 32


def rss_mb():
    """This process's peak resident memory so far (MB).

    From ``/proc/self/status`` (VmHWM): ``getrusage``'s ``ru_maxrss`` is
    inherited through fork and exec on Linux, so a child started by a large
    parent would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(fn, repeats=1):
    """``(best wall seconds of repeats, last result)``."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def pearson(a, b):
    return float(np.corrcoef(np.asarray(a, float), np.asarray(b, float))[0, 1])


def seed_pair_model(seed=0, rate=0.1):
    """The seed pair's standardised features, noisy labels and trained head (as the audit builds them)."""
    from noise_audit.core import features, head as heads
    from noise_audit.core.auditing import DEFAULT_L2
    from noise_audit.noise import choose_flips

    paths, labels, is_test = tiny_files(SEED_CLASSES)
    tr = np.flatnonzero(~is_test)
    idx, new = choose_flips(labels[tr], len(SEED_CLASSES), rate, "uniform", seed)
    labels[tr[idx]] = new
    raw, _ = features.extract_features(list(paths), features.get_backbone(), progress=True)
    mean, std = raw[~is_test].mean(0), raw[~is_test].std(0) + 1e-6
    x = ((raw - mean) / std).astype(np.float64)
    xtr, ytr, xte, yte = x[~is_test], labels[~is_test], x[is_test], labels[is_test]
    head, _ = heads.fit_head(xtr, ytr, len(SEED_CLASSES), DEFAULT_L2, seed=seed)
    return head, DEFAULT_L2, xtr, ytr, xte, yte


def part_influence(repeats, seed_repeats, estimators):
    import torch
    import torch.nn.functional as F
    from pydvl.influence.torch import CgInfluence

    from noise_audit.core import head as heads, influence as infl

    head, l2, xtr, ytr, xte, yte = seed_pair_model()

    def seed_way():
        # The notebook: CG influence of every train sample on every test sample, then the mean.
        model = CgInfluence(head, F.cross_entropy, regularization=l2, rtol=1e-8, atol=1e-10, maxiter=1000,
                            warn_on_max_iteration=False).fit(infl._loader(xtr, ytr))
        m = model.influences(heads.as_tensor(xte), torch.as_tensor(yte), heads.as_tensor(xtr), torch.as_tensor(ytr))
        return m.mean(0).detach().numpy()

    print("seed's way (full test x train matrix)...", flush=True)
    t_seed, ref = timed(seed_way, seed_repeats)
    out = {"n_train": int(len(ytr)), "n_test": int(len(yte)), "n_parameters": infl.n_parameters(head), "l2": l2,
           "repeats": repeats, "seed_way_repeats": seed_repeats,
           "seed_way": {"what": "pyDVL CgInfluence.influences on the full test x train matrix, then mean over test",
                        "seconds": t_seed}, "estimators": {}}
    results = {}
    for method in estimators:
        print(f"{method}...", flush=True)

        def fit():
            return infl.fit_influence_model(head, xtr, ytr, l2, method)

        t_fit, model = timed(fit, repeats)
        t_avg, avg = timed(lambda: infl.average_influence(model, head, xte, yte, xtr, ytr), repeats)
        t_self, selfi = timed(lambda: infl.self_influence(model, xtr, ytr))  # once: slow for cg and lissa
        results[method] = {"fit_s": t_fit, "average_influence_s": t_avg, "self_influence_s": t_self,
                           "avg": avg, "self": selfi}
    direct = results.get("direct")
    for method, r in results.items():
        t_one = r["fit_s"] + r["average_influence_s"]
        out["estimators"][method] = {
            "fit_s": r["fit_s"], "average_influence_s": r["average_influence_s"], "self_influence_s": r["self_influence_s"],
            "one_solve_s": t_one, "speedup_vs_seed": t_seed / t_one,
            "pearson_avg_vs_seed": pearson(r["avg"], ref),
            "max_abs_diff_avg_vs_seed": float(np.abs(r["avg"] - ref).max()),
            "pearson_avg_vs_direct": pearson(r["avg"], direct["avg"]) if direct else None,
            "pearson_self_vs_direct": pearson(r["self"], direct["self"]) if direct else None,
        }
    rows = [["seed: CG, full test x train matrix, mean", f"{t_seed:.2f}", "1.0", "1.000000", "", "", ""]]
    for method, e in out["estimators"].items():
        rows.append([f"one solve on mean test gradient, {method}", f"{e['one_solve_s']:.3f}",
                     f"{e['speedup_vs_seed']:.1f}", f"{e['pearson_avg_vs_seed']:.6f}",
                     f"{e['pearson_avg_vs_direct']:.6f}" if direct else "", f"{e['self_influence_s']:.2f}",
                     f"{e['pearson_self_vs_direct']:.6f}" if direct else ""])
    print(f"\n{len(ytr)} train x {len(yte)} test, {out['n_parameters']} head parameters, l2={l2}\n")
    print(table(rows, ["average influence by", "s (fit + solve)", "speed-up", "Pearson vs seed", "Pearson vs direct",
                       "self-infl s", "self Pearson vs direct"]))
    return out


def part_stages(repeats):
    import noise_audit as na
    from noise_audit.core import features

    ds = na.load_image_folder(TINY, name="bench-speed-stages", overwrite=True, classes=SEED_CLASSES)
    n = len(ds)
    try:
        na.inject_label_noise(ds.match_tags("train"), fraction=0.1, seed=0)
        na.audit(ds, "ground_truth_noisy", key="warmup", progress=False)  # fills the feature cache if cold
        runs = []
        for i in range(repeats):
            r = na.audit(ds, "ground_truth_noisy", key="speed", overwrite=True, progress=False)
            runs.append(r.timings)
        best = {k: min(t[k] for t in runs) for k in runs[0]}
        paths = ds.values("filepath")[:128]
        bb = features.get_backbone()
        t, _ = timed(lambda: features.extract_features(paths, bb, cache_dir=False, progress=False))
        ips = len(paths) / t
    finally:
        ds.delete()
    rows = [[k, f"{v:.3f}"] for k, v in best.items()]
    rows.append(["(features, uncached: EfficientNet-Lite0 224 px)", f"{n / ips:.1f} (extrapolated from {ips:.1f} img/s)"])
    print(f"\nseed-pair audit, features cached, best of {repeats}:\n")
    print(table(rows, ["stage", "seconds"]))
    return {"n_samples": n, "repeats": repeats, "stages_s": best, "all_runs": runs,
            "uncached_features": {"images": len(paths), "seconds": t, "images_per_s": ips,
                                  "extrapolated_all_s": n / ips, "note": "extrapolated from 128 images"}}


def replicas(paths, r):
    """Hard links of ``paths`` under ``.data/cifar10-replicas/<r>/`` (made once)."""
    from _common import DATA

    out = []
    for p in paths:
        q = DATA / "cifar10-replicas" / str(r) / os.path.relpath(p, cifar_root())
        if not q.exists():
            q.parent.mkdir(parents=True, exist_ok=True)
            os.link(p, q)
        out.append(str(q))
    return out


def cifar_dataset(root, n_max=CIFAR_TRAIN):
    """A FiftyOne dataset of CIFAR-10 train images (random ``rank``; replicas past 50k) + the 10k test images."""
    import fiftyone as fo

    n_replicas = -(-n_max // CIFAR_TRAIN)
    if fo.dataset_exists(CIFAR_DATASET):
        ds = fo.load_dataset(CIFAR_DATASET)
        if len(ds) == CIFAR_TRAIN * n_replicas + CIFAR_TEST:
            return ds
        ds.delete()
    tp, tl, classes = split_files(root, "train")
    vp, vl, _ = split_files(root, "test", n=CIFAR_TEST)
    rank = np.random.default_rng(0).permutation(len(tp))
    samples = []
    for r in range(n_replicas):
        paths = tp if r == 0 else replicas(tp, r)
        samples += [fo.Sample(filepath=p, tags=["train"], rank=int(k) + r * CIFAR_TRAIN,
                              ground_truth=fo.Classification(label=classes[y])) for p, y, k in zip(paths, tl, rank)]
    samples += [fo.Sample(filepath=p, tags=["test"], rank=-1, ground_truth=fo.Classification(label=classes[y]))
                for p, y in zip(vp, vl)]
    ds = fo.Dataset(CIFAR_DATASET, persistent=True)
    ds.add_samples(samples, progress=False)
    return ds


def sklearn_baseline(view, image_size):
    """What a user would do instead, on the audit's cached features: seconds and issues found."""
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    from noise_audit.core import features
    from noise_audit.core.data import read_labels

    data = read_labels(view, "ground_truth")
    raw, _ = features.extract_features(data.filepaths, features.get_backbone(image_size=image_size), progress=False)
    is_test = np.array(["test" in t for t in data.tags])
    mean, std = features.standardization(raw[~is_test])
    x = (raw - mean) / std
    t = time.perf_counter()
    # scikit-learn's defaults, as cleanlab's own examples use them (lbfgs stops at
    # its 100 iterations here, with a ConvergenceWarning: what a user gets)
    probs = cross_val_predict(LogisticRegression(), x, data.labels, cv=5, method="predict_proba")
    issues = find_label_issues(data.labels, probs)
    return {"what": "LogisticRegression() + cross_val_predict(cv=5, predict_proba) + "
                    "cleanlab.filter.find_label_issues, on the audit's standardised features",
            "seconds": time.perf_counter() - t, "num_label_issues": int(issues.sum())}


def scaling_child(n, out_path):
    """One audit of n CIFAR training images in this (fresh) process."""
    import fiftyone as fo
    from fiftyone import ViewField as F

    import noise_audit as na

    ds = fo.load_dataset(CIFAR_DATASET)
    view = ds.match((F("rank") < n) | F("tags").contains("test"))
    base = rss_mb()
    t = time.perf_counter()
    r = na.audit(view, "ground_truth", test="test", key="scale", image_size=CIFAR_SIZE, overwrite=True, progress=False)
    wall = time.perf_counter() - t
    peak = rss_mb()
    na.delete_audit(ds, "scale")
    feature_mb = len(view) * 1280 * 4 / 2**20  # the float32 feature array of the view
    baseline = sklearn_baseline(view, CIFAR_SIZE) if n <= BASELINE_MAX_N else None
    json.dump({"n_train": int(r.config["n_train"]), "n_test": int(r.config["n_test"]), "timings": r.timings,
               "wall_s": wall, "rss_before_mb": base, "rss_peak_mb": peak, "load_avg_1m_after": os.getloadavg()[0],
               "feature_array_mb": feature_mb, "num_label_issues": r.num_label_issues, "baseline": baseline,
               "torch_threads": __import__("torch").get_num_threads(),
               "influence_method": r.config["influence_method"], "n_parameters": r.config["n_parameters"]},
              open(out_path, "w"))


def growth_exponent(ns, values):
    ns, values = np.asarray(ns, float), np.asarray(values, float)
    ok = values > 0
    if ok.sum() < 2:
        return None
    return float(np.polyfit(np.log(ns[ok]), np.log(values[ok]), 1)[0])


def part_scaling(sizes, on_point=None):
    from noise_audit.core import features

    root = cifar_root()
    tp, _, _ = split_files(root, "train")
    vp, _, _ = split_files(root, "test", n=CIFAR_TEST)
    bb = features.get_backbone(image_size=CIFAR_SIZE)
    paths = list(tp) + list(vp)
    for r in range(1, -(-max(sizes) // CIFAR_TRAIN)):
        paths += replicas(tp, r)
    t = time.perf_counter()
    _, computed = features.extract_features(paths, bb, batch_size=256, progress=True)
    t_feat = time.perf_counter() - t
    feat_info = {"images": len(paths), "computed": int(computed), "seconds": t_feat, "image_size": CIFAR_SIZE,
                 "note": "all computed now" if computed == len(paths) else "some or all read from the cache"}
    print(f"CIFAR-10 features at {CIFAR_SIZE} px: {computed} computed of {len(paths)} in {t_feat:.1f} s", flush=True)
    t = time.perf_counter()
    cifar_dataset(root, max(sizes))
    t_ds = time.perf_counter() - t
    points = []
    for n in sizes:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            tmp = f.name
        cmd = [sys.executable, os.path.abspath(__file__), "--child-n", str(n), "--child-out", tmp]
        print(f"audit of n={n} in a fresh process...", flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
        points.append(json.load(open(tmp)))
        os.unlink(tmp)
        p = points[-1]
        print(f"  n={n}: {p['timings']}, peak RSS {p['rss_peak_mb']:.0f} MB", flush=True)
        if on_point:  # keep what was measured if a later (larger) n is interrupted
            on_point(scaling_summary(sizes, feat_info, t_ds, points))
    result = scaling_summary(sizes, feat_info, t_ds, points)
    exps, stages = result["growth_exponents"], list(points[0]["timings"])
    def baseline_cells(p):
        b = p.get("baseline")
        if not b:
            return ["", ""]
        return [f"{b['seconds']:.1f}", f"{b['seconds'] / p['wall_s']:.1f}"]

    rows = [[str(p["n_train"])] + [f"{p['timings'][k]:.2f}" for k in stages]
            + [f"{p['wall_s']:.1f}", f"{p['rss_peak_mb']:.0f}", f"{p['rss_peak_mb'] - p['rss_before_mb']:.0f}",
               f"{p.get('feature_array_mb', 0):.0f}"] + baseline_cells(p) for p in points]
    rows.append(["exponent b"] + [f"{exps[k]:.2f}" if exps[k] is not None else "" for k in stages]
                + ["", "", f"{exps['peak_rss_above_start']:.2f}" if exps["peak_rss_above_start"] else "", "", "", ""])
    print(f"\nCIFAR-10 audits (+{CIFAR_TEST} test images), EfficientNet-Lite0 features at {CIFAR_SIZE} px from the cache\n")
    print(table(rows, ["n train", *stages, "audit wall s", "peak RSS MB", "RSS growth MB", "features MB",
                       "sklearn+cleanlab s", "ratio (sklearn / audit)"]))
    return result


def scaling_summary(sizes, feat_info, t_ds, points):
    """The scaling part's JSON: every point so far and the growth exponents."""
    stages = [k for k in points[0]["timings"]]
    ns = [p["n_train"] for p in points]
    exps = {k: growth_exponent(ns, [p["timings"][k] for p in points]) for k in stages}
    exps["peak_rss_above_start"] = growth_exponent(ns, [p["rss_peak_mb"] - p["rss_before_mb"] for p in points])
    exps["wall_s"] = growth_exponent(ns, [p["wall_s"] for p in points])
    mid = [p for p in points if 5000 <= p["n_train"] <= 50000]
    exps["wall_s_5k_to_50k"] = growth_exponent([p["n_train"] for p in mid], [p["wall_s"] for p in mid])
    return {"sizes": list(sizes), "n_test": CIFAR_TEST, "image_size": CIFAR_SIZE, "features": feat_info,
            "dataset_import_s": t_ds, "points": points, "growth_exponents": exps}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", choices=("influence", "stages", "scaling", "cold", "decode", "cold_audit"),
                   default=["influence", "stages", "scaling"])
    p.add_argument("--cold-images", type=int, default=256, help="cold: CIFAR-10 images per throughput run")
    p.add_argument("--cold-rounds", type=int, default=2, help="cold, decode: interleaved rounds (best kept)")
    p.add_argument("--decode-images", type=int, default=128, help="decode: images per source size")
    p.add_argument("--decode-workers", type=int, nargs="*", default=[1, 2, 3],
                   help="decode: worker counts to time cold extraction with (none: decoding costs only)")
    p.add_argument("--audit-precisions", nargs="+", default=["fp32", "bf16"], choices=("legacy", "fp32", "bf16"),
                   help="cold_audit: the paths to time (legacy: today's NCHW fp32 PIL path)")
    p.add_argument("--repeats", type=int, default=3, help="best of N for the fast timings")
    p.add_argument("--seed-repeats", type=int, default=1, help="best of N for the seed's full-matrix way")
    p.add_argument("--estimators", nargs="+", choices=ESTIMATORS, default=list(ESTIMATORS))
    p.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    p.add_argument("--merge", action="store_true", help="keep parts of bench/results/speed.json not rerun")
    p.add_argument("--child-n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    import fiftyone  # noqa: F401  (after _common set the database; before pyDVL's dask)

    if args.child_n:
        return scaling_child(args.child_n, args.child_out)
    require_data()
    path = RESULTS / "speed.json"
    out = json.loads(path.read_text()) if args.merge and path.is_file() else {}
    out.setdefault("commands", []).append(" ".join(["python", "bench/speed.py", *sys.argv[1:]]))
    out["machine"] = machine()
    # Written after every part, so an interrupted run keeps what it measured.
    if "influence" in args.parts:
        out["influence"] = part_influence(args.repeats, args.seed_repeats, args.estimators)
        write_json("speed", out)
    if "stages" in args.parts:
        out["stages"] = part_stages(args.repeats)
        write_json("speed", out)
    if "scaling" in args.parts:
        def save_point(scaling):
            out["scaling"] = scaling
            write_json("speed", out)

        out["scaling"] = part_scaling(args.sizes, on_point=save_point)
        write_json("speed", out)
    import feature_speed

    for part, run in (("cold", lambda: feature_speed.part_cold(args.cold_images, args.cold_rounds)),
                      ("decode", lambda: feature_speed.part_decode(args.decode_images, args.cold_rounds,
                                                                 args.decode_workers)),
                      ("cold_audit", lambda: feature_speed.part_cold_audit(args.audit_precisions))):
        if part in args.parts:
            out[part] = run()
            write_json("speed", out)


if __name__ == "__main__":
    main()
