"""The noise-audit FiftyOne plugin: operators and a panel over the library.

Every operator here is a thin shell, in the style of voxel51/fiftyone-plugins:

- ``resolve_input`` declares the inputs and checks them with the library's own
  validators (so the App shows the same message the Python API would raise);
  an operator that works on samples offers the target (dataset, current view,
  selected samples) with ``inputs.view_target(ctx)``;
- every form default is the library's: a library constant or the called
  function's own default, read from its signature when the form is built;
- ``execute`` calls one library function on ``ctx.target_view()`` with the
  parameters the user gave, unchanged; a parameter left unset is not passed,
  so the library's default applies.
"""

import inspect
import queue
import threading

import fiftyone.operators as foo
import fiftyone.operators.types as types

import noise_audit as na
from noise_audit import validation
from noise_audit.app import views as nav
from noise_audit.core.backbones import resolve_precision
from noise_audit.core.embeddings import vector_fields
from noise_audit.errors import NoiseAuditError
from noise_audit.methods import BACKBONES, METHODS, PRECISIONS
from noise_audit.noise import STRATEGIES, check_targets, default_noisy_field, injected_fields
from noise_audit.reports.markdown import md
from noise_audit.store.runs import check_key, list_audits

from .panel import NoiseAuditPanel
from .review_operators import ApplyNoiseReview

# Audits of views larger than this default to delegated execution: features of
# a few thousand images take minutes on a CPU, longer than an App request (and
# the tab waiting on it) should be held. Smaller views run immediately, with
# live progress in the App.
IMMEDIATE_MAX_SAMPLES = 2000
# The form's name for na.audit's test=None (its default split, see na.audit).
AUTO_TEST = "auto (val/test tags, else a stratified split)"
# The form's name for na.audit's embeddings_field=None (features computed from the images).
FROM_IMAGES = "(none: compute features from the images)"
# The settings that shape features computed from the images: not offered, nor
# passed, when an embeddings field gives the features (na.audit refuses them).
IMAGE_PARAMS = ("backbone", "weights", "image_size")
# The library call's parameters each operator's form sets; passed through as given.
INJECT_PARAMS = ("label_field", "fraction", "seed", "noisy_field", "flag_field", "strategy")
REMOVE_PARAMS = ("noisy_field", "flag_field")
AUDIT_PARAMS = ("label_field", "key", "overwrite", "backbone", "weights", "method", "regularization", "folds",
                "image_size", "precision", "device", "min_box_size", "influence_weight")
REPORT_PARAMS = ("key", "out_dir", "truth_field")


def defaults(fn):
    """``{parameter: default}`` of a library function, read now: a changed
    library default changes the form."""
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def given(ctx, names):
    """The parameters among ``names`` the user set (an empty text field counts
    as unset), as keyword arguments for the library call."""
    return {name: ctx.params[name] for name in names if ctx.params.get(name) not in (None, "")}


def _error(inputs, message, name="error"):
    """Shows ``message`` and marks the form invalid (execution is refused).

    The App renders a notice's label as Markdown, and messages name fields,
    keys and paths from the data: escaped (:func:`noise_audit.reports.markdown.md`)."""
    prop = inputs.view(name, types.Error(label=md(message)))
    prop.invalid, prop.error_message = True, message


def _check(inputs, check, *args, name="error"):
    """Runs a library check; its error, if any, is shown and refuses execution."""
    try:
        check(*args)
    except NoiseAuditError as e:
        _error(inputs, str(e), name)
        return False
    return True


def _check_params(ctx, inputs, checks):
    """Checks each given parameter with the library's validator for it (the
    form sets no bounds of its own: the library's are the rule)."""
    for name, check in checks.items():
        if ctx.params.get(name) is not None:
            _check(inputs, check, ctx.params[name], name=f"{name}_error")


