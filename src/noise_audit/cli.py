"""The ``noise-audit`` command line: a thin shell over the library.

Exit codes: 0 success; 1 unexpected failure; 2 bad input (a clear message,
nothing written); 3 quality gate failed (``--fail-above RATE``: the estimated
share of label errors is above ``RATE``; the audit and the report are written
before exiting).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from typing import Any, cast

from noise_audit import validation
from noise_audit.errors import NoiseAuditError
from noise_audit.signals import SHOWN

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_GATE_FAILED = 0, 1, 2, 3


class GateFailed(Exception):
    """The ``--fail-above`` gate failed; carries the command's normal output."""

    output: str  # what the command prints on stdout

    def __init__(self, output: str, message: str) -> None:
        super().__init__(message)
        self.output = output


def _table(rows, headers):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _fmt(x):
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def _format_demo(out):
    rows = [["corruption_score"] + [_fmt(out["corruption_score"][k]) for k in ("auroc", "average_precision", "precision_at_k")]]
    rows += [[name] + [_fmt(m[k]) for k in ("auroc", "average_precision", "precision_at_k")] for name, m in out["baselines"].items()]
    return "\n".join([
        f"dataset {out['dataset']}: {out['n_samples']} samples, {out['n_flipped']} flipped, "
        f"{out['num_label_issues_estimated']} estimated label issues, influence by {out['influence_method']}",
        _table(rows, ["signal", "AUROC", "AP", "P@k"]),
        "timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in out["timings_s"].items()),
    ])


def _load_dataset(name):
    import fiftyone as fo

    if not fo.dataset_exists(name):
        raise NoiseAuditError(f"Dataset {name!r} not found; datasets: {fo.list_datasets()}")
    return fo.load_dataset(name)


def _view(dataset, tags):
    return dataset.match_tags(tags) if tags else dataset


def cmd_demo(args: argparse.Namespace) -> str:
    from noise_audit.demo import run_demo

    out = run_demo(args.data, args.classes, args.fraction, args.strategy, args.seed, args.name,
                   args.backbone, args.method, args.image_size, progress=not args.json)
    return json.dumps(out, indent=2) if args.json else _format_demo(out)


def cmd_import(args: argparse.Namespace) -> str:
    from noise_audit.core.data import load_image_folder

    ds = load_image_folder(args.dir, name=args.name, overwrite=args.overwrite, classes=args.classes)
    out = {"dataset": ds.name, "n_samples": len(ds), "tags": ds.count_sample_tags(),
           "classes": ds.distinct("ground_truth.label")}
    if args.json:
        return json.dumps(out, indent=2)
    return f"imported {out['n_samples']} samples into {out['dataset']!r}; tags {out['tags']}; {len(out['classes'])} classes"


def cmd_inject(args: argparse.Namespace) -> str:
    from noise_audit.noise import inject_label_noise

    ds = _load_dataset(args.dataset)
    out = inject_label_noise(_view(ds, args.tags), args.label_field, args.fraction, args.seed,
                             args.noisy_field, args.flag_field, args.strategy, args.influence_field,
                             args.prediction_field)
    if args.json:
        return json.dumps(out, indent=2)
    return (f"flipped {out['num_flipped']} of {out['num_samples']} labels ({out['strategy']}); "
            f"noisy labels in {out['noisy_field']!r}, truth in {out['flag_field']!r}")


def cmd_remove_noise(args: argparse.Namespace) -> str:
    from noise_audit.noise import remove_label_noise

    ds = _load_dataset(args.dataset)
    out = remove_label_noise(ds, args.label_field, args.noisy_field, args.flag_field)
    if args.json:
        return json.dumps(out, indent=2)
    return f"removed the injected fields {out['removed']}"


def _check_gate_args(args):
    if args.fail_above is not None and not 0 <= args.fail_above <= 1:
        raise NoiseAuditError(f"--fail-above must be a share of samples in [0, 1], not {args.fail_above}")


def _gate(view, key, fail_above, out):
    """Adds ``out["gate"]`` and returns the failure message, if the gate failed."""
    if fail_above is None:
        return None
    from noise_audit.reports.summary import label_error_rate

    gate = dict(label_error_rate(view, key), threshold=fail_above)
    gate["passed"] = gate["rate"] <= fail_above
    out["gate"] = gate
    if gate["passed"]:
        return None
    return (f"gate failed: estimated share of label errors {gate['rate']:.4f} "
            f"({gate['num_label_issues']}/{gate['n_samples']}) is above --fail-above {fail_above}")


def _gate_line(out):
    g = out.get("gate")
    if not g:
        return ""
    verdict = "passed" if g["passed"] else "FAILED"
    return (f"\ngate {verdict}: estimated share of label errors {g['rate']:.4f} "
            f"({g['num_label_issues']}/{g['n_samples']}) {'<=' if g['passed'] else '>'} {g['threshold']}")


def _finish(args, out, text, failure):
    result = json.dumps(out, indent=2) if args.json else text + _gate_line(out)
    if failure:
        raise GateFailed(result, failure)
    return result


