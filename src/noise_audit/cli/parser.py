"""The ``noise-audit`` argument parser: every command, option and default.

Numeric options are checked by the library's own rules (``validation``), under
their option names, before any command runs; an unknown or malformed option
is one line on stderr and exit 2, like every bad input.
"""

from __future__ import annotations

import argparse

from noise_audit import validation
from noise_audit.cli.commands import (cmd_audit, cmd_demo, cmd_evaluate, cmd_import, cmd_inject, cmd_plugin,
                                      cmd_remove_noise, cmd_report)
from noise_audit.cli.output import EXIT_BAD_INPUT, EXIT_GATE_FAILED
from noise_audit.cli.review_commands import add_review_commands
from noise_audit.methods import BACKBONES, PRECISIONS


def add_report_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--truth-field", help="boolean field, True where a label is known to be wrong (adds detection quality)")
    sp.add_argument("--top-n", type=int, default=24, help="suspects shown in the report's grid (default 24)")
    sp.add_argument("--explain", type=int, default=3, metavar="N",
                    help="held-out images explained by their most/least influential training images (default 3)")
    sp.add_argument("--fail-above", type=float, metavar="RATE",
                    help=f"exit {EXIT_GATE_FAILED} when the estimated share of label errors "
                         "(num_label_issues / n) is above RATE, e.g. 0.05; the report is written first")


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``error: ...``, exit 2, like every bad input."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


# Numeric options, checked by the library's rules under their option names before anything runs.
_OPTION_RULES = {
    "image_size": validation.image_size, "seed": validation.seed, "folds": validation.folds,
    "fraction": validation.fraction, "regularization": validation.regularization,
    "influence_weight": validation.influence_weight,
    "top_n": validation.count, "explain": validation.count,
}


