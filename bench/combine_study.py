"""Offline study: truth-free combination and calibration of the corruption score (issues 9 and 11).

Reads the stored grid cells (.cache/grid), recomputes the current score (with the library's
noise_audit.core.scores, as first reported) and three declared candidates, and scores them with the
definitions of bench/quality_grid.py (all rows of a cell, held-out ones included; mean over seeds per
data x strategy x rate; best single = max over average_influence, self_influence, label_quality, loss,
loo_loss; ECE with 10 equal-width bins, pooled per data set). Writes bench/results/combine_study.json.

    OMP_NUM_THREADS=1 nice python bench/combine_study.py tuning     # ten64 seeds 0-1 only
    OMP_NUM_THREADS=1 nice python bench/combine_study.py reported   # everything else, run once

PRE-REGISTRATION (written after looking at the tuning cells only, before any reported cell was scored)
-------------------------------------------------------------------------------------------------------
Views, each high = suspicious and divided by its standard deviation over all rows (as today):
  harm  = -average_influence
  closs = -log softmax(clean_oos_logits / T1)[given], T1 = temperature of oos_logits on the given labels (as today)
  knn   = share of the 20 nearest neighbours (neighbours.npy) whose given label differs from the sample's.
Noise posterior q_i = P(given label wrong | x, given) = noise_posterior(y, p, N) with p = softmax(clean_oos_logits/T):
  (held-out T) T = temperature of clean_oos_logits fit on the held-out rows' given labels (trusted, as average
               influence already trusts them); N = Dawid-Skene EM (fit_noise_matrix, started at cleanlab's
               noise matrix from oos_logits) on the audited rows (~is_test) with p fixed.
  (count T)    T on [e^-4, e^2] such that the EM noise model's mean q over the audited rows equals cleanlab's
               confident-learning share num_label_issues/n_audited (no held-out labels used); N as above.
View weights ("expected AP"): e_v = softAP(z_v, q) - mean(q) over the audited rows, where softAP is the
  average precision with sample i counted as positive with probability q_i; e_v clipped at 0;
  w_v = e_v / sum(e). ranking = sum_v w_v z_v. score = calibrate(ranking, q) (isotonic, as today).

Candidates:
  A: views harm + closs, expected-AP weights, q from the held-out-T noise model (weights and calibration).
  B: as A but q from the count-T noise model (nothing uses held-out labels except average influence itself).
  C: as A plus the kNN view (three views, expected-AP weights).
What was chosen on the tuning cells (ten64 seeds 0-1, 32 cells): expected-AP weights over (i) one-factor
"triplet" weights r_a^2 = C_ab C_ac / C_bc (mean AP 0.762 vs current 0.796 on the first 21 cells: the
correlated errors of closs and knn starve harm) and (ii) weights proportional to the binormal d' from an
expected AUROC (mean AP 0.8097 / 0.8137 vs 0.8100 / 0.8140 for 2 / 3 views); z-scores kept (rank
averaging: same AP). No numeric hyperparameter was fit. On the tuning cells A and B miss the AP target in one
row (confusion 5%: 0.252 vs best single 0.262) and C in one (pair 30%: 0.953 vs 0.962; the kNN view is
blind to systematic flips); their tuning-cell table is in the JSON.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
from cleanlab.count import estimate_py_and_noise_matrices_from_probabilities
from scipy.optimize import minimize_scalar
from scipy.special import softmax
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_auc_score

import _common  # noqa: F401  (sets the environment before FiftyOne is imported)
from noise_audit.core import scores
from noise_audit.core.scores import (  # the library's pieces the candidates are built from
    _spread, calibrate, estimate_num_issues, fit_noise_matrix, given_label_loss, label_quality, loo_loss,
    noise_posterior, temperature)
from noise_audit.metrics import calibration

ROOT = Path(__file__).resolve().parents[1]
GRID = ROOT / ".cache" / "grid"
DATA = ("pair224", "ten64", "cifar32")
STRATEGIES = ("uniform", "pair", "confusion", "influential")
SINGLES = ("average_influence", "self_influence", "label_quality", "loss", "loo_loss")
HIGH = {"average_influence": -1, "self_influence": 1, "label_quality": -1, "loss": 1, "loo_loss": 1}


def current_score(labels, oos_logits, clean_oos_logits, average_influence):
    """The score as first reported: no held-out rows, so the noise model's temperature
    and matrix are fit together (``scores.corruption_score`` without ``is_test``)."""
    return scores.corruption_score(labels, oos_logits, clean_oos_logits, average_influence)


def ece(p, t):
    return calibration(p, t)["ece"]


def det(s, t):
    return float(average_precision_score(t, s)), float(roc_auc_score(t, s))


# ---------------------------------------------------------------- cells


def cell_files(which):
    out = []
    for data in DATA:
        for f in sorted((GRID / data).glob("*-*-*.npz")):
            strategy, rate, seed = f.stem.split("-")
            tuning = data == "ten64" and int(seed) in (0, 1)
            if (which == "tuning") == tuning or which == "all":
                out.append((data, strategy, float(rate), int(seed), f))
    return out


def load(f):
    c = dict(np.load(f))
    c["neighbours"] = np.load(f.parent / "neighbours.npy")
    return c


def singles(c):
    """The single signals as audit_signals computes them (recomputed, not read)."""
    y, is_test = c["y_noisy"], c["is_test"].astype(bool)
    probs = softmax(c["oos_logits"], axis=1)
    loo = np.where(~is_test, loo_loss(c["loss"], c["self_influence"], int((~is_test).sum())), c["loss"])
    return {"average_influence": c["average_influence"], "self_influence": c["self_influence"],
            "label_quality": label_quality(y, probs), "loss": c["loss"], "loo_loss": loo}


# ---------------------------------------------------------------- new pieces


def gauss_rank(v):
    """Rank-based normal scores (robust to the heavy tails of influence)."""
    from scipy.stats import norm
    r = rankdata(v) / (len(v) + 1.0)
    return norm.ppf(r)


def knn_disagreement(labels, neighbours):
    """Share of the 20 nearest neighbours (feature space) whose given label differs."""
    labels = np.asarray(labels)
    return (labels[neighbours] != labels[:, None]).mean(1)


def views(c):
    """Truth-free views, each high = suspicious."""
    y = c["y_noisy"]
    t = temperature(c["oos_logits"], y)
    return {"harm": -np.asarray(c["average_influence"], float),
            "closs": given_label_loss(np.asarray(c["clean_oos_logits"], float) / t, y),
            "knn": knn_disagreement(y, c["neighbours"])}


def triplet_strengths(u, rows=None):
    """Each view's correlation with a latent binary 'label wrong' under a one-factor
    model (views independent given the latent): r_a^2 = C_ab C_ac / C_bc."""
    names = list(u)
    z = np.stack([u[k] if rows is None else u[k][rows] for k in names])
    C = np.corrcoef(z)
    r = {}
    for i, a in enumerate(names):
        b, cc = [j for j in range(3) if j != i]
        val = C[i, b] * C[i, cc] / C[b, cc] if C[b, cc] > 1e-6 else 0.0
        r[a] = float(np.sqrt(np.clip(val, 0.0, 0.95 ** 2)))
    return r


def soft_ap(score, q):
    """Expected AP of ``score`` when sample i is wrong with probability q_i."""
    o = np.argsort(-score, kind="stable")
    qo = q[o]
    prec = np.cumsum(qo) / np.arange(1, len(qo) + 1)
    return float((qo * prec).sum() / max(qo.sum(), 1e-12))


def eap_weights(views_z, q, rows):
    """Each view's expected AP excess over chance against soft labels ``q`` (on ``rows``), normalised to sum 1."""
    base = q[rows].mean()
    ex = {k: max(soft_ap(z[rows], q[rows]) - base, 0.0) for k, z in views_z.items()}
    tot = sum(ex.values())
    return {k: (e / tot if tot > 0 else 1.0 / len(ex)) for k, e in ex.items()}