def _label_field_input(ctx, inputs, library_default, label="Label field",
                       description="The fo.Classification field (the class of each image) or fo.Detections "
                                   "field (the class of each box) to use"):
    fields = validation.label_fields(ctx.dataset)
    if not fields:
        _error(inputs, "This dataset has no fo.Classification or fo.Detections field")
        return None
    default = library_default if library_default in fields else fields[0]
    inputs.enum("label_field", fields, default=default, required=True, label=label,
                description=description, view=types.DropdownView())
    return ctx.params.get("label_field") or default


def _embeddings_field_input(ctx, inputs, target):
    """Offers the target view's vector fields as the audit's features (or the
    images); returns the chosen field, or ``None`` for features from the images."""
    fields = vector_fields(target)
    inputs.enum("embeddings_field", [FROM_IMAGES] + fields, default=FROM_IMAGES, label="Features",
                description="A vector field of the target (e.g. from compute_embeddings) to audit on, "
                "or features computed from the images by the backbone below", view=types.DropdownView())
    chosen = ctx.params.get("embeddings_field")
    if chosen in (None, "", FROM_IMAGES):
        return None
    _check(inputs, validation.embeddings_field, target, chosen, name="embeddings_field_error")
    return chosen


def _audit_key_input(ctx, inputs, description="The audit run"):
    keys = list_audits(ctx.dataset)
    if not keys:
        _error(inputs, "This dataset has no noise audit yet: run 'Run noise audit' first")
        return None
    inputs.enum("key", keys, default=keys[0], required=True, label="Audit", description=description,
                view=types.DropdownView())
    return ctx.params.get("key") or keys[0]


def run_with_progress(work, on_update):
    """Runs ``work(report)`` in a thread; yields ``on_update(stage, fraction)``
    for each report, then returns ``work``'s result (as ``StopIteration``)."""
    updates, box = queue.Queue(), {}

    def target():
        try:
            box["result"] = work(lambda stage, fraction: updates.put((stage, fraction)))
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e
        finally:
            updates.put(None)

    threading.Thread(target=target, daemon=True).start()
    while (update := updates.get()) is not None:
        out = on_update(*update)
        if out is not None:
            yield out
    if "error" in box:
        raise box["error"]
    return box["result"]