def check_options(args):
    for dest, rule in _OPTION_RULES.items():
        if getattr(args, dest, None) is not None:
            setattr(args, dest, rule(getattr(args, dest), "--" + dest.replace("_", "-")))


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="noise-audit", description="Find mislabeled images in FiftyOne datasets.")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, func, help):
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        sp.add_argument("--json", action="store_true", help="print machine-readable JSON")
        return sp

    d = add("demo", cmd_demo, "Import, inject 10%% flips, audit and evaluate; offline on a fresh machine.")
    d.add_argument("--data", help="an image folder tree (default: scikit-learn's digits as PNGs)")
    d.add_argument("--classes", nargs="+", help="only these class folders")
    d.add_argument("--fraction", type=float, default=0.1)
    d.add_argument("--strategy", default="uniform", choices=["uniform", "pair"])
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--name", help="dataset name (replaced if it exists)")
    d.add_argument("--backbone", default="efficientnet_lite0", choices=BACKBONES)
    d.add_argument("--method", default="auto")
    d.add_argument("--image-size", type=int)

    i = add("import", cmd_import, "Import an ImageClassificationDirectoryTree (split folders become tags).")
    i.add_argument("dir")
    i.add_argument("--name")
    i.add_argument("--classes", nargs="+")
    i.add_argument("--overwrite", action="store_true")

    j = add("inject", cmd_inject, "Write a copy of the labels with a share of them flipped, and the truth.")
    j.add_argument("--dataset", required=True)
    j.add_argument("--label-field", default="ground_truth")
    j.add_argument("--fraction", type=float, default=0.1)
    j.add_argument("--seed", type=int, default=0)
    j.add_argument("--strategy", default="uniform", choices=["uniform", "pair", "confusion", "influential"],
                   help="uniform: any other class; pair: each class to one partner; confusion: ambiguous samples to "
                        "the wrong class an audit of the clean labels finds likeliest; influential: the samples an "
                        "audit of the clean labels finds most helpful")
    j.add_argument("--influence-field", help="influential: the clean audit's KEY_influence field (default: the only one)")
    j.add_argument("--prediction-field", help="confusion: the clean audit's KEY_prediction field (default: the only one)")
    j.add_argument("--tags", nargs="+", help="flip only samples with these tags (e.g. train)")
    j.add_argument("--noisy-field")
    j.add_argument("--flag-field", default="label_flipped")

    rn = add("remove-noise", cmd_remove_noise,
             "Undo 'inject': delete the noisy copy and the flag field it wrote, and nothing else.")
    rn.add_argument("--dataset", required=True)
    rn.add_argument("--label-field", default="ground_truth", help="the clean labels (names the default --noisy-field)")
    rn.add_argument("--noisy-field", help="default: LABEL_FIELD_noisy")
    rn.add_argument("--flag-field", default="label_flipped")

    a = add("audit", cmd_audit, "Audit a dataset's labels and write scores into it.")
    a.add_argument("--dataset", required=True)
    a.add_argument("--label-field", default="ground_truth")
    a.add_argument("--tags", nargs="+", help="audit only samples with these tags")
    a.add_argument("--test", help="tag of the held-out samples (default val/test, else a 10%% split)")
    a.add_argument("--key", default="noise_audit")
    a.add_argument("--backbone", default="efficientnet_lite0", choices=BACKBONES)
    a.add_argument("--weights", help="'imagenet' (the default), a local state-dict path, or 'random' (resnet18 only)")
    a.add_argument("--image-size", type=int, default=224)
    a.add_argument("--embeddings-field", metavar="FIELD",
                   help="audit on this vector field of the samples (e.g. what compute_embeddings wrote) instead of "
                        "features computed from the images; --backbone, --weights and --image-size then stay unset")
    a.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="the backbone's arithmetic: fp32 (exact, default); bf16 (about 2x faster where the CPU has "
                        "AVX-512 BF16/AMX or the GPU bf16; features differ slightly); auto (bf16 where supported and "
                        "allowed by the quality grid, else fp32)")
    a.add_argument("--min-box-size", type=float, default=2.0, metavar="PX",
                   help="a Detections field: skip boxes with a side under PX pixels (default 2; counted in one warning)")
    a.add_argument("--method", default="auto")
    a.add_argument("--regularization", default="3.0", help="L2 strength of the head, or 'auto'")
    a.add_argument("--influence-weight", default="auto", metavar="auto|W",
                   help="the ranking's share of average influence: auto (chosen from 0, 0.5, 1 by flips planted into "
                        "the data; costs about three refits of the head and folds on at most 5,000 rows) or a number "
                        "in [0, 1] (0.5 gives the scores of earlier versions)")
    a.add_argument("--folds", type=int, default=5)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--overwrite", action="store_true")
    a.add_argument("--device", default="auto",
                   help="where the backbone, head and influence run: auto (a CUDA GPU if present), cpu, cuda[:N]")
    a.add_argument("--dask", metavar="ADDRESS",
                   help="run on a Dask cluster: a scheduler address (tcp://host:8786), or local:N for N local workers")
    a.add_argument("--warm-start", metavar="KEY",
                   help="start the head from audit KEY's (a re-audit after a review; 'auto': the newest audit of "
                        "the dataset with the same backbone and image size)")
    a.add_argument("--report", metavar="DIR", help="also write the report (report.html, summary.json, summary.md) to DIR")
    add_report_options(a)

    r = add("report", cmd_report, "Write an audit's report: report.html (self-contained), summary.json, summary.md.")
    r.add_argument("--dataset", required=True)
    r.add_argument("--key", default="noise_audit")
    r.add_argument("--out", required=True, metavar="DIR", help="folder for the three files (created if needed)")
    r.add_argument("--tags", nargs="+", help="report only audited samples with these tags")
    add_report_options(r)

    e = add("evaluate", cmd_evaluate, "Detection metrics of an audit against a truth field.")
    e.add_argument("--dataset", required=True)
    e.add_argument("--key", default="noise_audit")
    e.add_argument("--truth-field", default="label_flipped")

    add_review_commands(add)

    g = add("plugin", cmd_plugin, "Install (or remove) the FiftyOne App plugin: operators and the Noise audit panel.")
    g.add_argument("action", choices=["install", "uninstall", "path"],
                   help="install: link (or --copy) into the plugins dir; uninstall; path: where the plugin files are")
    g.add_argument("--plugins-dir", help="FiftyOne's plugins directory (default: fo.config.plugins_dir, FIFTYONE_PLUGINS_DIR)")
    g.add_argument("--copy", action="store_true", help="copy the files instead of linking them")
    g.add_argument("--overwrite", action="store_true", help="replace an earlier install")
    return p
