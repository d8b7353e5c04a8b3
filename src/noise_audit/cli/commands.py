"""The ``noise-audit`` commands: each parses nothing, calls the library, formats its result.

Each ``cmd_*`` takes the parsed arguments (:mod:`noise_audit.cli.parser`) and
returns what the command prints on stdout: text, or JSON with ``--json``.
Bad input raises :class:`~noise_audit.errors.NoiseAuditError` (exit 2) before
anything is written; a failed ``--fail-above`` gate raises
:class:`~noise_audit.cli.output.GateFailed` (exit 3) after everything is.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, cast

from noise_audit import validation
from noise_audit.cli.output import GateFailed, fmt, table, terminal
from noise_audit.errors import NoiseAuditError
from noise_audit.signals import SHOWN


def _format_demo(out):
    rows = [["corruption_score"] + [fmt(out["corruption_score"][k]) for k in ("auroc", "average_precision", "precision_at_k")]]
    rows += [[name] + [fmt(m[k]) for k in ("auroc", "average_precision", "precision_at_k")] for name, m in out["baselines"].items()]
    return "\n".join([
        f"dataset {terminal(out['dataset'])}: {out['n_samples']} samples, {out['n_flipped']} flipped, "
        f"{out['num_label_issues_estimated']} estimated label issues, influence by {out['influence_method']}",
        table(rows, ["signal", "AUROC", "AP", "P@k"]),
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
    what = "box labels" if "num_images" in out else "labels"
    return (f"flipped {out['num_flipped']} of {out['num_samples']} {what} ({out['strategy']}); "
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
    return f"report: {terminal(rep['files']['html'])} (and summary.json, summary.md beside it)"


def _dask_client(spec):
    if not spec:
        return None
    from noise_audit.core.distributed import connect

    return connect(spec)


def _check_embeddings_options(args: argparse.Namespace) -> None:
    """--backbone, --weights, --image-size or --precision given with --embeddings-field: refused
    under the options' names (their defaults are the library's, which refuses the same)."""
    from noise_audit.core.auditing import image_settings_given

    given = image_settings_given(backbone=args.backbone, weights=args.weights, image_size=args.image_size,
                                 precision=args.precision)
    validation.image_settings_unused(args.embeddings_field, {f"--{k.replace('_', '-')}": v for k, v in given.items()})


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
    _check_embeddings_options(args)
    client = _dask_client(args.dask)
    try:
        r = audit(view, args.label_field, test=args.test, key=args.key, backbone=args.backbone,
                  weights=args.weights, image_size=args.image_size, precision=args.precision, method=args.method,
                  regularization=reg, influence_weight=args.influence_weight,
                  folds=args.folds, seed=args.seed, overwrite=args.overwrite, progress=not args.json,
                  device=args.device, client=client, embeddings_field=args.embeddings_field,
                  warm_start=True if args.warm_start == "auto" else args.warm_start, min_box_size=args.min_box_size)
    finally:
        if client is not None:
            cluster = client.cluster if args.dask.startswith("local:") else None
            client.close()
            if cluster is not None:
                cluster.close()
    out = {"dataset": ds.name, "key": r.key, "n_samples": len(r.ids), "num_label_issues": r.num_label_issues,
           "influence_method": r.config["influence_method"], "fields": r.config["fields"], "timings_s": r.timings}
    what = "samples" if not r.config.get("object_field") else "boxes"
    text = (f"audited {out['n_samples']} {what} of {ds.name!r} under key {r.key!r}: "
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
    from noise_audit.store.ownership import audit_fields
    from noise_audit.store.runs import load_audit

    ds = _load_dataset(args.dataset)
    config, _ = load_audit(ds, args.key)
    names = [cast(str, s.field) for s in SHOWN]
    if config.get("object_field"):  # an audit of boxes: its attributes against the boxes' truth attribute
        prefix = f"{config.object_field}.detections."
        out = {n: evaluate(ds, prefix + config.object_attributes[n], args.truth_field) for n in names}
        out["corruption_score"] = evaluate(ds, prefix + config.object_attributes["corruption_score"],
                                           args.truth_field, label_field=config.object_field)
    else:
        view = ds.select(ds.load_run_results(args.key, load_view=False).ids)
        fields = audit_fields(args.key)
        out = {n: evaluate(view, fields[n], args.truth_field) for n in names}
        out["corruption_score"]["per_label"] = evaluate(view, fields["corruption_score"], args.truth_field,
                                                        label_field=config.label_field, cleaning=False)["per_label"]
    if args.json:
        return json.dumps(out, indent=2)
    rows = [[n] + [fmt(out[n][k]) for k in ("auroc", "average_precision", "precision_at_k", "recall_at_10pct")] for n in names]
    labels = [[r["label"], r["n_clean"], r["n_flipped"], fmt(r["mean_clean"]), fmt(r["mean_flipped"])]
              for r in out["corruption_score"]["per_label"]]
    cal, cl = out["corruption_score"]["calibration"], out["corruption_score"].get("cleaning") or {}
    extra = [f"calibration: mean corruption score {cal['mean_score']:.4f} vs error rate {cal['error_rate']:.4f}, "
             f"expected calibration error {cal['ece']:.4f}"]
    if "none" in cl:
        extra.append("held-out accuracy of the head refit without: " + ", ".join(
            f"{name} {cl[k]:.4f}" for k, name in (("none", "nothing"), ("suspects", f"{cl['removed']['suspects']} suspects"),
                                                  ("random", "as many random"), ("flipped", "the flipped"))))
    return "\n".join([
        table(rows, ["signal", "AUROC", "AP", "P@k", "recall@10%"]),
        "", *extra, "", "mean corruption score by given label",
        table(labels, ["label", "clean", "flipped", "mean clean", "mean flipped"]),
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
        return (f"installed {out['plugin']} at {terminal(out['installed'])} ({out['mode']}); "
                "restart the App, then `fiftyone operators list` shows its operators")
    return terminal(next(iter(out.values()))) if args.action == "path" else ("removed" if out["removed"] else "not installed")