class InjectLabelNoise(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="inject_label_noise", label="Noise audit: inject label noise",
                                  description="Copy a label field with a known share of labels flipped",
                                  icon="shuffle", dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        d = defaults(na.inject_label_noise)
        # flips only in the chosen samples (e.g. the current view = the train split); the copy covers the dataset
        inputs.view_target(ctx, action_description="Flip labels in")
        label_field = _label_field_input(ctx, inputs, d["label_field"], description="The clean labels (never modified)")
        inputs.float("fraction", default=d["fraction"], label="Fraction to flip",
                     description="Share of the target samples whose label is flipped, in [0, 1)")
        inputs.enum("strategy", list(STRATEGIES), default=d["strategy"], label="Strategy",
                    description="uniform: any other class; pair: each class to one partner class; "
                    "confusion: ambiguous samples to the wrong class an earlier audit of the clean labels finds "
                    "likeliest; influential: samples with the highest average influence of an earlier audit",
                    view=types.RadioGroup())
        inputs.int("seed", default=d["seed"], label="Seed")
        noisy = ctx.params.get("noisy_field") or d["noisy_field"] or (
            default_noisy_field(label_field) if label_field else None)
        inputs.str("noisy_field", default=noisy, label="Noisy label field", description="Where the noisy copy goes")
        inputs.str("flag_field", default=d["flag_field"], label="Flip flag field",
                   description="Boolean field: True where the label was flipped")
        _check_params(ctx, inputs, {"fraction": validation.fraction, "seed": validation.seed})
        if label_field and noisy:
            _check(inputs, check_targets, ctx.dataset, label_field, noisy, ctx.params.get("flag_field") or d["flag_field"])
        return types.Property(inputs, view=types.View(label="Inject label noise"))

    def execute(self, ctx):
        out = na.inject_label_noise(ctx.target_view(), **given(ctx, INJECT_PARAMS))
        ctx.ops.reload_dataset()
        return {k: v for k, v in out.items() if k != "flipped_ids"}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("num_flipped", label="Labels flipped")
        outputs.int("num_samples", label="Target samples")
        outputs.str("strategy", label="Strategy")
        outputs.str("noisy_field", label="Noisy label field")
        outputs.str("flag_field", label="Flip flag field")
        return types.Property(outputs)


class RemoveLabelNoise(foo.Operator):
    """Deletes two fields of the dataset: a choice of samples would not change
    what it does, so it offers none (no view target)."""

    @property
    def config(self):
        return foo.OperatorConfig(name="remove_label_noise", label="Noise audit: remove injected label noise",
                                  description="Delete the noisy copy and the flag field an injection wrote, nothing else",
                                  icon="undo", dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        pairs = injected_fields(ctx.dataset)
        noisy = sorted(pairs)
        if not noisy:
            _error(inputs, "This dataset has no injected label noise")
            return types.Property(inputs, view=types.View(label="Remove injected label noise"))
        inputs.enum("noisy_field", noisy, default=noisy[0], required=True, label="Noisy label field",
                    view=types.DropdownView())
        chosen = ctx.params.get("noisy_field") or noisy[0]
        flag = pairs.get(chosen) or defaults(na.remove_label_noise)["flag_field"]
        inputs.str("flag_field", default=flag, required=True, label="Flip flag field")
        return types.Property(inputs, view=types.View(label="Remove injected label noise"))

    def execute(self, ctx):
        out = na.remove_label_noise(ctx.dataset, **given(ctx, REMOVE_PARAMS))
        ctx.ops.reload_dataset()
        return out


class RunNoiseAudit(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="run_noise_audit", label="Noise audit: run",
                                  description="Find mislabeled samples: influence functions + cleanlab label quality",
                                  icon="troubleshoot", dynamic=True, execute_as_generator=True,
                                  allow_immediate_execution=True, allow_delegated_execution=True)

    def resolve_execution_options(self, ctx):
        # Both are allowed; large views default to delegated (see IMMEDIATE_MAX_SAMPLES).
        return foo.ExecutionOptions(allow_immediate_execution=True, allow_delegated_execution=True,
                                    default_choice_to_delegated=len(ctx.target_view()) > IMMEDIATE_MAX_SAMPLES)

    def resolve_input(self, ctx):
        inputs = types.Object()
        d = defaults(na.audit)
        inputs.view_target(ctx, action_description="Audit")
        target = ctx.target_view()
        label_field = _label_field_input(ctx, inputs, d["label_field"],
                                         description="The labels to audit (e.g. the noisy copy)")
        tags = sorted(target.distinct("tags"))
        inputs.enum("test", [AUTO_TEST] + tags, default=AUTO_TEST if d["test"] is None else d["test"], label="Test split",
                    description="Held-out samples whose mean gradient defines average influence", view=types.DropdownView())
        inputs.str("key", default=d["key"], label="Run key",
                   description="Run key and field prefix ({key}_corruption_score, ...)")
        inputs.bool("overwrite", default=d["overwrite"], label="Overwrite an audit with this key")
        embeddings_field = _embeddings_field_input(ctx, inputs, target)
        if embeddings_field is None:
            inputs.enum("backbone", list(BACKBONES), default=d["backbone"], label="Backbone",
                        description="efficientnet_lite0 and efficientnet_lite2 ship their ImageNet weights; resnet18 downloads them once (offline: give a path, or 'random')",
                        view=types.RadioGroup())
            inputs.str("weights", label="Weights file (optional)", description="Local state-dict path; empty = the backbone's ImageNet weights")
        inputs.enum("method", list(dict.fromkeys((d["method"],) + METHODS)), default=d["method"], label="Influence solver",
                    description=f"{d['method']}: closed-form influence of the linear head (exact solve); "
                    "the others are pyDVL's solvers", view=types.DropdownView())
        inputs.float("regularization", default=d["regularization"], label="L2 regularization of the head")
        inputs.int("folds", default=d["folds"], label="Cross-validation folds (cleanlab)")
        if label_field and validation.label_field_kind(target, label_field) == "detections":
            inputs.float("min_box_size", default=d["min_box_size"], label="Smallest box side (px)",
                         description="Boxes with a side under this are skipped (counted in one warning)")
        inputs.str("influence_weight", default=d["influence_weight"], label="Influence weight",
                   description="The ranking's share of average influence: auto (chosen by flips planted into the "
                   "data) or a number in [0, 1]")
        if embeddings_field is None:
            inputs.int("image_size", default=d["image_size"], label="Image size (px)")
            inputs.enum("precision", list(PRECISIONS), default=d["precision"], label="Precision",
                        description="fp32: exact; bf16: about 2x faster where the CPU (AVX-512 BF16, AMX) or GPU has it, "
                        "features differ slightly; auto: bf16 where supported and allowed by the quality grid",
                        view=types.DropdownView())
        inputs.enum("device", list(dict.fromkeys((d["device"], "cpu", "cuda"))), default=d["device"], label="Device",
                    description=f"{d['device']}: a CUDA GPU when the server has one, else the CPU", view=types.DropdownView())
        _check_params(ctx, inputs, {"regularization": validation.regularization, "folds": validation.folds,
                                    "influence_weight": validation.influence_weight,
                                    **({"image_size": validation.image_size, "precision": resolve_precision}
                                       if embeddings_field is None else {})})
        if len(target) == 0:
            _error(inputs, "The target view is empty")
        elif label_field:
            _check(inputs, check_key, ctx.dataset, ctx.params.get("key") or d["key"],
                   ctx.params.get("overwrite") or d["overwrite"])
            if len(target) > IMMEDIATE_MAX_SAMPLES:
                inputs.view("hint", types.Notice(label=f"{len(target)} samples: delegated execution is recommended "
                                                 "(run `fiftyone delegated launch` to execute queued operations)"))
        return types.Property(inputs, view=types.View(label="Run noise audit"))

    def execute(self, ctx):
        if ctx.delegated:  # progress goes to the stored operation; the result is kept
            return self._audit(ctx, lambda stage, f: ctx.set_progress(progress=f, label=f"noise audit: {stage}"))
        return self._audit_streaming(ctx)

    def _audit(self, ctx, on_progress):
        test, embeddings_field = ctx.params.get("test"), ctx.params.get("embeddings_field")
        kwargs = given(ctx, AUDIT_PARAMS)
        if test not in (None, AUTO_TEST):
            kwargs["test"] = test
        if embeddings_field not in (None, "", FROM_IMAGES):  # the form showed no image settings: none are passed
            kwargs = {k: v for k, v in kwargs.items() if k not in IMAGE_PARAMS}
            kwargs["embeddings_field"] = embeddings_field
        results = na.audit(ctx.target_view(), **kwargs, progress=False, on_progress=on_progress)
        return nav.summary(ctx.dataset, results.key)

    def _audit_streaming(self, ctx):
        def on_update(stage, fraction):
            ctx.set_progress(progress=fraction, label=f"noise audit: {stage}")
            return ctx.ops.set_progress(label=f"Noise audit: {stage}", progress=fraction)

        summary = yield from run_with_progress(lambda report: self._audit(ctx, report), on_update)
        yield ctx.ops.reload_dataset()
        yield ctx.ops.notify(f"Noise audit {summary['key']!r}: {summary['n_flagged']} suspects flagged", variant="success")


class EvaluateNoiseAudit(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="evaluate_noise_audit", label="Noise audit: evaluate",
                                  description="Detection metrics of an audit against known flips", icon="query_stats",
                                  dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.view_target(ctx, action_description="Evaluate on")  # the audited samples of the target
        key = _audit_key_input(ctx, inputs)
        candidates = nav.truth_fields(ctx.dataset)
        if not candidates:
            flag = defaults(na.inject_label_noise)["flag_field"]
            _error(inputs, f"No boolean field marks known flips (e.g. {flag} from 'inject label noise')", "no_truth")
        elif key:
            inputs.enum("truth_field", candidates, default=nav.default_truth_field(ctx.dataset) or candidates[0],
                        required=True, label="Truth field", description="True where the label is known to be wrong",
                        view=types.DropdownView())
        return types.Property(inputs, view=types.View(label="Evaluate noise audit"))

    def execute(self, ctx):
        summary = nav.summary(ctx.target_view(), ctx.params["key"], ctx.params["truth_field"])
        rows = [{"signal": s, **{k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()}}
                for s, m in summary["metrics"].items()]
        return {"metrics": rows, "corruption_auroc": summary["metrics"]["corruption_score"]["auroc"],
                "n_samples": summary["n_samples"]}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("n_samples", label="Audited samples evaluated")
        table = types.TableView()
        for col, label in (("signal", "Signal"), ("auroc", "AUROC"), ("average_precision", "AP"),
                           ("precision_at_k", "Precision@k"), ("recall_at_10pct", "Recall@10%"), ("k", "k (flipped)")):
            table.add_column(col, label=label)
        outputs.list("metrics", types.Object(), label="Detection of known flips", view=table)
        return types.Property(outputs)


class DeleteNoiseAudit(foo.Operator):
    """Deletes a run and its fields from the dataset: no view target (a choice
    of samples would not change what it does)."""

    @property
    def config(self):
        return foo.OperatorConfig(name="delete_noise_audit", label="Noise audit: delete",
                                  description="Remove an audit run and exactly the fields it created", icon="delete",
                                  dynamic=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        key = _audit_key_input(ctx, inputs)
        if key:
            fields = ", ".join(na.audit_fields(key).values())
            inputs.bool("confirm", default=False, required=True, label=md(f"Delete audit {key!r} and its fields: {fields}"),
                        view=types.CheckboxView())
            if not ctx.params.get("confirm"):
                inputs.view("confirm_hint", types.Warning(label="Tick the box to confirm; this cannot be undone"))
        return types.Property(inputs, view=types.View(label="Delete noise audit"))

    def execute(self, ctx):
        if not ctx.params.get("confirm"):
            raise NoiseAuditError("Deletion not confirmed")
        na.delete_audit(ctx.dataset, ctx.params["key"])
        ctx.ops.reload_dataset()
        return {"deleted": ctx.params["key"]}


class GenerateNoiseReport(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(name="generate_noise_report", label="Noise audit: generate report",
                                  description="Write a self-contained HTML + JSON + Markdown report of an audit",
                                  icon="summarize", dynamic=True, allow_delegated_execution=True)

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.view_target(ctx, action_description="Report on")  # the audited samples of the target
        key = _audit_key_input(ctx, inputs)
        if key:
            candidates = nav.truth_fields(ctx.dataset)
            inputs.enum("truth_field", candidates, default=nav.default_truth_field(ctx.dataset), label="Truth field (optional)",
                        description="Adds detection metrics against known flips", view=types.DropdownView())
            inputs.str("out_dir", required=True, label="Output directory",
                       description="report.html, summary.json and summary.md are written here (on the server)")
        return types.Property(inputs, view=types.View(label="Generate noise report"))

    def execute(self, ctx):
        summary = na.report(ctx.target_view(), **given(ctx, REPORT_PARAMS), progress=False,
                            on_progress=lambda stage, f: ctx.set_progress(progress=f, label=f"report: {stage}"))
        return {"report": summary["files"]["html"], "summary_json": summary["files"]["json"],
                "summary_md": summary["files"]["markdown"]}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("report", label="Report (open in a browser)")
        outputs.str("summary_json", label="Every number, as JSON")
        outputs.str("summary_md", label="Markdown summary")
        return types.Property(outputs)


def register(p):
    for cls in (InjectLabelNoise, RemoveLabelNoise, RunNoiseAudit, EvaluateNoiseAudit, DeleteNoiseAudit, GenerateNoiseReport,
                ApplyNoiseReview, NoiseAuditPanel):
        p.register(cls)
