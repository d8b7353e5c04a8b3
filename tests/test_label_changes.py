"""Issue 25.3: labels that change under an audit, and after it.

An audit's scores describe the labels it read. A command-line audit runs in
its own process and is paused inside its write (``NOISE_AUDIT_FAULT_AT=
declared:pause:FILE``: after it read the labels, before it stored anything)
while this process edits three of its labels, as an annotator in the App
would. The run's config holds the fingerprint of the labels it read; the
audit's own stderr, ``na.evaluate`` (one logged warning), the ``evaluate``
command (one ``warning:`` line), the report (its Overview, in all three
files) and the panel's header then say that the labels changed. Put back
as they were, every warning goes away.
"""

import hashlib
import json
import logging
import subprocess
import sys
import time

import fiftyone as fo
import pytest

import noise_audit as na
from noise_audit.app import views
from noise_audit.store.labels import labels_changed
from noise_audit.store.writes import FAULT_ENV

from audit_state import child_env
from test_hostile_names import Parsed

AUDIT = ["--backbone", "resnet18", "--weights", "random", "--image-size", "32", "--folds", "2"]
LABELS = "ground_truth_noisy"


def spec_fingerprint(ids, labels):
    """The fingerprint as docs/README promise it: SHA-1 over one JSON line ``[id, label]`` per sample."""
    h = hashlib.sha1()
    for i, label in zip(ids, labels):
        h.update((json.dumps([i, label], ensure_ascii=False) + "\n").encode())
    return h.hexdigest()


def _warnings(stderr):
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


@pytest.fixture
def noisy(make_small_dataset):
    ds = make_small_dataset(n_train=15, n_val=5)
    ds.persistent = True  # audited from another process
    na.inject_label_noise(ds.match_tags("train"), fraction=0.2, seed=0)
    return ds


def _edit(ds, n, offset=0):
    """Gives ``n`` audited samples another class, as an annotator would; returns their ids."""
    view = ds.sort_by("filepath").skip(offset).limit(n)
    classes = sorted(ds.distinct(f"{LABELS}.label"))
    for sample in view.iter_samples(autosave=True):
        label = sample[LABELS].label
        sample[LABELS] = fo.Classification(label=classes[(classes.index(label) + 1) % len(classes)])
    return view.values("id")


def test_labels_edited_while_the_audit_runs_are_reported_everywhere(noisy, tmp_path, capsys, caplog):
    ds = noisy
    ids, original = ds.values(["id", f"{LABELS}.label"])
    marker = tmp_path / "paused"
    proc = subprocess.Popen([sys.executable, "-m", "noise_audit.cli", "audit", "--dataset", ds.name,
                             "--label-field", LABELS, *AUDIT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=child_env(**{FAULT_ENV: f"declared:pause:{marker}"}))
    try:
        deadline = time.monotonic() + 600
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the audit never reached its write"
            time.sleep(0.1)
        edited = _edit(ds, 3)  # the audit read the labels already; it is paused before storing anything
        marker.unlink()
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    [line] = _warnings(err)  # the audit itself noticed
    assert "changed since audit 'noise_audit' read them (3 of 60 audited samples have another label)" in line

    ds.reload()
    config, _ = na.load_audit(ds, "noise_audit")
    assert config.labels_fingerprint == spec_fingerprint(ids, original)  # what it read, not what is there now
    assert spec_fingerprint(*ds.values(["id", f"{LABELS}.label"])) != config.labels_fingerprint
    changed = labels_changed(ds, "noise_audit")
    assert (changed["n_changed"], changed["n_missing"]) == (3, 0)

    # the library: one logged warning, and the result says it
    with caplog.at_level(logging.WARNING, logger="noise_audit"):
        m = na.evaluate(ds, "noise_audit_corruption_score", "label_flipped")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("noise_audit")] == [changed["message"]]
    assert m["labels_changed"]["n_changed"] == 3

    # another edit: the evaluate command prints one warning line, its tables on stdout as before
    edited += _edit(ds, 1, offset=10)
    from noise_audit.cli import main

    capsys.readouterr()  # drop what came before: a main() earlier in this process left its warning handler on
    code = main(["evaluate", "--dataset", ds.name, "--truth-field", "label_flipped"])
    captured = capsys.readouterr()
    assert code == 0 and "corruption_score" in captured.out
    [line] = _warnings(captured.err)
    assert "(4 of 60 audited samples have another label)" in line

    # the report's Overview, in all three files
    summary = na.report(ds, "noise_audit", tmp_path / "report", n_explained=0, progress=False)
    message = summary["overview"]["labels_changed"]
    assert "4 of 60" in message
    raw = (tmp_path / "report" / "report.html").read_text()
    assert raw.count('class="warn"') == 1 and Parsed(raw).shows(f"Warning: {message}")
    assert raw.index('<section id="overview">') < raw.index('class="warn"') < raw.index('<section id="data">')
    assert "> **Warning:** the labels in " in (tmp_path / "report" / "summary.md").read_text()
    # the panel's header
    s = views.summary(ds, "noise_audit")
    assert s["labels_changed"] == message
    assert views.summary_markdown(s).startswith("**Warning:** the labels in ")

    # a deleted sample counts as a lost label
    ds.delete_samples(ds.select(edited[-1]))
    assert labels_changed(ds, "noise_audit")["n_missing"] == 1


def test_labels_put_back_or_never_changed_raise_no_warning(noisy, tmp_path, capsys):
    ds = noisy
    na.audit(ds, LABELS, progress=False, backbone="resnet18", weights="random", image_size=32, folds=2)
    before = ds.values(f"{LABELS}.label")
    edited = _edit(ds, 2)
    assert labels_changed(ds, "noise_audit")["n_changed"] == 2
    for sample_id, label in zip(ds.values("id"), before):  # put back, as they were
        if sample_id in edited:
            sample = ds[sample_id]
            sample[LABELS] = fo.Classification(label=label)
            sample.save()
    assert labels_changed(ds, "noise_audit") is None
    from noise_audit.cli import main

    assert main(["evaluate", "--dataset", ds.name, "--truth-field", "label_flipped"]) == 0
    assert not _warnings(capsys.readouterr().err)
    summary = na.report(ds, "noise_audit", tmp_path / "r", n_explained=0, progress=False)
    assert summary["overview"]["labels_changed"] is None
    assert 'class="warn"' not in (tmp_path / "r" / "report.html").read_text()
    assert "Warning" not in views.summary_markdown(views.summary(ds, "noise_audit"))