def noise_model_joint(labels, oos_logits, clean_oos_logits, is_test):
    """Current step 3: (T, N) fit jointly on all rows; returns the posterior of every row."""
    return scores.wrong_label_posterior(labels, oos_logits, clean_oos_logits)


def heldout_posterior(labels, oos_logits, clean_oos_logits, is_test, probs_of):
    """The noise-model posterior of the later rounds with the held-out rows' recalibration
    ``probs_of(logits, labels, held_out)`` (E, V, S): N by EM on the audited rows from cleanlab's estimate.
    Frozen here, not the library's current ``scores.wrong_label_posterior``, so that rerunning a round
    scores the candidates it declared. Fallbacks as the library's: fewer than ``MIN_HELD_OUT`` held-out
    rows, the joint fit; a class with fewer than ``MIN_HELD_OUT_PER_CLASS``, the held-out temperature
    (never on the grid: every class has 50 or more held-out rows)."""
    if is_test.sum() < scores.MIN_HELD_OUT or is_test.all():
        return scores.wrong_label_posterior(labels, oos_logits, clean_oos_logits)
    if np.bincount(labels[is_test], minlength=clean_oos_logits.shape[1]).min() < scores.MIN_HELD_OUT_PER_CLASS:
        probs_of = temperature_probs
    _, start, _, _ = estimate_py_and_noise_matrices_from_probabilities(labels, softmax(oos_logits, axis=1))
    probs = probs_of(clean_oos_logits, labels, is_test)
    noise = scores.fit_noise_matrix(labels[~is_test], probs[~is_test], start)
    return scores.noise_posterior(labels, probs, noise)


