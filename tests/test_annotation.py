"""Issue 24 item 6: the top suspects in an annotation tool, through FiftyOne's annotation API.

Without a server: the view and the label schema :func:`noise_audit.annotate_suspects`
builds are checked with FiftyOne's own schema builder for the CVAT and Label
Studio backends. With one (``slow``): a real Label Studio started on a
loopback port from the venv ``.ci/run`` installs (``.data/lsvenv``, or
``$NOISE_AUDIT_LABEL_STUDIO``), suspects sent with their suggestions
pre-filled, three tasks annotated through its REST API, two left untouched,
the answers loaded back as review decisions.
"""

import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import noise_audit as na
from noise_audit.annotation import annotation_request, staging_field
from noise_audit.store.review import decisions

from audit_state import FAST
from conftest import ROOT, SMALL_CLASSES

KEY = "noise_audit"


@pytest.fixture(scope="module")
def audited():
    from test_review import small_dataset

    ds = small_dataset(n_train=20, n_val=8)
    na.inject_label_noise(ds.match_tags("train"), fraction=0.2, seed=1)
    na.audit(ds, "ground_truth_noisy", **FAST)
    yield ds
    ds.delete()


def raw(ds, field):
    return [(d["_id"], d.get(field)) for d in ds._sample_collection.find({}, {field: 1}, sort=[("_id", 1)])]


@pytest.mark.parametrize("backend", ["cvat", "labelstudio"])
def test_the_request_is_the_top_undecided_suspects_and_a_schema_fiftyone_accepts(audited, backend):
    import fiftyone.utils.annotations as foua

    ds = audited
    ds._sample_collection.update_many({}, {"$set": {f"{KEY}_review": None}})
    by_score = ds.sort_by(f"{KEY}_corruption_score", reverse=True).values("id")
    na.review(ds, KEY, by_score[0], "keep")  # decided: no longer sent
    view, kwargs = annotation_request(ds, KEY, top_k=6)
    assert view.values("id") == by_score[1:7]
    assert kwargs == {"label_field": f"{KEY}_annotation", "label_type": "classification",
                      "classes": sorted(SMALL_CLASSES)}
    with_decided, _ = annotation_request(ds, KEY, top_k=6, include_decided=True)
    assert with_decided.values("id") == by_score[:6]
    anno_backend = foua._parse_config(backend, None, media_field="filepath").build()
    schema, _ = foua._build_label_schema(view, anno_backend, None, kwargs["label_field"], kwargs["label_type"],
                                         kwargs["classes"], True, None, True, True, True, True, True)
    field = schema[f"{KEY}_annotation"]
    assert field["type"] == "classification" and field["classes"] == sorted(SMALL_CLASSES)
    assert field["existing_field"]  # the staging field is an existing Classification field: its labels go along


def test_the_staging_field_belongs_to_the_run(make_small_dataset):
    ds = make_small_dataset(n_train=15, n_val=5)
    na.audit(ds, "ground_truth", key="a", **FAST)
    assert staging_field(ds, "a") == "a_annotation"
    na.delete_audit(ds, "a")
    assert "a_annotation" not in ds.get_field_schema()
    with pytest.raises(na.NoiseAuditError, match="No noise audit with key 'a'"):
        na.annotate_suspects(ds, "a", top_k=3, backend="cvat")


def test_an_unreachable_tool_registers_nothing(audited):
    ds = audited
    before = {f: raw(ds, f) for f in ("ground_truth_noisy", f"{KEY}_suggested_label", f"{KEY}_review")}
    with pytest.raises(Exception):
        na.annotate_suspects(ds, KEY, top_k=3, backend="labelstudio", url="http://127.0.0.1:9", api_key="x" * 40)
    assert ds.list_annotation_runs() == []
    assert {f: raw(ds, f) for f in before} == before


@pytest.mark.parametrize("call, message", [
    (lambda ds: na.annotate_suspects(ds, KEY, top_k=0, backend="cvat"), "top_k must be a positive integer"),
    (lambda ds: na.annotate_suspects(ds, KEY, top_k=3, anno_key="no spaces", backend="cvat"), "anno_key must be"),
    (lambda ds: na.load_annotations(ds, "never_sent"), "No annotation run 'never_sent'"),
])
def test_bad_annotation_input_is_one_error(audited, call, message):
    with pytest.raises(na.NoiseAuditError, match=message):
        call(audited)
    assert audited.list_annotation_runs() == []


