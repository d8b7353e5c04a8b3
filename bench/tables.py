"""The Markdown tables of docs/benchmarks.md, regenerated from bench/results/*.json.

    python bench/tables.py                       # every table, to stdout
    python bench/tables.py --only grid           # quality grids only

Nothing is measured here: every number is read from the JSON that
``bench/quality.py`` and ``bench/speed.py`` wrote, so the doc can be checked
against the results at any time. The best value of each row is in bold (ties
included).
"""

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

# Columns of the average-precision table, strongest baselines first.
SIGNALS = (
    ("corruption_score", "corruption score"),
    ("label_quality", "cleanlab label quality"),
    ("mistakenness_oos", "Brain, out-of-sample"),
    ("loss", "in-sample loss"),
    ("mistakenness_in_sample", "Brain, in-sample"),
    ("loo_loss", "influence LOO loss"),
    ("self_influence", "self-influence"),
    ("average_influence", "average influence"),
)
ORDER = {"uniform": 0, "pair": 1, "influential": 2}


def load(name):
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def row(cells):
    return "| " + " | ".join(str(c) for c in cells) + " |"


def header(names):
    return [row(names), row(["---"] * len(names))]


def bold_best(values, fmt):
    """Formats values, bolding the maximum (after rounding, so ties all get it)."""
    shown = [fmt(v) for v in values]
    rounded = [float(fmt(v).split(" ")[0]) if v is not None else None for v in values]
    best = max(r for r in rounded if r is not None)
    return [f"**{s}**" if r == best else s for s, r in zip(shown, rounded)]


def grid_entries(results, scenario, image_size):
    entries = [e for e in results["summary"]["grid"]
               if e["scenario"] == scenario and e["image_size"] == image_size]
    return sorted(entries, key=lambda e: (ORDER[e["strategy"]], e["rate"]))


def seeds_of(entries):
    seeds = sorted({s for e in entries for s in e["seeds"]})
    return f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else ", ".join(map(str, seeds))


def ap_table(entries):
    """Average precision, mean ± std over seeds, every signal."""
    lines = header(["strategy", "rate", "seeds"] + [name for _, name in SIGNALS])
    for e in entries:
        m = e["metrics"]
        vals = [m[s]["average_precision"] for s, _ in SIGNALS]

        def fmt(v):
            return f"{v['mean']:.3f} ± {v['std']:.3f}" if v["n"] > 1 else f"{v['mean']:.3f}"

        lines.append(row([e["strategy"], f"{e['rate']:.0%}", len(e["seeds"])] + bold_best(vals, fmt)))
    return lines


def auroc_pk_table(entries):
    """AUROC and precision@k means for the score and its strongest rivals."""
    cols = [("auroc", "corruption_score", "score AUROC"), ("auroc", "label_quality", "cleanlab AUROC"),
            ("auroc", "average_influence", "avg. influence AUROC"),
            ("precision_at_k", "corruption_score", "score P@k"), ("precision_at_k", "label_quality", "cleanlab P@k"),
            ("precision_at_k", "mistakenness_oos", "Brain oos P@k"), ("precision_at_k", "loo_loss", "LOO loss P@k"),
            ("precision_at_k", "average_influence", "avg. influence P@k")]
    lines = header(["strategy", "rate"] + [c[2] for c in cols])
    for e in entries:
        m = e["metrics"]
        auroc = bold_best([m[s][k] for k, s, _ in cols[:3]], lambda v: f"{v['mean']:.4f}")
        pk = bold_best([m[s][k] for k, s, _ in cols[3:]], lambda v: f"{v['mean']:.3f}")
        lines.append(row([e["strategy"], f"{e['rate']:.0%}"] + auroc + pk))
    return lines


def wins_table(entries):
    """Which signal has the best mean AP / P@k per cell (how often the score loses, and to what)."""
    lines = header(["strategy", "rate", "best AP", "score AP", "best P@k", "score P@k"])
    for e in entries:
        m = e["metrics"]
        cells = [e["strategy"], f"{e['rate']:.0%}"]
        for metric in ("average_precision", "precision_at_k"):
            best = max(SIGNALS, key=lambda s: m[s[0]][metric]["mean"])
            cells += [f"{best[1]} {m[best[0]][metric]['mean']:.3f}", f"{m['corruption_score'][metric]['mean']:.3f}"]
        lines.append(row(cells))
    return lines


