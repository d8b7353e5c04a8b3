"""The FiftyOne plugin's operators, run through FiftyOne's operator machinery.

Each operator is executed with ``fiftyone.operators.execute_operator`` against
a real dataset in the embedded database; one audit is delegated and executed
by FiftyOne's delegated-operation service, and the progress it reports is read
back from the stored operation while it runs.
"""

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionContext, ExecutionError

import noise_audit as na
from noise_audit.app import views as nav
from noise_audit.core.auditing import DEFAULT_L2, STAGES
from noise_audit.methods import BACKBONES, METHODS
from noise_audit.noise import STRATEGIES
from noise_audit.app.plugin_install import INSTALL_NAME, install_plugin, plugin_source_dir, uninstall_plugin

PLUGIN = "@noise-audit/noise-audit"
OPERATORS = ("inject_label_noise", "run_noise_audit", "evaluate_noise_audit", "delete_noise_audit", "generate_noise_report")
# The operators that work on samples (and so offer a view target) and those that
# work on the dataset's fields and runs (a choice of samples changes nothing).
TARGETED = ("inject_label_noise", "run_noise_audit", "evaluate_noise_audit", "generate_noise_report")
DATASET_WIDE = ("remove_label_noise", "delete_noise_audit")
FLIPPED = fo.ViewField("label_flipped") == True  # noqa: E712


def run_op(name, dataset, view=None, selected=None, **params):
    return foo.execute_operator(f"{PLUGIN}/{name}", ctx={"dataset": dataset, "view": view, "selected": selected or [],
                                                         "params": params})


def form(name, dataset, view=None, selected=None, **params):
    """The properties the operator's own ``resolve_input`` declares (not the
    view target FiftyOne adds to a form by itself), as the App would get them."""
    request = {"dataset_name": dataset.name, "view": (view or dataset.view())._serialize(),
               "selected": selected or [], "params": params}
    ctx = ExecutionContext(request, operator_uri=f"{PLUGIN}/{name}")
    with ctx:
        return foo.get_operator(f"{PLUGIN}/{name}").resolve_input(ctx).type.properties


def library_defaults(fn):
    return {n: p.default for n, p in inspect.signature(fn).parameters.items() if p.default is not inspect.Parameter.empty}


def with_defaults(monkeypatch, fn, **changed):
    """Changes ``fn``'s defaults as ``inspect.signature`` reports them."""
    sig = inspect.signature(fn)
    params = [p.replace(default=changed[p.name]) if p.name in changed else p for p in sig.parameters.values()]
    monkeypatch.setattr(fn, "__signature__", sig.replace(parameters=params), raising=False)


@pytest.fixture
def noisy_dataset(make_small_dataset, plugins_dir):
    ds = make_small_dataset(n_train=40, n_val=10)
    run_op("inject_label_noise", ds, ds.match_tags("train"), label_field="ground_truth", fraction=0.1, seed=1,
           view_target="CURRENT_VIEW")
    return ds