def temperature_probs(logits, labels, rows):
    return scores.calibrated_probs(logits, labels, rows)


def noise_model_heldout(labels, oos_logits, clean_oos_logits, is_test):
    """E, held-out temperature: T of the cleaner folds fit on the held-out rows' given labels (trusted, as
    average influence already trusts them), then N by EM on the audited rows with T fixed (adopted in
    round 2; replaced by round 4's S in the library)."""
    return heldout_posterior(labels, oos_logits, clean_oos_logits, is_test, temperature_probs)


def noise_model_count(labels, oos_logits, clean_oos_logits, is_test):
    """Count-anchored: the temperature on the (T, N) likelihood ridge whose noise model puts the share of wrong
    audited labels at cleanlab's confident-learning count (no held-out labels used)."""
    _, start, _, _ = estimate_py_and_noise_matrices_from_probabilities(labels, softmax(oos_logits, axis=1))
    tr = ~is_test
    rate = estimate_num_issues(labels[tr], softmax(oos_logits[tr], axis=1)) / tr.sum()
    state = {"noise": np.asarray(start, float)}

    def gap(log_t):
        probs = softmax(clean_oos_logits / np.exp(log_t), axis=1)
        state["noise"] = fit_noise_matrix(labels[tr], probs[tr], state["noise"], iterations=100, tol=1e-6)
        return (noise_posterior(labels[tr], probs[tr], state["noise"]).mean() - rate) ** 2

    log_t = minimize_scalar(gap, bounds=(-4.0, 2.0), method="bounded", options={"xatol": 1e-3}).x
    probs = softmax(clean_oos_logits / np.exp(log_t), axis=1)
    noise = fit_noise_matrix(labels[tr], probs[tr], state["noise"])
    return noise_posterior(labels, probs, noise)


def candidate(c, name):
    """(score, ranking, info) of a candidate on a cell's arrays (no truth used)."""
    y = np.asarray(c["y_noisy"])
    te = np.asarray(c["is_test"], bool)
    oos, clean = np.asarray(c["oos_logits"], float), np.asarray(c["clean_oos_logits"], float)
    if name == "current":
        s, r = current_score(y, oos, clean, c["average_influence"])
        return s, r, {}
    v = views(c)
    z = {k: x / _spread(x) for k, x in v.items()}
    model = {"A": noise_model_heldout, "B": noise_model_count, "C": noise_model_heldout}[name]
    q = model(y, oos, clean, te)
    use = ("harm", "closs") if name in ("A", "B") else ("harm", "closs", "knn")
    w = eap_weights({k: z[k] for k in use}, q, ~te)
    ranking = sum(w[k] * z[k] for k in use)
    return calibrate(ranking, q), ranking, {"weights": w, "mean_q": float(q.mean())}