def grid_tables(name, scenario, image_size, title):
    results = load(name)
    if results is None:
        return []
    entries = grid_entries(results, scenario, image_size)
    if not entries:
        return []
    out = [f"### {title}, {image_size} px, seeds {seeds_of(entries)}", "",
           "Average precision, mean ± standard deviation over seeds:", ""]
    out += ap_table(entries) + ["", "AUROC and precision@k (k = number of flips), means over seeds:", ""]
    out += auroc_pk_table(entries) + ["", "Best single signal per cell against the score:", ""]
    out += wins_table(entries) + [""]
    return out


def estimator_table(name="quality_estimators"):
    results = load(name)
    if results is None:
        return []
    cols = [("corruption_score", "auroc", "score AUROC"), ("corruption_score", "average_precision", "score AP"),
            ("corruption_score", "precision_at_k", "score P@k"), ("average_influence", "auroc", "avg. influence AUROC"),
            ("average_influence", "average_precision", "avg. influence AP"),
            ("self_influence", "auroc", "self-influence AUROC"), ("self_influence", "average_precision", "self-influence AP")]
    out = header(["scenario", "estimator", "seeds", "influence stage s"] + [c[2] for c in cols])
    for e in results["summary"]["estimators"]:
        cells = results["cells"]["estimators"]
        infl = [c["timings"]["influence"] for c in cells.values()
                if c.get("method") == e["method"] and c.get("scenario") == e["scenario"]
                and c.get("image_size") == e["image_size"]]
        m = e["metrics"]

        def fmt(v):
            return f"{v['mean']:.4f} ± {v['std']:.4f}" if v["n"] > 1 else f"{v['mean']:.4f}"

        out.append(row([f"{e['scenario']} {e['image_size']} px", e["method"], len(e["seeds"]),
                        f"{sum(infl) / len(infl):.1f}"] + [fmt(m[s][k]) for s, k, _ in cols]))
    return out + [""]


def backbone_table(name="quality_estimators"):
    results = load(name)
    if results is None or not results["summary"]["backbones"]:
        return []
    cols = [("corruption_score", "auroc", "score AUROC"), ("corruption_score", "average_precision", "score AP"),
            ("corruption_score", "precision_at_k", "score P@k"), ("label_quality", "auroc", "cleanlab AUROC"),
            ("label_quality", "average_precision", "cleanlab AP"), ("average_influence", "auroc", "avg. influence AUROC")]
    out = header(["backbone", "seeds", "audit s"] + [c[2] for c in cols])
    for e in results["summary"]["backbones"]:
        m = e["metrics"]
        out.append(row([e["backbone"], len(e["seeds"]), f"{e['audit_s']['mean']:.1f}"]
                       + [f"{m[s][k]['mean']:.4f}" for s, k, _ in cols]))
    return out + [""]


def scaling_table(name="speed"):
    results = load(name)
    if results is None or "scaling" not in results:
        return []
    sc = results["scaling"]
    stages = ("features", "head", "cross_validation", "influence", "scores", "write")
    out = header(["n train"] + list(stages) + ["audit wall s", "peak RSS above start MB", "features MB",
                                               "sklearn + cleanlab s", "sklearn / audit"])
    for point in sc["points"]:
        t, b = point["timings"], point.get("baseline")
        out.append(row([f"{point['n_train']:,}"] + [f"{t[s]:.2f}" if s in t else "" for s in stages]
                       + [f"{point['wall_s']:.1f}", f"{point['rss_peak_mb'] - point['rss_before_mb']:,.0f}",
                          f"{point.get('feature_array_mb', 0):,.0f}",
                          f"{b['seconds']:.1f}" if b else "", f"{b['seconds'] / point['wall_s']:.1f}" if b else ""]))
    exps = sc.get("growth_exponents", {})
    out.append(row(["growth exponent b (time ~ n^b)"]
                   + [f"{exps[s]:.2f}" if exps.get(s) is not None else "" for s in stages]
                   + ["", f"{exps['peak_rss_above_start']:.2f}" if exps.get("peak_rss_above_start") else "", "", "", ""]))
    return out + [""]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("grid", "estimators", "backbones", "scaling"))
    args = p.parse_args()
    out = []
    if args.only in (None, "grid"):
        out += grid_tables("quality", "pair", 224, "Seed pair (dining_table vs gondola)")
        out += grid_tables("quality_ten64", "ten", 64, "All ten classes")
    if args.only in (None, "estimators"):
        out += estimator_table()
    if args.only in (None, "backbones"):
        out += backbone_table()
    if args.only in (None, "scaling"):
        out += scaling_table()
    print("\n".join(out))


if __name__ == "__main__":
    main()
