"""The pre-registered quality grid: the corruption score against every single signal.

Reads the cells that ``bench/grid_signals.py`` stored (every per-sample
array of an audit, computed by the library's stages on cached features) and
writes ``bench/results/quality_grid.json``, a printed table and the
reliability diagrams ``docs/images/reliability_<data>.png``.

Pre-registered (docs/benchmarks.md, "Quality grid"): strategies uniform,
pair, confusion, influential x rates 5, 10, 20, 30% x data (the seed pair at
224 px, ten Tiny ImageNet classes at 64 px, 5,000 CIFAR-10 training images at
32 px with 1,000 held-out test images) x seeds 0-4. Every weight and choice
was tuned on the **tuning cells** only (ten64, seeds 0-1); everything else is
**reported**.

Targets, on the reported cells (mean over seeds of each data x strategy x rate):
the score's AP >= best single signal's AP - 0.005 and AUROC >= best - 0.002;
its mean AP >= cleanlab label quality's mean AP + 0.03; expected calibration
error <= 0.05 (10 bins) and |mean score - error rate| <= 0.03 per data set.

The studies in ``bench/studies/`` read the grid through this module: ``stored_cells`` (the cells),
``by_row`` (their data x strategy x rate rows) and ``pooled`` (calibration pooled over cells).

    python bench/quality_grid.py
"""

import time

import numpy as np

from _common import ROOT, machine, table, write_json

GRID = ROOT / ".cache" / "grid"
DATA = ("pair224", "ten64", "cifar32")
STRATEGIES = ("uniform", "pair", "confusion", "influential")
TUNING = {"data": "ten64", "seeds": (0, 1)}
SINGLES = ("average_influence", "self_influence", "label_quality", "loss", "loo_loss")
HIGH = {"corruption_score": 1, "average_influence": -1, "self_influence": 1, "label_quality": -1, "loss": 1,
        "loo_loss": 1}


def is_tuning(data, seed):
    return data == TUNING["data"] and seed in TUNING["seeds"]


def cell_metrics(c):
    """Metrics of one stored cell (all samples, held-out ones included: never flipped)."""
    from noise_audit.metrics import calibration, detection_metrics, flag_metrics

    t = c["flipped"].astype(bool)
    out = {"n": int(len(t)), "n_flipped": int(t.sum()), "num_issues": int(c["num_issues"])}
    out["detection"] = {s: detection_metrics(HIGH[s] * c[s], t) for s in ("corruption_score", *SINGLES)}
    cal = calibration(c["corruption_score"], t)
    out["calibration"] = cal
    out["flags"] = {"suspect": flag_metrics(c["suspect"], t), "count": flag_metrics(c["cleanlab_count"], t),
                    "threshold": flag_metrics(c["corruption_score"] >= 0.5, t)}
    out["cleaning"] = {k[len("accuracy_"):]: float(c[k]) for k in c["files"] if k.startswith("accuracy_")}
    out["seconds"] = float(c["seconds"])
    return out


def rescore(stored):
    """The stored arrays, with the signals recomputed by this checkout's ``scores``
    (so a stored cell always shows the current method; the heads are not refit)."""
    from scipy.special import softmax

    from noise_audit.core import scores

    c = dict(stored)
    signals, c["num_issues"], c["suspect"] = scores.audit_signals(
        c["y_noisy"], c["is_test"], c["oos_logits"], c["clean_oos_logits"], c["average_influence"],
        c["self_influence"], c["loss"])
    c.update(signals)
    probs = softmax(np.asarray(c["oos_logits"], float), axis=1)  # cleanlab's count, for comparison
    c["cleanlab_count"] = scores.flag_top(c["corruption_score"], scores.estimate_num_issues(c["y_noisy"], probs))
    c["files"] = list(c)
    return c


def stored_cells(part=None):
    """``(data, strategy, rate, seed, path)`` of every cell stored in :data:`GRID`, in the grid's order
    (``rate`` as the file name spells it); ``part="tuning"`` or ``"reported"`` keeps those only."""
    for data in DATA:
        for f in sorted((GRID / data).glob("*-*-*.npz")):
            strategy, rate, seed = f.stem.split("-")
            if part is None or is_tuning(data, int(seed)) == (part == "tuning"):
                yield data, strategy, rate, int(seed), f


def load_cells():
    cells = {}
    for data, strategy, rate, seed, f in stored_cells():
        c = rescore(np.load(f))
        m = cell_metrics(c)
        m.update(data=data, strategy=strategy, rate=float(rate), seed=seed, tuning=is_tuning(data, seed))
        m["_arrays"] = (c["corruption_score"], c["flipped"].astype(bool))
        cells[f"{data}/{strategy}/{rate}/{seed}"] = m
    return cells


