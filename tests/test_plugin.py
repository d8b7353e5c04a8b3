"""The FiftyOne plugin's operators, run through FiftyOne's operator machinery.

Each operator is executed with ``fiftyone.operators.execute_operator`` against
a real dataset in the embedded database; one audit is delegated and executed
by FiftyOne's delegated-operation service, and the progress it reports is read
back from the stored operation while it runs.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import fiftyone as fo
import fiftyone.operators as foo
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionError

import noise_audit as na
from noise_audit.core.auditing import STAGES
from noise_audit.app.plugin_install import INSTALL_NAME, install_plugin, plugin_source_dir, uninstall_plugin

PLUGIN = "@noise-audit/noise-audit"
OPERATORS = ("inject_label_noise", "run_noise_audit", "evaluate_noise_audit", "delete_noise_audit", "generate_noise_report")


def run_op(name, dataset, view=None, **params):
    return foo.execute_operator(f"{PLUGIN}/{name}", ctx={"dataset": dataset, "view": view, "params": params})


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
