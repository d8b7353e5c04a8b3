"""Issue 13.3: audits in several processes at once.

Two processes audit one dataset under different keys at the same moment, ten
times (a file barrier starts each pair together), and every audit completes
with fields equal to those of an audit run alone. Commands started together
with no database running yet, in a fresh ``FIFTYONE_DATABASE_DIR``, all
complete, and so does one started while the previous command's ``mongod``
is still shutting down; the data is in that directory.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import noise_audit as na
from noise_audit.store.ownership import audit_fields

from audit_state import FAST, child_env

TRIALS = 10
WORKER = """
import json, sys, time, traceback
from pathlib import Path
import fiftyone as fo
import noise_audit as na

name, me, other, trials, sync = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5])
kwargs = json.loads(sys.argv[6])
ds = fo.load_dataset(name)
for t in range(trials):
    (sync / f"{t}.{me}").touch()
    deadline = time.time() + 300
    while not (sync / f"{t}.{other}").exists() and time.time() < deadline:
        time.sleep(0.005)
    try:
        na.audit(ds, "ground_truth", key=f"{me}{t}", **kwargs)
        print(json.dumps({"trial": t, "ok": True}), flush=True)
    except Exception as e:
        print(json.dumps({"trial": t, "ok": False, "error": f"{type(e).__name__}: {e}"}), flush=True)
"""


def _label(doc):
    """A stored Classification's contents, without its id (each write makes new ones)."""
    if doc is None:
        return None
    return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in doc.iter_fields() if k != "id"}


def _values(ds, key):
    fields = audit_fields(key)
    embedded = {"prediction", "suggested_label", "review", "annotation"}
    out = {n: ds.values(f) for n, f in fields.items() if n not in embedded}
    out.update({n: [_label(d) for d in ds.values(fields[n])] for n in embedded})
    return out


def test_two_processes_audit_one_dataset_at_once(make_small_dataset, tmp_path):
    ds = make_small_dataset(n_train=15, n_val=5)
    kwargs = dict(FAST, progress=False)
    na.audit(ds, "ground_truth", key="alone", **kwargs)  # also fills the feature cache
    alone = _values(ds, "alone")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, ds.name, me, other, str(TRIALS), str(tmp_path),
                               json.dumps(kwargs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=child_env())
             for me, other in (("p", "q"), ("q", "p"))]
    outs = [p.communicate(timeout=1500) for p in procs]
    results = [[json.loads(line) for line in out.splitlines() if line.startswith("{")] for out, _ in outs]
    failures = [r for rs in results for r in rs if not r["ok"]]
    assert not failures, failures
    assert [len(rs) for rs in results] == [TRIALS, TRIALS], [err[-2000:] for _, err in outs]
    ds.reload()
    assert sorted(na.list_audits(ds)) == sorted(["alone"] + [f"{p}{t}" for p in "pq" for t in range(TRIALS)])
    complete = sum(_values(ds, f"p{t}") == alone and _values(ds, f"q{t}") == alone for t in range(TRIALS))
    print(f"{complete}/{TRIALS} trials: both audits complete and equal to an audit run alone")
    assert complete == TRIALS
    assert not [f for f in ds.get_field_schema() if f.startswith("noise_audit_tmp_")]


def _fresh_env(db_dir):
    env = child_env(FIFTYONE_DATABASE_DIR=str(db_dir), FIFTYONE_DATABASE_NAME="noise_audit_fresh",
                    PYTHONFAULTHANDLER="1")  # a hung command prints where it hangs when aborted
    for name in ("FIFTYONE_PRIVATE_DATABASE_PORT", "FIFTYONE_DATABASE_URI"):
        env.pop(name, None)  # no database to inherit: each command must find or start it
    return env


def _mongods(db_dir):
    real = os.path.realpath(db_dir)
    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if (p.info["name"] or "").startswith("mongod") and "--dbpath" in cmd \
                and os.path.realpath(cmd[cmd.index("--dbpath") + 1]) == real:
            out.append(p)
    return out