def by_row(keyed):
    """``{(data, strategy, rate): [value, ...]}`` from ``(key, value)`` pairs whose key starts with data,
    strategy and rate: the grid's rows, in its order (data and strategy as in :data:`DATA` and
    :data:`STRATEGIES`, then rate); each row keeps its values' order."""
    rows = {}
    for key, value in keyed:
        rows.setdefault(tuple(key[:3]), []).append(value)
    return dict(sorted(rows.items(), key=lambda kv: (DATA.index(kv[0][0]), STRATEGIES.index(kv[0][1]), kv[0][2])))


def pooled(pairs):
    """``noise_audit.metrics.calibration`` of many cells' ``(score, flipped)`` arrays, pooled."""
    from noise_audit.metrics import calibration

    pairs = list(pairs)
    return calibration(np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs]))


def summarize(cells, tuning=False):
    """Per data x strategy x rate, mean over the reported seeds (or the tuning
    cells, with ``tuning``); targets checked."""
    rows = []
    chosen = (((c["data"], c["strategy"], c["rate"]), c) for c in cells.values() if c["tuning"] == tuning)
    for (data, strategy, rate), members in by_row(chosen).items():
        mean = lambda f: float(np.mean([f(m) for m in members]))  # noqa: E731
        ap = {s: mean(lambda m: m["detection"][s]["average_precision"]) for s in ("corruption_score", *SINGLES)}
        auroc = {s: mean(lambda m: m["detection"][s]["auroc"]) for s in ("corruption_score", *SINGLES)}
        best_ap = max(SINGLES, key=ap.get)
        best_auroc = max(SINGLES, key=auroc.get)
        rows.append({
            "data": data, "strategy": strategy, "rate": rate, "seeds": sorted(m["seed"] for m in members),
            "ap": ap, "auroc": auroc, "best_single_ap": best_ap, "best_single_auroc": best_auroc,
            "ap_ok": ap["corruption_score"] >= ap[best_ap] - 0.005,
            "auroc_ok": auroc["corruption_score"] >= auroc[best_auroc] - 0.002,
            "ece": mean(lambda m: m["calibration"]["ece"]),
            "mean_score": mean(lambda m: m["calibration"]["mean_score"]),
            "error_rate": mean(lambda m: m["calibration"]["error_rate"]),
            "f1_suspect": mean(lambda m: m["flags"]["suspect"]["f1"]),
            "f1_count": mean(lambda m: m["flags"]["count"]["f1"]),
            "f1_threshold": mean(lambda m: m["flags"]["threshold"]["f1"]),
            "cleaning": {k: mean(lambda m: m["cleaning"][k]) for k in members[0]["cleaning"]},
        })
    return rows


def pooled_calibration(cells):
    """Per data set, over all its reported cells: ECE and the reliability diagram's points."""
    out = {}
    for data in DATA:
        arrays = [c["_arrays"] for c in cells.values() if c["data"] == data and not c["tuning"]]
        if not arrays:
            continue
        out[data] = pooled(arrays)
        out[data]["max_abs_mean_gap"] = max(abs(c["calibration"]["mean_score"] - c["calibration"]["error_rate"])
                                            for c in cells.values() if c["data"] == data and not c["tuning"])
    return out


def reliability_figures(pooled):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for data, cal in pooled.items():
        fig, ax = plt.subplots(figsize=(3.6, 3.4), dpi=110)
        pts = [(b["mean_score"], b["share_flipped"], b["n"]) for b in cal["bins"] if b["n"]]
        ax.plot([0, 1], [0, 1], color="#999", lw=1, ls="--")
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=[10 + 40 * np.log10(p[2]) for p in pts])
        ax.plot([p[0] for p in pts], [p[1] for p in pts])
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="corruption score (bin mean)", ylabel="share flipped",
               title=f"{data}: ECE {cal['ece']:.3f}")
        fig.tight_layout()
        path = ROOT / "docs" / "images" / f"reliability_{data}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(str(path.relative_to(ROOT)))
    return paths


