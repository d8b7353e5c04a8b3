"""Issue 25.2: a full disk or a read-only folder during a write.

Each fault is real and hits the real component in its own process:

- **A full disk** is a file-size limit (``RLIMIT_FSIZE``) set by the child
  process itself before it imports anything, with ``SIGXFSZ`` ignored, so
  the write that crosses it fails with ``OSError(EFBIG)`` ("File too
  large"), as a full disk fails it with ``ENOSPC``. The limit sits between
  the sizes of the files the component writes, so the fault falls in the
  middle of the intended file; the child's own error or warning, naming
  ``[Errno 27] File too large``, shows that it did.
- **A read-only cache folder**: ``chmod 555``. Root ignores file
  permissions, so when the tests run as root the child runs without the
  capabilities that let it (``setpriv --bounding-set=-dac_override,
  -dac_read_search,-fowner``); a probe in the same setting must fail to
  create a file there first, or the test skips.
"""

import base64
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import noise_audit as na
from noise_audit.core.backbones import get_backbone
from noise_audit.core.feature_cache import FeatureCache, file_keys
from noise_audit.core.features import extract_features
from noise_audit.core.images import stat_files

from audit_state import FAST, child_env
from conftest import same_features

EFBIG = "[Errno 27] File too large"
CLI_FAST = ["--backbone", "resnet18", "--weights", "random", "--image-size", "32", "--folds", "2"]


def run_child(code, *args, file_limit=None, drop_root_powers=False, env=None):
    """Runs ``code`` in a fresh interpreter, optionally under a file-size limit (bytes) or without
    root's power over file permissions."""
    prologue = ""
    if file_limit is not None:
        prologue = ("import resource, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
                    f"resource.setrlimit(resource.RLIMIT_FSIZE, ({file_limit}, {file_limit}))\n")
    command = [sys.executable, "-c", prologue + code, *args]
    if drop_root_powers and os.geteuid() == 0:
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--", *command]
    return subprocess.run(command, capture_output=True, text=True, env=env or child_env(), timeout=900)


CLI = "import sys\nfrom noise_audit.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def _warning_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


@pytest.fixture
def audited_dataset(make_small_dataset):
    ds = make_small_dataset(n_train=15, n_val=5)  # 60 images
    ds.persistent = True  # the child processes load it by name
    return ds


EXTRACT = """
import base64, io, sys
import numpy as np
from noise_audit.core.backbones import get_backbone
from noise_audit.core.features import extract_features
backbone = get_backbone("resnet18", "random", image_size=32, seed=0)
feats, n_computed = extract_features(sys.argv[2:], backbone, cache_dir=sys.argv[1], progress=False, num_workers=0)
buf = io.BytesIO()
np.save(buf, feats)
print("FEATURES", n_computed, base64.b64encode(buf.getvalue()).decode())
"""


def test_a_full_disk_while_features_are_cached_publishes_no_partial_row(audited_dataset, tmp_path):
    """The feature stage (``extract_features``, what an audit runs) in a child that decodes in its own
    process: torch's decoding workers pass batches through shared-memory files, which the size
    limit would fail first (as a full ``/dev/shm`` does)."""
    cache_dir = tmp_path / "cache"
    paths = audited_dataset.values("filepath")
    backbone = get_backbone("resnet18", "random", image_size=32, seed=0)
    first, _ = extract_features(paths[:30], backbone, cache_dir=str(cache_dir), progress=False, num_workers=0)
    segment_dir = cache_dir / "features" / backbone.cache_id
    before = sorted(os.listdir(segment_dir))
    assert len(before) == 2  # one segment: features and keys

    # files cannot grow past 16 KiB: the other 30 rows' features (30 x 512 float32 = 61,440 bytes)
    # cross the limit mid-file; their keys (1,328 bytes) would not
    proc = run_child(EXTRACT, str(cache_dir), *paths, file_limit=16 << 10)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [warning] = [line for line in proc.stderr.splitlines() if "cache" in line]
    assert warning.startswith(f"feature cache {segment_dir} cannot be used (OSError: {EFBIG})"), warning
    n_computed, data = proc.stdout.split("FEATURES", 1)[1].split()
    returned = np.load(io.BytesIO(base64.b64decode(data)))
    fresh, _ = extract_features(paths, backbone, cache_dir=False, progress=False, num_workers=0)
    assert int(n_computed) == 30 and same_features(returned, fresh)  # the caller still gets every row

    # nothing of the failed write is visible: the old segment, no temporary file
    assert sorted(os.listdir(segment_dir)) == before
    keys = file_keys(paths, stat_files(paths)[0])
    found, rows = FeatureCache(str(cache_dir), backbone.cache_id).load(keys)
    assert found.tolist() == [True] * 30 + [False] * 30
    assert same_features(rows[:30], first)

    # the next run recomputes exactly the missing rows, and caches them
    feats, n_computed = extract_features(paths, backbone, cache_dir=str(cache_dir), progress=False, num_workers=0)
    assert n_computed == 30 and same_features(feats, fresh)
    assert extract_features(paths, backbone, cache_dir=str(cache_dir), progress=False, num_workers=0)[1] == 0