def test_install_links_plugin_and_fiftyone_lists_its_operators(tmp_path):
    target = install_plugin(tmp_path)
    assert target == tmp_path / INSTALL_NAME and target.resolve() == plugin_source_dir()
    with pytest.raises(na.NoiseAuditError, match="already installed"):
        install_plugin(tmp_path, copy=True)
    env = {**os.environ, "FIFTYONE_PLUGINS_DIR": str(tmp_path)}
    fiftyone_cli = shutil.which("fiftyone", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    out = subprocess.run([fiftyone_cli, "operators", "list", "--include-unlisted"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for name in OPERATORS + ("noise_audit",):
        assert f"{PLUGIN}/{name}" in out.stdout
    # the CLI's own install command, copying this time
    copy_dir = tmp_path / "copy"
    cli = subprocess.run([sys.executable, "-m", "noise_audit.cli", "plugin", "install", "--plugins-dir", str(copy_dir), "--copy"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert (copy_dir / INSTALL_NAME / "fiftyone.yml").is_file() and not (copy_dir / INSTALL_NAME).is_symlink()
    assert uninstall_plugin(copy_dir) and not (copy_dir / INSTALL_NAME).exists()


def test_inject_operator_flips_only_the_target_view(make_small_dataset, plugins_dir):
    ds = make_small_dataset(n_train=40, n_val=10)
    result = run_op("inject_label_noise", ds, ds.match_tags("train"), label_field="ground_truth", fraction=0.1,
                    seed=3, strategy="pair", view_target="CURRENT_VIEW")
    assert result.result["num_flipped"] == 12
    assert len(ds.match(fo.ViewField("label_flipped") == True)) == 12  # noqa: E712
    assert len(ds.match_tags("val").match(fo.ViewField("label_flipped") == True)) == 0  # noqa: E712
    assert ds.values("ground_truth.label") != ds.values("ground_truth_noisy.label")
    # Writing into a field the user owns is refused by resolve_input, before any work.
    ds.add_sample_field("mine", fo.BooleanField)
    with pytest.raises(ExecutionError, match="not created by noise-audit"):
        run_op("inject_label_noise", ds, label_field="ground_truth", flag_field="mine")


def test_audit_evaluate_delete_operators(noisy_dataset):
    ds = noisy_dataset
    run_op("run_noise_audit", ds, label_field="ground_truth_noisy", image_size=64, key="plug")
    assert "plug" in na.list_audits(ds)
    scores = ds.values("plug_corruption_score")
    assert all(s is not None for s in scores) and len(set(scores)) > 100

    out = run_op("evaluate_noise_audit", ds, key="plug", truth_field="label_flipped").result
    direct = na.evaluate(ds, "plug_corruption_score", "label_flipped")
    row = next(r for r in out["metrics"] if r["signal"] == "corruption_score")
    assert row["auroc"] == pytest.approx(direct["auroc"], abs=1e-4) and row["k"] == 12
    assert out["corruption_auroc"] > 0.8

    # The same key again is refused with the library's message, nothing changes.
    with pytest.raises(ExecutionError, match="exists; pass overwrite"):
        run_op("run_noise_audit", ds, label_field="ground_truth_noisy", image_size=64, key="plug")
    with pytest.raises(ExecutionError, match="confirm"):
        run_op("delete_noise_audit", ds, key="plug", confirm=False)
    assert "plug" in na.list_audits(ds)
    run_op("delete_noise_audit", ds, key="plug", confirm=True)
    assert "plug" not in na.list_audits(ds)
    assert not any(f.startswith("plug_") for f in ds.get_field_schema())
    assert "ground_truth_noisy" in ds.get_field_schema()  # the user's labels stay


def test_delegated_audit_reports_progress_to_the_stored_operation(noisy_dataset):
    ds = noisy_dataset
    queued = foo.execute_operator(f"{PLUGIN}/run_noise_audit", ctx={
        "dataset": ds, "request_delegation": True,
        "params": {"label_field": "ground_truth_noisy", "image_size": 64, "key": "delegated"}})
    assert queued.delegated
    service = DelegatedOperationService()
    op_id = queued.result["id"]
    assert service.get(op_id).run_state == "queued"
    assert "delegated" not in na.list_audits(ds)  # nothing runs until an executor picks it up

    # Record every update the operator makes, as it makes it: the service's own
    # set_progress is what the execution context calls; wrap it and still store.
    # (Sampling the stored status by time misses stages that finish quickly,
    # e.g. features read from the cache.)
    seen, stored = [], service.set_progress

    def record(doc_id, progress):
        out = stored(doc_id, progress)
        seen.append((progress.progress, progress.label, service.get(doc_id).status.progress))
        return out

    service.set_progress = record
    service.execute_queued_operations(operator=f"{PLUGIN}/run_noise_audit", dataset_name=ds.name)
    op = service.get(op_id)
    assert op.run_state == "completed", op.result
    assert op.result.result["key"] == "delegated" and op.result.result["n_samples"] == 150
    assert "delegated" in na.list_audits(ds)
    labels = [label for _, label, _ in seen]
    stages = [label.removeprefix("noise audit: ") for label in labels]
    # every stage reported, in pipeline order, ending with done
    assert [s for s in STAGES if s in stages] == list(STAGES), seen
    assert stages[-1] == "done" and [p for p, _, _ in seen][-1] == 1.0
    assert [p for p, _, _ in seen] == sorted(p for p, _, _ in seen)  # progress only moves forward
    assert all(reported == stored for reported, _, stored in seen)  # each update reached the stored operation
    service.delete_operation(op_id)


def test_report_operator_writes_the_report(noisy_dataset, tmp_path):
    ds = noisy_dataset
    na.audit(ds, "ground_truth_noisy", key="rep", image_size=64, progress=False)
    out = run_op("generate_noise_report", ds, key="rep", truth_field="label_flipped", out_dir=str(tmp_path / "r")).result
    html = Path(out["report"])
    assert html == tmp_path / "r" / "report.html" and html.stat().st_size > 10_000
    summary = json.loads(Path(out["summary_json"]).read_text())
    assert summary["overview"]["n_samples"] == len(ds) and summary["truth"]["n_flipped"] == 12
    direct = na.evaluate(ds, "rep_corruption_score", "label_flipped")
    assert summary["truth"]["metrics"]["corruption_score"]["auroc"] == pytest.approx(direct["auroc"])
    assert "rep" in Path(out["summary_md"]).read_text()


def test_sample_operators_offer_the_view_target_and_dataset_wide_ones_do_not(make_small_dataset, plugins_dir):
    ds = make_small_dataset(n_train=10, n_val=5)
    view, selected = ds.match_tags("train"), ds.limit(3).values("id")
    for name in TARGETED:
        props = form(name, ds, view, selected)
        assert isinstance(props.get("view_target"), types.ViewTargetProperty), name
        # dataset, current view and selection offered; the most selective is the default
        assert props["view_target"].type.values == ["DATASET", "CURRENT_VIEW", "SELECTED_SAMPLES"], name
        assert props["view_target"].default == "SELECTED_SAMPLES", name
    for name in DATASET_WIDE:
        assert "view_target" not in form(name, ds, view, selected), name


def test_inject_operator_flips_only_the_chosen_target(make_small_dataset, plugins_dir):
    ds = make_small_dataset(n_train=40, n_val=10)
    # the selection lies in the current view, as in the App
    current = ds.match_tags("train")
    selected = current.skip(30).limit(20).values("id")  # two classes
    cases = {  # target: (flag field, the samples it names)
        "SELECTED_SAMPLES": ("flip_sel", ds.select(selected)),
        "CURRENT_VIEW": ("flip_view", current),
        "DATASET": ("flip_all", ds),
    }
    for target, (flag, samples) in cases.items():
        out = run_op("inject_label_noise", ds, current, selected, view_target=target, label_field="ground_truth",
                     fraction=0.5, seed=2, noisy_field=f"{flag}_noisy", flag_field=flag).result
        flipped = set(ds.match(fo.ViewField(flag) == True).values("id"))  # noqa: E712
        assert out["num_samples"] == len(samples) and out["num_flipped"] == len(flipped) > 0, target
        assert flipped <= set(samples.values("id")), target  # nothing outside the target was flipped
        assert len(ds.exists(f"{flag}_noisy")) == len(ds)  # the noisy copy covers the dataset
    # the dataset target reached samples outside both the current view and the selection
    outside = set(ds.values("id")) - set(current.values("id")) - set(selected)
    assert set(ds.match(fo.ViewField("flip_all") == True).values("id")) & outside


def test_form_defaults_are_the_library_defaults(make_small_dataset, plugins_dir, monkeypatch):
    ds = make_small_dataset(n_train=10, n_val=5)
    inject, audit = library_defaults(na.inject_label_noise), library_defaults(na.audit)
    props = form("inject_label_noise", ds)
    for name in ("label_field", "fraction", "seed", "flag_field", "strategy"):
        assert props[name].default == inject[name], name
    assert props["strategy"].type.values == list(STRATEGIES)
    assert props["noisy_field"].default == f"{inject['label_field']}_noisy"  # what the library names it
    props = form("run_noise_audit", ds)
    for name in ("label_field", "key", "overwrite", "backbone", "method", "regularization", "folds", "image_size",
                 "device", "influence_weight"):
        assert props[name].default == audit[name], name
    assert props["regularization"].default == DEFAULT_L2
    assert props["backbone"].type.values == list(BACKBONES)
    assert set(props["method"].type.values) == {audit["method"], *METHODS}

    # Read from the library when the form is built: a changed default changes the form.
    with_defaults(monkeypatch, na.inject_label_noise, fraction=0.25, seed=7, flag_field="other_flag", strategy="pair")
    with_defaults(monkeypatch, na.audit, key="other_key", regularization=2 * DEFAULT_L2, folds=3, image_size=96,
                  backbone=BACKBONES[-1])
    props = form("inject_label_noise", ds)
    assert (props["fraction"].default, props["seed"].default, props["flag_field"].default,
            props["strategy"].default) == (0.25, 7, "other_flag", "pair")
    props = form("run_noise_audit", ds)
    assert (props["key"].default, props["regularization"].default, props["folds"].default, props["image_size"].default,
            props["backbone"].default) == ("other_key", 2 * DEFAULT_L2, 3, 96, BACKBONES[-1])


def test_audit_evaluate_report_operators_cover_only_the_target(noisy_dataset, tmp_path):
    ds = noisy_dataset
    ids = ds.values("id")
    # current view: all but 15 samples; selection: all but 20 (both keep every class in train and val)
    run_op("run_noise_audit", ds, ds.skip(15), ids[20:], view_target="SELECTED_SAMPLES",
           label_field="ground_truth_noisy", image_size=64, key="part")
    audited = ds.exists("part_corruption_score")
    assert set(audited.values("id")) == set(ids[20:])

    # evaluate on a selection of 5 flipped and 25 clean audited samples
    chosen = audited.match(FLIPPED).limit(5).values("id") + audited.match(~FLIPPED).limit(25).values("id")
    out = run_op("evaluate_noise_audit", ds, None, chosen, view_target="SELECTED_SAMPLES", key="part",
                 truth_field="label_flipped").result
    row = next(r for r in out["metrics"] if r["signal"] == "corruption_score")
    assert out["n_samples"] == 30 and row["k"] == 5
    direct = na.evaluate(ds.select(chosen), "part_corruption_score", "label_flipped", cleaning=False)
    assert row["auroc"] == pytest.approx(direct["auroc"], abs=1e-4)

    # the report of the audited train samples (the current view) only
    train = ds.match_tags("train")
    out = run_op("generate_noise_report", ds, train, view_target="CURRENT_VIEW", key="part", truth_field="label_flipped",
                 out_dir=str(tmp_path / "r")).result
    summary = json.loads(Path(out["summary_json"]).read_text())
    in_report = train.exists("part_corruption_score")
    assert summary["overview"]["n_in_report"] == len(in_report) < len(audited)
    assert summary["overview"]["n_samples"] == len(audited)  # the run's own numbers stay the audit's
    assert summary["truth"]["n_flipped"] == len(in_report.match(FLIPPED))


def test_form_bounds_are_the_library_checks(make_small_dataset, plugins_dir):
    ds = make_small_dataset(n_train=10, n_val=5)
    for name, params, param in (("inject_label_noise", {"fraction": 1.0}, "fraction"),
                                ("run_noise_audit", {"folds": 1}, "folds"),
                                ("run_noise_audit", {"regularization": 0.0}, "regularization"),
                                ("run_noise_audit", {"influence_weight": "2"}, "influence_weight")):
        with pytest.raises(na.NoiseAuditError) as direct:
            (na.inject_label_noise if name == "inject_label_noise" else na.audit)(ds, **params)
        error = form(name, ds, **params).get(f"{param}_error")
        assert error is not None and error.invalid and error.error_message == str(direct.value), param
        with pytest.raises(ExecutionError, match=re.escape(str(direct.value))):  # refused before any work
            run_op(name, ds, label_field="ground_truth", **params)
    # values the library takes are taken (no bound of the form's own)
    assert not any(p.invalid for p in form("run_noise_audit", ds, folds=2, image_size=16).values())


def test_audit_form_offers_exactly_the_target_views_vector_fields(make_small_dataset, plugins_dir):
    import numpy as np
    from noise_audit.core.features import extract_features, get_backbone

    ds = make_small_dataset(n_train=10, n_val=5)
    raw, _ = extract_features(ds.values("filepath"), get_backbone(image_size=32), progress=False)
    ds.set_values("clip", list(raw))  # VectorField
    ds.set_values("pts", [[float(a), float(b)] for a, b in raw[:, :2]])  # ListField(FloatField), as compute_visualization
    ds.set_values("grid", [np.zeros((2, 2)) for _ in range(len(ds))])  # ArrayField: offered, its values refused later
    ds.set_values("note", ["x"] * len(ds))  # StringField: not offered
    ds.set_values("counts", [[1, 2]] * len(ds))  # ListField(IntField)
    ds.set_values("names", [["a", "b"]] * len(ds))  # ListField(StringField): not offered
    view = ds.exclude_fields("pts")
    from_images = "(none: compute features from the images)"
    offered = form("run_noise_audit", ds, view, view_target="CURRENT_VIEW")["embeddings_field"]
    assert offered.type.values == [from_images, "clip", "counts", "grid"] and offered.default == from_images
    assert form("run_noise_audit", ds, view_target="DATASET")["embeddings_field"].type.values == [
        from_images, "clip", "counts", "grid", "pts"]
    # the image settings are offered only for features from the images
    assert {"backbone", "weights", "image_size"} <= set(form("run_noise_audit", ds))
    props = form("run_noise_audit", ds, embeddings_field="clip")
    assert not {"backbone", "weights", "image_size"} & set(props) and not any(p.invalid for p in props.values())
    # a field the target does not have (a stale choice) shows the library's message
    error = form("run_noise_audit", ds, view, view_target="CURRENT_VIEW", embeddings_field="pts")["embeddings_field_error"]
    assert error.invalid and error.error_message.startswith("Embeddings field 'pts' not found")

    # executed: the field's vectors are the features; image settings left in the params are not passed
    run_op("run_noise_audit", ds, label_field="ground_truth", key="by_clip", embeddings_field="clip",
           backbone="resnet18", image_size=17)
    config = ds.get_run_info("by_clip").config
    assert config.embeddings_field == "clip" and config.backbone is None and config.image_size is None
    assert nav.summary(ds, "by_clip")["embeddings_field"] == "clip"  # the panel says what the features were
    assert all(s is not None for s in ds.values("by_clip_corruption_score"))


def test_the_forms_offer_detections_fields_and_the_audit_operator_audits_boxes(make_mosaic_dataset, plugins_dir):
    ds = make_mosaic_dataset(n_train=12, n_val=6)
    ds.add_sample_field("kp", fo.EmbeddedDocumentField, embedded_doc_type=fo.Keypoints)
    props = form("run_noise_audit", ds, label_field="ground_truth")
    assert props["label_field"].type.values == ["ground_truth"]  # Detections offered, Keypoints not
    assert props["min_box_size"].default == library_defaults(na.audit)["min_box_size"]
    assert form("inject_label_noise", ds)["label_field"].type.values == ["ground_truth"]
    run_op("run_noise_audit", ds, label_field="ground_truth", key="boxes", backbone="resnet18", weights="random",
           image_size=32, folds=2, min_box_size=1.0)
    config, results = na.load_audit(ds, "boxes")
    assert config.object_field == "ground_truth" and config.min_box_size == 1.0
    assert len(results.ids) == len(ds.values("ground_truth.detections.id", unwind=True))