# --- a real Label Studio --------------------------------------------------------


def label_studio_executable():
    for candidate in (os.environ.get("NOISE_AUDIT_LABEL_STUDIO"), str(ROOT / ".data" / "lsvenv" / "bin" / "label-studio"),
                      shutil.which("label-studio")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """A Label Studio server on a loopback port, with a legacy API token (FiftyOne's client needs one)."""
    exe = label_studio_executable()
    if exe is None:
        reason = "label-studio not found (.ci/run installs it into .data/lsvenv)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    pytest.importorskip("label_studio_sdk")
    base = tmp_path_factory.mktemp("label-studio")
    token, port = secrets.token_hex(20), _free_port()
    env = dict(os.environ, LABEL_STUDIO_BASE_DATA_DIR=str(base), LABEL_STUDIO_USERNAME="admin@example.com",
               LABEL_STUDIO_PASSWORD=secrets.token_hex(8), LABEL_STUDIO_USER_TOKEN=token,
               LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true", LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true")
    log = open(base / "server.log", "w")
    proc = subprocess.Popen([exe, "start", "--no-browser", "--port", str(port), "--host", "127.0.0.1"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # the first start migrates its database: minutes on a busy machine
            try:
                req = urllib.request.Request(f"{url}/api/version", headers={"Authorization": f"Token {token}"})
                urllib.request.urlopen(req, timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"Label Studio exited: see {log.name}")
                time.sleep(1)
        else:
            pytest.fail(f"Label Studio did not start within 600 s: see {log.name}")
        yield url, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.slow
def test_a_label_studio_round_trip_fills_the_review_and_nothing_else(audited, label_studio):
    import requests

    url, token = label_studio
    headers = {"Authorization": f"Token {token}"}
    ds = audited
    ds._sample_collection.update_many({}, {"$set": {f"{KEY}_review": None}})
    before = {f: raw(ds, f) for f in ("ground_truth", "ground_truth_noisy", f"{KEY}_suggested_label")}
    results = na.annotate_suspects(ds, KEY, top_k=5, backend="labelstudio", url=url, api_key=token)
    assert len(results.uploaded_tasks) == 5
    sent = ds.load_annotation_view(results.key).values("id")
    assert sent == ds.sort_by(f"{KEY}_corruption_score", reverse=True).limit(5).values("id")
    given = dict(zip(*ds.values(["id", "ground_truth_noisy.label"])))
    suggested = dict(zip(*ds.values(["id", f"{KEY}_suggested_label.label"])))
    task_of = {sample_id: task for task, sample_id in results.uploaded_tasks.items()}

    # the suggestion is pre-filled, as a prediction of each task
    for sample_id, task in task_of.items():
        body = requests.get(f"{url}/api/tasks/{task}", headers=headers, timeout=30).json()
        choices = [r["value"]["choices"] for p in body.get("predictions", []) for r in p["result"]]
        assert choices == [[suggested[sample_id]]]

    keep, accept, relabel = sent[:3]
    other = next(c for c in SMALL_CLASSES if c not in (given[relabel], suggested[relabel]))
    for sample_id, label in ((keep, given[keep]), (accept, suggested[accept]), (relabel, other)):
        r = requests.post(f"{url}/api/tasks/{task_of[sample_id]}/annotations", headers=headers, timeout=30, json={
            "result": [{"from_name": f"{KEY}_annotation", "to_name": "image", "type": "choices",
                        "value": {"choices": [label]}}]})
        assert r.status_code == 201, r.text

    out = na.load_annotations(ds, results.key)
    got = decisions(ds, KEY)
    expected_accept = "keep" if suggested[accept] == given[accept] else "accept"
    assert {i: got[i]["decision"] for i in got} == {keep: "keep", accept: expected_accept, relabel: "relabel"}
    assert got[relabel]["label"] == other and got[keep]["reviewer"] == f"labelstudio:{results.key}"
    assert out["annotated"] == 3 and out["not_annotated"] == 2
    assert {f: raw(ds, f) for f in before} == before  # the labels and the suggestions are untouched
    np.testing.assert_array_equal(sorted(got), sorted([keep, accept, relabel]))