def test_a_full_disk_while_a_report_is_written_leaves_the_previous_report_whole(audited_dataset, tmp_path):
    ds = audited_dataset
    na.audit(ds, "ground_truth", key="a", **FAST)
    na.audit(ds, "ground_truth", key="b", **FAST)
    out = tmp_path / "report"
    na.report(ds, "a", out, n_explained=0, progress=False)
    names = sorted(os.listdir(out))
    old = {name: (out / name).read_bytes() for name in names}
    small = max(len(old["summary.json"]), len(old["summary.md"]))
    assert len(old["report.html"]) > 3 * small  # a limit between them fails the page only, after the other two

    code = "import sys\nimport fiftyone as fo\nimport noise_audit as na\n" \
           "na.report(fo.load_dataset(sys.argv[1]), 'b', sys.argv[2], n_explained=0, progress=False)\n"
    proc = run_child(code, ds.name, str(out), file_limit=2 * small)
    assert proc.returncode != 0 and EFBIG in proc.stderr, proc.stderr[-3000:]
    assert "_replace_together" in proc.stderr  # failed while writing the new files, not before
    assert sorted(os.listdir(out)) == names  # no temporary file left
    assert {name: (out / name).read_bytes() for name in names} == old  # the previous report, whole

    # without the limit, the new report replaces all three
    na.report(ds, "b", out, n_explained=0, progress=False)
    assert json.loads((out / "summary.json").read_text())["overview"]["key"] == "b"
    assert "/ b" in (out / "summary.md").read_text().splitlines()[0]
    assert "Noise audit: " in (out / "report.html").read_text() and "/ b</title>" in (out / "report.html").read_text()


def _read_only(folder):
    """Makes ``folder`` read-only for a child of :func:`run_child` with ``drop_root_powers``; skips if it cannot."""
    for root, dirs, _ in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o555)
    os.chmod(folder, 0o555)
    if os.geteuid() == 0 and not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: no way to make a folder read-only for the audit")
    probe = run_child("import sys\nopen(sys.argv[1] + '/probe', 'w')\n", str(folder), drop_root_powers=True)
    if probe.returncode == 0 or "PermissionError" not in probe.stderr:
        pytest.skip(f"could not make {folder} read-only for a child process: {probe.stderr[-500:]}")


def test_a_read_only_cache_folder_is_one_warning_and_the_audit_runs(audited_dataset, tmp_path):
    ds = audited_dataset
    paths = ds.values("filepath")
    backbone = get_backbone("resnet18", "random", image_size=32, seed=0)
    cache_dir = tmp_path / "cache"
    extract_features(paths[:30], backbone, cache_dir=str(cache_dir), progress=False, num_workers=0)
    segment_dir = cache_dir / "features" / backbone.cache_id
    before = sorted(os.listdir(segment_dir))
    empty = tmp_path / "empty"
    empty.mkdir()
    try:
        _read_only(cache_dir)
        _read_only(empty)
        # the command line, with half of the features cached in the read-only folder
        proc = run_child(CLI, "audit", "--dataset", ds.name, *CLI_FAST, drop_root_powers=True,
                         env=child_env(NOISE_AUDIT_CACHE=str(cache_dir)))
        assert proc.returncode == 0, proc.stderr[-3000:]
        [warning] = _warning_lines(proc.stderr)
        assert f"warning: feature cache {segment_dir} cannot be used (PermissionError: [Errno 13]" in warning
        assert sorted(os.listdir(segment_dir)) == before
        ds.reload()
        assert len(ds.exists("noise_audit_corruption_score")) == 60
        # the library, with an empty read-only cache root: one logged warning, no folder made
        code = ("import sys\nimport fiftyone as fo\nimport noise_audit as na\n"
                "na.audit(fo.load_dataset(sys.argv[1]), key='lib', cache_dir=sys.argv[2], backbone='resnet18', "
                "weights='random', image_size=32, folds=2, progress=False)\n")
        proc = run_child(code, ds.name, str(empty), drop_root_powers=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = [line for line in proc.stderr.splitlines() if "cache" in line]
        assert len(lines) == 1 and lines[0].startswith(f"feature cache {empty}") and "PermissionError" in lines[0]
        assert os.listdir(empty) == []
        ds.reload()
        assert np.isfinite(ds.values("lib_corruption_score")).all()
    finally:
        for root, dirs, _ in os.walk(tmp_path):
            os.chmod(root, 0o755)