def _report(view, key, args, out):
    from noise_audit.reports.summary import report

    rep = report(view, key, args.report if args.command == "audit" else args.out, truth_field=args.truth_field,
                 top_n=args.top_n, n_explained=args.explain, progress=not args.json)
    out["report"] = rep["files"]
    out["report_seconds"] = rep["seconds"]
    if rep.get("truth"):
        m = rep["truth"]["metrics"]["corruption_score"]
        out["truth"] = {k: m[k] for k in ("auroc", "average_precision", "precision_at_k")}
    return f"report: {rep['files']['html']} (and summary.json, summary.md beside it)"


def _dask_client(spec):
    if not spec:
        return None
    from noise_audit.core.distributed import connect

    return connect(spec)


def cmd_audit(args: argparse.Namespace) -> str:
    from noise_audit.core.auditing import audit
    from noise_audit.reports.summary import check_out_dir

    ds = _load_dataset(args.dataset)
    view = _view(ds, args.tags)
    reg = args.regularization  # checked by _check_options: 'auto' or a positive float
    _check_gate_args(args)
    if args.report:  # bad report arguments fail before the audit writes anything
        check_out_dir(args.report)
        validation.truth_field(view, args.truth_field, both_values=True, optional=True)
    elif args.truth_field:
        raise NoiseAuditError("--truth-field is for the report: pass --report DIR too")
    client = _dask_client(args.dask)
    try:
        r = audit(view, args.label_field, test=args.test, key=args.key, backbone=args.backbone,
                  weights=args.weights, image_size=args.image_size, method=args.method, regularization=reg,
                  folds=args.folds, seed=args.seed, overwrite=args.overwrite, progress=not args.json,
                  device=args.device, client=client)
    finally:
        if client is not None:
            cluster = client.cluster if args.dask.startswith("local:") else None
            client.close()
            if cluster is not None:
                cluster.close()
    out = {"dataset": ds.name, "key": r.key, "n_samples": len(r.ids), "num_label_issues": r.num_label_issues,
           "influence_method": r.config["influence_method"], "fields": r.config["fields"], "timings_s": r.timings}
    text = (f"audited {out['n_samples']} samples of {ds.name!r} under key {r.key!r}: "
            f"{r.num_label_issues} estimated label issues; fields {list(r.config['fields'].values())}")
    if args.report:
        text += "\n" + _report(view, r.key, args, out)
    return _finish(args, out, text, _gate(view, r.key, args.fail_above, out))


def cmd_report(args: argparse.Namespace) -> str:
    from noise_audit.reports.summary import check_out_dir

    ds = _load_dataset(args.dataset)
    view = _view(ds, args.tags)
    _check_gate_args(args)
    check_out_dir(args.out)
    out = {"dataset": ds.name, "key": args.key}
    text = _report(view, args.key, args, out)
    return _finish(args, out, text, _gate(view, args.key, args.fail_above, out))


def cmd_evaluate(args: argparse.Namespace) -> str:
    from noise_audit.metrics import evaluate
    from noise_audit.store.runs import audit_fields, load_audit

    ds = _load_dataset(args.dataset)
    config, _ = load_audit(ds, args.key)
    view = ds.select(ds.load_run_results(args.key, load_view=False).ids)
    fields = audit_fields(args.key)
    names = [cast(str, s.field) for s in SHOWN]
    out = {n: evaluate(view, fields[n], args.truth_field) for n in names}
    out["corruption_score"]["per_label"] = evaluate(view, fields["corruption_score"], args.truth_field,
                                                    label_field=config.label_field, cleaning=False)["per_label"]
    if args.json:
        return json.dumps(out, indent=2)
    rows = [[n] + [_fmt(out[n][k]) for k in ("auroc", "average_precision", "precision_at_k", "recall_at_10pct")] for n in names]
    labels = [[r["label"], r["n_clean"], r["n_flipped"], _fmt(r["mean_clean"]), _fmt(r["mean_flipped"])]
              for r in out["corruption_score"]["per_label"]]
    cal, cl = out["corruption_score"]["calibration"], out["corruption_score"].get("cleaning") or {}
    extra = [f"calibration: mean corruption score {cal['mean_score']:.4f} vs error rate {cal['error_rate']:.4f}, "
             f"expected calibration error {cal['ece']:.4f}"]
    if "none" in cl:
        extra.append("held-out accuracy of the head refit without: " + ", ".join(
            f"{name} {cl[k]:.4f}" for k, name in (("none", "nothing"), ("suspects", f"{cl['removed']['suspects']} suspects"),
                                                  ("random", "as many random"), ("flipped", "the flipped"))))
    return "\n".join([
        _table(rows, ["signal", "AUROC", "AP", "P@k", "recall@10%"]),
        "", *extra, "", "mean corruption score by given label",
        _table(labels, ["label", "clean", "flipped", "mean clean", "mean flipped"]),
    ])


