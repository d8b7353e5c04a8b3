"""Average influence: one solve on the mean test gradient vs the seed's full matrix.

Same model, same run: the seed scenario's head (dining_table vs gondola, 10%
uniform flips, seed 0, default backbone and regularisation). The seed notebook
computes pyDVL ``CgInfluence.influences`` for every test x train pair and then
takes the mean over test samples; noise-audit solves once for the mean test
gradient. Reported: wall time of each, their ratio, and the Pearson correlation
of the resulting average influences.

    python bench/influence_speed.py [--repeats 3]
"""

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from pydvl.influence.torch import CgInfluence

from _common import SEED_CLASSES, TINY, machine, require_data, table, write_json


def timed(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="best of N for each timing")
    args = p.parse_args()
    require_data()
    import noise_audit as na
    from noise_audit.core import features, head as heads, influence as infl
    from noise_audit.core.auditing import DEFAULT_L2
    from noise_audit.core.data import read_labels

    ds = na.load_image_folder(TINY, name="bench-influence-speed", overwrite=True, classes=SEED_CLASSES)
    na.inject_label_noise(ds.match_tags("train"), fraction=0.1, seed=0)
    data = read_labels(ds, "ground_truth_noisy")
    raw, _ = features.extract_features(data.filepaths, features.get_backbone(), progress=True)
    te = np.array(["val" in t for t in data.tags])
    mean, std = raw[~te].mean(0), raw[~te].std(0) + 1e-6
    x = (raw - mean) / std
    xtr, ytr, xte, yte = x[~te], data.labels[~te], x[te], data.labels[te]
    head, _ = heads.fit_head(xtr, ytr, 2, DEFAULT_L2)
    l2 = DEFAULT_L2

    def seed_way():
        # The notebook: CG influence of every train sample on every test sample, then the mean.
        model = CgInfluence(head, F.cross_entropy, regularization=l2, rtol=1e-8, atol=1e-10, maxiter=1000,
                            warn_on_max_iteration=False).fit(infl._loader(xtr, ytr))
        m = model.influences(heads.as_tensor(xte), torch.as_tensor(yte), heads.as_tensor(xtr), torch.as_tensor(ytr))
        return m.mean(0).detach().numpy()

    def one_solve(method):
        def run():
            model = infl.fit_influence_model(head, xtr, ytr, l2, method)
            return infl.average_influence(model, head, xte, yte, xtr, ytr)
        return run

    t_seed, ref = timed(seed_way, args.repeats)
    rows, results = [], {"seed_way_cg_full_matrix": {"seconds": t_seed}}
    rows.append(["pyDVL CG, full test x train matrix, mean (seed)", f"{t_seed:.3f}", "1.0", "1.000000"])
    for method in ("cg", "direct", "ekfac"):
        t, avg = timed(one_solve(method), args.repeats)
        r = float(np.corrcoef(avg, ref)[0, 1])
        results[f"one_solve_{method}"] = {"seconds": t, "speedup_vs_seed": t_seed / t, "pearson_vs_seed": r,
                                          "max_abs_diff": float(np.abs(avg - ref).max())}
        rows.append([f"one solve on mean test gradient, {method}", f"{t:.3f}", f"{t_seed / t:.1f}", f"{r:.6f}"])
    print(f"\n{len(ytr)} train x {len(yte)} test samples, {infl.n_parameters(head)} head parameters, l2={l2}\n")
    print(table(rows, ["average influence by", "seconds (best of %d)" % args.repeats, "speed-up", "Pearson vs seed"]))
    ds.delete()
    write_json("influence_speed", {"n_train": int(len(ytr)), "n_test": int(len(yte)),
                                   "n_parameters": infl.n_parameters(head), "l2": l2, "repeats": args.repeats,
                                   "machine": machine(), "results": results})


if __name__ == "__main__":
    main()
