"""What a user can observe of a dataset, to compare it before and after a write.

:func:`state` reads the stored documents themselves (every key of every
sample, declared or not), the schema with each field's info, every run with
its config and results, and what no run links to (run documents of the
dataset, result files of ours): the things an interrupted write could leave.
Values that differ on every write by design are left out: timestamps
(``last_modified_at``, timings, how many features were computed rather than read from the cache), the ids of embedded label documents, the
write's token and writer.
"""

import os
import subprocess
import sys

import fiftyone.core.odm as foo

from noise_audit.store.ownership import TMP, OLD

# A small, fast audit: cached 32 px features of a random ResNet-18 (512 features).
FAST = dict(image_size=32, backbone="resnet18", weights="random", folds=2, progress=False)
VOLATILE_INFO = ("token", "writer", "since")


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k != "_id"}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def state(ds):
    ds.reload()
    db = foo.get_db_conn()
    schema = {}
    for name, f in ds.get_field_schema(flat=True).items():  # flat: attributes declared on boxes too
        info = {k: v for k, v in (f.info or {}).items() if k not in VOLATILE_INFO}
        schema[name] = (type(f).__name__, getattr(getattr(f, "document_type", None), "__name__", None), info)
    samples = []
    for d in ds._sample_collection.find({}, sort=[("_id", 1)]):
        d.pop("last_modified_at", None)
        samples.append({"_id": d.pop("_id"), **_strip(d)})
    runs = {}
    for key in ds.list_runs():
        cfg = {k: v for k, v in ds.get_run_info(key).config.serialize().items() if k not in ("timings", "token")}
        res = ds.load_run_results(key, cache=False, load_view=False)
        # features_computed counts images the backbone ran on (not from the cache): bookkeeping like timings
        runs[key] = (cfg, None if res is None else {k: v for k, v in res.serialize().items()
                                                    if k not in ("cls", "features_computed")})
    linked = [ds._doc.runs[k].id for k in ds.list_runs()]
    stray_docs = db.runs.count_documents({"_dataset_id": ds._doc.id, "_id": {"$nin": linked}})
    referenced = {d.get("results") for d in db.runs.find({}, {"results": 1})}
    stray_files = [f["_id"] for f in db.fs.files.find({"noise_audit_token": {"$exists": True}}, {"_id": 1})
                   if f["_id"] not in referenced]
    return {"schema": schema, "samples": samples, "runs": runs, "stray_run_docs": stray_docs,
            "stray_result_files": len(stray_files)}


def temporary(name):
    return name.startswith((TMP + "_", OLD + "_"))


def assert_same(a, b):
    """Equal states, with a readable difference when not."""
    assert a["schema"] == b["schema"], (sorted(set(a["schema"]) ^ set(b["schema"])),
                                        [n for n in a["schema"] if a["schema"][n] != b["schema"].get(n)])
    assert a["runs"].keys() == b["runs"].keys()
    for k in a["runs"]:
        assert a["runs"][k][0] == b["runs"][k][0], k
        assert a["runs"][k][1] == b["runs"][k][1], k
    assert len(a["samples"]) == len(b["samples"])
    for x, y in zip(a["samples"], b["samples"]):
        assert x == y, (set(x) ^ set(y), [k for k in x if x.get(k) != y.get(k)])
    assert (a["stray_run_docs"], a["stray_result_files"]) == (b["stray_run_docs"], b["stray_result_files"])


def child_env(**extra):
    env = {k: v for k, v in os.environ.items()}
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def python(code, *args, env=None, timeout=600):
    """Runs ``code`` in a fresh interpreter (same database as the tests)."""
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env or child_env(), timeout=timeout)