WARM = """
import sys, time
from pathlib import Path
import noise_audit.cli as cli  # imported before the go: this command connects the moment it is told
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.002)
sys.exit(cli.main(sys.argv[2:]))
"""
HOLDER = """
import sys, time
from pathlib import Path
import noise_audit.store.db
noise_audit.store.db.connect()  # a client of the database until told to go
release = Path(sys.argv[1])
while not release.exists():
    time.sleep(0.01)
"""


def _start(args, env, log):
    """Starts a command writing to files: the database service a command starts inherits its
    stdout and stderr and keeps them open while it runs, so pipes would not close."""
    out, err = open(f"{log}.out", "w"), open(f"{log}.err", "w")
    proc = subprocess.Popen(args, env=env, stdout=out, stderr=err, text=True)
    proc.log = log
    return proc


def _finish(proc, timeout=300):
    """``(stdout, stderr)`` of ``proc``; a command still running after ``timeout`` is aborted
    (SIGABRT: Python prints every thread's stack) and the test fails with its output."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        proc.wait(timeout=60)
        pytest.fail(f"command {proc.args[1:]} hung:\n{Path(f'{proc.log}.err').read_text()[-6000:]}")
    return Path(f"{proc.log}.out").read_text(), Path(f"{proc.log}.err").read_text()


def test_commands_start_together_without_a_running_database(make_small_dataset, tmp_path):
    """Three processes start with no database (two imports and a client that holds it); then,
    with the database shutting down (its mongod paused by SIGSTOP just before its last client
    leaves, so the shutdown is caught every time), a third command starts and completes."""
    tree = Path(make_small_dataset(n_train=1, n_val=0).first().filepath).parents[2]  # split/class/image
    db_dir = tmp_path / "db"
    env = _fresh_env(db_dir)
    go, release = tmp_path / "go", tmp_path / "release"
    cli = [sys.executable, "-m", "noise_audit.cli"]
    imports = [_start(cli + ["import", str(tree), "--name", name, "--classes", "airplane", "frog", "--json"],
                      env, tmp_path / name) for name in ("first", "second")]
    holder = _start([sys.executable, "-c", HOLDER, str(release)], env, tmp_path / "holder")
    third = _start([sys.executable, "-c", WARM, str(go), "inject", "--dataset", "first", "--json"], env,
                   tmp_path / "third")
    paused = []
    try:
        for p, (out, err) in zip(imports, [_finish(p) for p in imports]):
            assert p.returncode == 0, err[-3000:]
            assert json.loads(out)["n_samples"] == 140
        mongods = _mongods(db_dir)
        assert len(mongods) == 1, mongods  # one database for all
        mongods[0].suspend()
        paused = mongods
        release.touch()
        _finish(holder)  # the last client leaves: the service starts shutting its mongod down
        time.sleep(1.0)
        go.touch()
        time.sleep(3.0)
        # waiting for the old database to be gone, not racing it (on a loaded machine the
        # service may already have killed the paused mongod; then the command just runs)
        assert third.poll() is None or third.returncode == 0
        if mongods[0].is_running():
            mongods[0].resume()
        paused = []
        out, err = _finish(third)
        assert third.returncode == 0, err[-3000:]
        assert json.loads(out)["num_flipped"] > 0
        assert not mongods[0].is_running()
        assert (db_dir / "WiredTiger").exists()  # the data went to the fresh directory
        listed = _start(cli[:1] + ["-c", "import fiftyone as fo, noise_audit.store.db as d; d.connect(); "
                                   "print(sorted(fo.list_datasets()))"], env, tmp_path / "list")
        out, err = _finish(listed)
        assert out.strip().splitlines()[-1] == "['first', 'second']", err[-2000:]
    finally:
        for p in paused:
            try:
                p.resume()
            except psutil.NoSuchProcess:  # killed while paused: nothing to resume
                pass
        release.touch()
        go.touch()
        for p in imports + [holder, third]:
            if p.poll() is None:
                p.kill()
        deadline = time.time() + 120  # the service stops mongod once its last client is gone
        while _mongods(db_dir) and time.time() < deadline:
            time.sleep(0.2)
    assert not _mongods(db_dir)