def markdown(rows, overall, pooled):
    """The tables of docs/benchmarks.md, printed for pasting."""
    print("\n| data | strategy | rate | seeds | score AP | best single (AP) | cleanlab AP | avg infl AP | score AUROC | "
          "best AUROC | ECE | mean score / rate | F1 suspect / count / >=0.5 | accuracy: none / suspects / random / flipped |")
    print("|" + " --- |" * 14)
    for r in rows:
        cl = r["cleaning"]
        print(f"| {r['data']} | {r['strategy']} | {r['rate']:.0%} | {len(r['seeds'])} | "
              f"{'**' if r['ap_ok'] else ''}{r['ap']['corruption_score']:.4f}{'**' if r['ap_ok'] else ' (miss)'} | "
              f"{r['best_single_ap']} ({r['ap'][r['best_single_ap']]:.4f}) | {r['ap']['label_quality']:.4f} | "
              f"{r['ap']['average_influence']:.4f} | {r['auroc']['corruption_score']:.4f} | "
              f"{r['auroc'][r['best_single_auroc']]:.4f} | {r['ece']:.3f} | {r['mean_score']:.3f} / {r['error_rate']:.3f} | "
              f"{r['f1_suspect']:.3f} / {r['f1_count']:.3f} / {r['f1_threshold']:.3f} | {cl.get('none', float('nan')):.3f} / "
              f"{cl.get('suspects', float('nan')):.3f} / {cl.get('random', float('nan')):.3f} / "
              f"{cl.get('flipped', float('nan')):.3f} |")
    for data, cal in pooled.items():
        print(f"\n{data}: pooled ECE {cal['ece']:.4f}; pooled mean score {cal['mean_score']:.4f} vs error rate "
              f"{cal['error_rate']:.4f}; worst cell |mean score - error rate| {cal['max_abs_mean_gap']:.4f}")


def main():
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tuning", action="store_true", help="tabulate the tuning cells (nothing is written)")
    args = p.parse_args()
    t0 = time.perf_counter()
    cells = load_cells()
    rows = summarize(cells, args.tuning)
    if args.tuning:
        pooled = {}
    else:
        pooled = pooled_calibration(cells)
        figures = reliability_figures(pooled)
    headers = ["data", "strategy", "rate", "score AP", "best single", "its AP", "cleanlab AP", "ok", "score AUROC",
               "ok", "ECE", "mean/rate"]
    print(table([[r["data"], r["strategy"], f"{r['rate']:.0%}", f"{r['ap']['corruption_score']:.4f}",
                  r["best_single_ap"], f"{r['ap'][r['best_single_ap']]:.4f}", f"{r['ap']['label_quality']:.4f}",
                  "yes" if r["ap_ok"] else "NO", f"{r['auroc']['corruption_score']:.4f}",
                  "yes" if r["auroc_ok"] else "NO", f"{r['ece']:.3f}",
                  f"{r['mean_score']:.3f}/{r['error_rate']:.3f}"] for r in rows], headers))
    overall = {}
    if rows:
        overall = {
            "cells": len(rows), "ap_ok": sum(r["ap_ok"] for r in rows), "auroc_ok": sum(r["auroc_ok"] for r in rows),
            "mean_ap_score": float(np.mean([r["ap"]["corruption_score"] for r in rows])),
            "mean_ap_label_quality": float(np.mean([r["ap"]["label_quality"] for r in rows])),
            "mean_ap_average_influence": float(np.mean([r["ap"]["average_influence"] for r in rows])),
            "mean_f1_suspect": float(np.mean([r["f1_suspect"] for r in rows])),
            "mean_f1_count": float(np.mean([r["f1_count"] for r in rows])),
            "mean_f1_threshold": float(np.mean([r["f1_threshold"] for r in rows])),
            "cleaning": {k: float(np.mean([r["cleaning"][k] for r in rows])) for k in rows[0]["cleaning"]},
        }
        overall["ap_gain_over_cleanlab"] = overall["mean_ap_score"] - overall["mean_ap_label_quality"]
        print(f"\nreported cells: {overall['cells']}; AP target met in {overall['ap_ok']}, AUROC in "
              f"{overall['auroc_ok']}; mean AP score {overall['mean_ap_score']:.4f} vs cleanlab "
              f"{overall['mean_ap_label_quality']:.4f} (+{overall['ap_gain_over_cleanlab']:.4f}), "
              f"average influence {overall['mean_ap_average_influence']:.4f}")
        print(f"suspect flag F1: the flag (expected number) {overall['mean_f1_suspect']:.4f}, "
              f"cleanlab's count {overall['mean_f1_count']:.4f}, score >= 0.5 "
              f"{overall['mean_f1_threshold']:.4f}")
        print("held-out accuracy after removal: " + ", ".join(f"{k} {v:.4f}" for k, v in overall["cleaning"].items()))
    for data, cal in pooled.items():
        print(f"{data}: pooled ECE {cal['ece']:.4f}, pooled mean score {cal['mean_score']:.4f} vs error rate "
              f"{cal['error_rate']:.4f}, worst |mean score - error rate| over cells {cal['max_abs_mean_gap']:.4f}")
    if args.tuning:
        return
    markdown(rows, overall, pooled)
    for c in cells.values():
        c.pop("_arrays")
    write_json("quality_grid", {
        "description": __doc__.split("\n\n")[0], "pre_registration": __doc__.split("\n\n")[2],
        "tuning_cells": TUNING, "machine": machine(), "overall": overall, "summary": rows,
        "calibration": pooled, "figures": figures, "cells": cells,
        "wall_s": round(time.perf_counter() - t0, 1),
    })


if __name__ == "__main__":
    main()