# ---------------------------------------------------------------- evaluation (definitions of bench/quality_grid.py)
NAMES = ("current", "A", "B", "C")


def eval_cell(c):
    """Per cell: AP/AUROC of every single signal and candidate (all rows, held-out ones included, as
    quality_grid.py), plus each candidate's score array for pooled calibration."""
    t = np.asarray(c["flipped"], bool)
    out = {"ap": {}, "auroc": {}, "mean_score": {}, "ece": {}, "seconds": {}, "info": {}}
    for k, x in singles(c).items():
        out["ap"][k], out["auroc"][k] = det(HIGH[k] * np.asarray(x, float), t)
    knn = knn_disagreement(c["y_noisy"], c["neighbours"])  # the new single signal
    out["ap"]["knn_disagreement"], out["auroc"]["knn_disagreement"] = det(knn, t)
    scores = {}
    for n in NAMES:
        t0 = time.perf_counter()
        s, _, info = candidate(c, n)
        out["seconds"][n] = time.perf_counter() - t0
        out["ap"][n], out["auroc"][n] = det(s, t)
        out["mean_score"][n], out["ece"][n] = float(s.mean()), ece(s, t)
        out["info"][n] = info
        scores[n] = s
    out["error_rate"] = float(t.mean())
    return out, scores, t


def summarize(cells, pooled):
    singles_ = (*SINGLES, "knn_disagreement")
    groups = {}
    for key, m in cells.items():
        d, s, r, _ = key.split("/")
        groups.setdefault((d, s, float(r)), []).append(m)
    rows = []
    for (d, s, r), ms in sorted(groups.items(), key=lambda kv: (DATA.index(kv[0][0]), STRATEGIES.index(kv[0][1]),
                                                                kv[0][2])):
        ap = {k: float(np.mean([m["ap"][k] for m in ms])) for k in ms[0]["ap"]}
        au = {k: float(np.mean([m["auroc"][k] for m in ms])) for k in ms[0]["auroc"]}
        row = {"data": d, "strategy": s, "rate": r, "n_seeds": len(ms), "ap": ap, "auroc": au}
        for label, pool in (("old_singles", SINGLES), ("with_knn", singles_)):
            best_ap, best_au = max(pool, key=ap.get), max(pool, key=au.get)
            row[label] = {"best_ap": best_ap, "best_auroc": best_au,
                          "ap_ok": {n: ap[n] >= ap[best_ap] - 0.005 for n in NAMES},
                          "auroc_ok": {n: au[n] >= au[best_au] - 0.002 for n in NAMES}}
        rows.append(row)
    overall = {}
    for d in DATA:
        rs = [r for r in rows if r["data"] == d]
        if not rs:
            continue
        overall[d] = {n: {
            "mean_ap": float(np.mean([r["ap"][n] for r in rs])),
            "ap_ok": sum(r["old_singles"]["ap_ok"][n] for r in rs),
            "auroc_ok": sum(r["old_singles"]["auroc_ok"][n] for r in rs),
            "ap_ok_incl_knn": sum(r["with_knn"]["ap_ok"][n] for r in rs),
            "auroc_ok_incl_knn": sum(r["with_knn"]["auroc_ok"][n] for r in rs),
            "pooled_ece": ece(np.concatenate(pooled[d][n]), np.concatenate(pooled[d]["truth"])),
            "max_abs_mean_gap": max(abs(m["mean_score"][n] - m["error_rate"]) for k, m in cells.items()
                                    if k.startswith(d + "/")),
        } for n in NAMES}
        overall[d]["n_rows"] = len(rs)
        overall[d]["label_quality_mean_ap"] = float(np.mean([r["ap"]["label_quality"] for r in rs]))
    overall["all"] = {n: {"mean_ap": float(np.mean([r["ap"][n] for r in rows])),
                          "ap_ok": sum(r["old_singles"]["ap_ok"][n] for r in rows),
                          "auroc_ok": sum(r["old_singles"]["auroc_ok"][n] for r in rows)} for n in NAMES}
    overall["all"]["label_quality_mean_ap"] = float(np.mean([r["ap"]["label_quality"] for r in rows]))
    overall["all"]["n_rows"] = len(rows)
    return rows, overall