def cmd_plugin(args: argparse.Namespace) -> str:
    from noise_audit.app import plugin_install as pi

    if args.action == "path":
        out: dict[str, Any] = {"plugin_dir": str(pi.plugin_source_dir())}
    elif args.action == "install":
        target = pi.install_plugin(args.plugins_dir, copy=args.copy, overwrite=args.overwrite)
        out = {"installed": str(target), "mode": "copy" if args.copy else "link", "plugin": pi.PLUGIN_NAME}
    else:
        out = {"removed": pi.uninstall_plugin(args.plugins_dir)}
    if args.json:
        return json.dumps(out, indent=2)
    if "installed" in out:
        return (f"installed {out['plugin']} at {out['installed']} ({out['mode']}); "
                "restart the App, then `fiftyone operators list` shows its operators")
    return next(iter(out.values())) if args.action == "path" else ("removed" if out["removed"] else "not installed")


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
    "top_n": validation.count, "explain": validation.count,
}


def _check_options(args):
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
    d.add_argument("--backbone", default="efficientnet_lite0", choices=["efficientnet_lite0", "resnet18"])
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
    a.add_argument("--backbone", default="efficientnet_lite0", choices=["efficientnet_lite0", "resnet18"])
    a.add_argument("--weights", help="'imagenet' (the default), a local state-dict path, or 'random' (resnet18 only)")
    a.add_argument("--image-size", type=int, default=224)
    a.add_argument("--method", default="auto")
    a.add_argument("--regularization", default="3.0", help="L2 strength of the head, or 'auto'")
    a.add_argument("--folds", type=int, default=5)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--overwrite", action="store_true")
    a.add_argument("--device", default="auto",
                   help="where the backbone, head and influence run: auto (a CUDA GPU if present), cpu, cuda[:N]")
    a.add_argument("--dask", metavar="ADDRESS",
                   help="run on a Dask cluster: a scheduler address (tcp://host:8786), or local:N for N local workers")
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

    g = add("plugin", cmd_plugin, "Install (or remove) the FiftyOne App plugin: operators and the Noise audit panel.")
    g.add_argument("action", choices=["install", "uninstall", "path"],
                   help="install: link (or --copy) into the plugins dir; uninstall; path: where the plugin files are")
    g.add_argument("--plugins-dir", help="FiftyOne's plugins directory (default: fo.config.plugins_dir, FIFTYONE_PLUGINS_DIR)")
    g.add_argument("--copy", action="store_true", help="copy the files instead of linking them")
    g.add_argument("--overwrite", action="store_true", help="replace an earlier install")
    return p


class _StderrProxy:
    """Stands in for stdout while a command runs, so what libraries print
    (FiftyOne's progress bars) lands on stderr and stdout holds only results.
    A distinct object, not ``sys.stderr`` itself: ETA's progress bars re-point
    every log handler whose stream *is* ``sys.stdout``."""

    def write(self, text):
        return sys.stderr.write(text)

    def flush(self):
        sys.stderr.flush()

    def isatty(self):
        return sys.stderr.isatty()

    def __getattr__(self, name):
        return getattr(sys.stderr, name)


def _logs_to_stderr():
    """FiftyOne logs and progress bars go to stderr, so stdout holds only results."""
    import fiftyone  # noqa: F401 - installs its log handlers

    for handler in logging.getLogger("fiftyone").handlers:
        if type(handler) is logging.StreamHandler and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)


class _OurMessages(logging.Handler):
    """noise_audit's log records of level WARNING and up, one line each
    (``warning: ...``), on whatever ``sys.stderr`` is when they come."""

    def __init__(self):
        super().__init__(logging.WARNING)

    def emit(self, record):
        sys.stderr.write(f"{record.levelname.lower()}: {record.getMessage()}\n")


def _not_mongodb_notice(record):
    return not str(record.msg).startswith("You are running the oldest supported major version of MongoDB")


def _not_nanny_shutdown(record):
    return not str(record.msg).startswith("Worker process still alive after")


def _quiet_dependencies():
    """stderr holds our progress bars and messages only.

    Each filter names one source: pyDVL's deprecation notices about its own
    internals (those at import time are filtered where noise_audit imports
    it), FiftyOne's notice that the embedded MongoDB is the oldest supported
    version (it asks nothing of the user), and Dask's note that it killed a
    worker of our ``--dask local:N`` cluster that was slow to stop when the
    command ended. Our own warnings (e.g.
    an unusable feature cache) are one line each, ``warning: ...``.
    """
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(pydvl|deprecate)(\.|$)")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydvl(\.|$)")
    logging.getLogger("fiftyone.core.odm.database").addFilter(_not_mongodb_notice)  # once: filters are a set
    logging.getLogger("distributed.nanny").addFilter(_not_nanny_shutdown)
    ours = logging.getLogger("noise_audit")
    if not any(isinstance(h, _OurMessages) for h in ours.handlers):
        ours.addHandler(_OurMessages())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_dependencies()
    stdout = sys.stdout
    _logs_to_stderr()
    try:
        _check_options(args)
        with contextlib.redirect_stdout(_StderrProxy()):
            if args.command != "plugin":  # reach (or start) the database safely when commands start together
                from noise_audit.store.db import connect

                connect()
            result = args.func(args)
    except NoiseAuditError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except GateFailed as e:
        print(e.output, file=stdout)
        print(str(e), file=sys.stderr)
        return EXIT_GATE_FAILED
    if result is not None:
        print(result, file=stdout)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