def run(which):
    cells, pooled = {}, {}
    for d, s, r, seed, f in cell_files(which):
        m, scores, t = eval_cell(load(f))
        cells[f"{d}/{s}/{r}/{seed}"] = m
        p = pooled.setdefault(d, {n: [] for n in (*NAMES, "truth")})
        for n in NAMES:
            p[n].append(scores[n])
        p["truth"].append(t)
        print(f"{d} {s} {r} {seed}: " + " ".join(f"{n} {m['ap'][n]:.3f}" for n in NAMES), flush=True)
    rows, overall = summarize(cells, pooled)
    return {"cells": cells, "rows": rows, "overall": overall}


def print_overall(o):
    for d, v in o.items():
        if d == "all":
            print(f"ALL rows {v['n_rows']}: label_quality mean AP {v['label_quality_mean_ap']:.4f}; " +
                  "; ".join(f"{n}: AP {v[n]['mean_ap']:.4f} ap_ok {v[n]['ap_ok']} auroc_ok {v[n]['auroc_ok']}"
                            for n in NAMES))
            continue
        print(f"{d} ({v['n_rows']} rows, label_quality mean AP {v['label_quality_mean_ap']:.4f})")
        for n in NAMES:
            x = v[n]
            print(f"  {n:8s} AP {x['mean_ap']:.4f} ap_ok {x['ap_ok']}/{v['n_rows']} (incl knn {x['ap_ok_incl_knn']}) "
                  f"auroc_ok {x['auroc_ok']} (incl knn {x['auroc_ok_incl_knn']}) ECE {x['pooled_ece']:.4f} "
                  f"max|mean-rate| {x['max_abs_mean_gap']:.4f}")


def timing(n=6000, k=10, seed=0):
    """Seconds of each candidate on a synthetic 6,000 x 10 cell."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 3 * np.eye(k)[y]
    c = {"y_noisy": y, "is_test": np.arange(n) >= 5000, "oos_logits": logits,
         "clean_oos_logits": logits + rng.normal(scale=0.3, size=(n, k)), "average_influence": rng.normal(size=n),
         "neighbours": rng.integers(0, n, (n, 20))}
    out = {}
    for name in NAMES:
        t0 = time.perf_counter()
        for _ in range(3):
            candidate(c, name)
        out[name] = (time.perf_counter() - t0) / 3
    return out


def study_main(doc, names, candidate_fn, result_name):
    """The command line of a later round (calibration_study.py and the rest): this module's
    grid loop with the round's candidates, printed and kept under its result name."""
    global NAMES, candidate
    p = argparse.ArgumentParser()
    p.add_argument("which", choices=("tuning", "reported"))
    args = p.parse_args()
    NAMES, candidate = names, candidate_fn
    res = run(args.which)
    print_overall(res["overall"])
    path = ROOT / "bench" / "results" / f"{result_name}.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    old[args.which] = res
    old["declared"] = doc
    path.write_text(json.dumps(old, indent=1, default=float))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("which", choices=("tuning", "reported"))
    args = p.parse_args()
    res = run(args.which)
    print_overall(res["overall"])
    path = ROOT / "bench" / "results" / "combine_study.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    old[args.which] = res
    if args.which == "reported":
        old["timing_6000x10_s"] = timing()
        print("timing", old["timing_6000x10_s"])
    old["declared"] = __doc__
    path.write_text(json.dumps(old, indent=1, default=float))


if __name__ == "__main__":
    main()
