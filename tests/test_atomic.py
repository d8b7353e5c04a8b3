"""Issue 13.1: an audit is written all or nothing.

A fault at every step of the write (``NOISE_AUDIT_FAULT_AT``, read by
``noise_audit.store.writes``) leaves the dataset equal to its state before the audit,
or to the complete new audit, compared on every stored sample document,
the schema with each field's info, and every run's config and results
(:func:`audit_state.state`). A process killed by SIGKILL inside the write
leaves only what is recognisably temporary, and the next audit,
``delete_audit`` or ``recover`` brings the dataset back to one of those two
states, also from half-done renames.
"""

import signal

import pytest

import noise_audit as na
from noise_audit.store.ownership import OLD, TMP
from noise_audit.store.recovery import recover
from noise_audit.store.writes import FAULT_ENV, WRITE_STEPS, InjectedFault

from audit_state import FAST, assert_same, python, state, temporary

COMMITTED = ("linked", "old_deleted")  # steps at and after the commit
OLD_AUDIT = dict(FAST, seed=0)
NEW_AUDIT = dict(FAST, seed=1)  # other folds: other label quality and scores


@pytest.fixture
def audited(make_small_dataset):
    """A dataset with two audits, ``a`` (to replace) and ``b`` (to leave alone)."""
    ds = make_small_dataset(n_train=15, n_val=5)
    na.audit(ds, "ground_truth", key="a", **OLD_AUDIT)
    na.audit(ds, "ground_truth", key="b", **OLD_AUDIT)
    return ds


def test_a_fault_at_each_step_of_an_overwrite_leaves_the_old_audit_or_the_new(audited, monkeypatch):
    ds = audited
    before = state(ds)
    na.audit(ds, "ground_truth", key="a", overwrite=True, **NEW_AUDIT)
    after = state(ds)
    assert after["samples"] != before["samples"] and after["runs"]["a"] != before["runs"]["a"]
    assert after["runs"]["b"] == before["runs"]["b"]
    for step in WRITE_STEPS:
        print("fault at", step)
        na.audit(ds, "ground_truth", key="a", overwrite=True, **OLD_AUDIT)  # back to the old audit
        assert_same(state(ds), before)
        monkeypatch.setenv(FAULT_ENV, step)
        with pytest.raises(InjectedFault):
            na.audit(ds, "ground_truth", key="a", overwrite=True, **NEW_AUDIT)
        monkeypatch.delenv(FAULT_ENV)
        assert_same(state(ds), after if step in COMMITTED else before)
        assert na.list_audits(ds) == ["a", "b"]
        config, results = na.load_audit(ds, "a")
        assert config.seed == (1 if step in COMMITTED else 0)
        assert len(results.signals["corruption_score"]) == len(ds)


def test_a_fault_at_each_step_of_a_new_audit_leaves_nothing_or_the_audit(audited, monkeypatch):
    ds = audited
    before = state(ds)
    na.audit(ds, "ground_truth", key="c", **NEW_AUDIT)
    after = state(ds)
    na.delete_audit(ds, "c")
    assert_same(state(ds), before)
    for step in WRITE_STEPS:
        print("fault at", step)
        monkeypatch.setenv(FAULT_ENV, step)
        with pytest.raises(InjectedFault):
            na.audit(ds, "ground_truth", key="c", **NEW_AUDIT)
        monkeypatch.delenv(FAULT_ENV)
        assert_same(state(ds), after if step in COMMITTED else before)
        if step in COMMITTED:
            na.delete_audit(ds, "c")
            assert_same(state(ds), before)


def _killed_audit(ds, key, step):
    """Audits ``key`` in another process that SIGKILLs itself at ``step`` of the write."""
    code = (f"import os, sys\nos.environ[{FAULT_ENV!r}] = {step + ':kill'!r}\n"
            "import fiftyone as fo\nimport noise_audit as na\n"
            f"na.audit(fo.load_dataset(sys.argv[1]), 'ground_truth', key=sys.argv[2], overwrite=True, **{NEW_AUDIT!r})\n")
    proc = python(code, ds.name, key)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


@pytest.mark.parametrize("step", WRITE_STEPS)
def test_a_process_killed_inside_the_write_leaves_only_temporary_traces(audited, step):
    ds = audited
    before = after = state(ds)
    if step in COMMITTED:  # the complete new audit, to compare with
        na.audit(ds, "ground_truth", key="a", overwrite=True, **NEW_AUDIT)
        after = state(ds)
        na.audit(ds, "ground_truth", key="a", overwrite=True, **OLD_AUDIT)
        assert_same(state(ds), before)

    _killed_audit(ds, "a", step)
    killed = state(ds)
    ds.reload()
    assert na.list_audits(ds) == ["a", "b"]
    # what differs from one of the two states is marked as a write in progress
    target = after if step in COMMITTED else before
    extra = set(killed["schema"]) - set(target["schema"])
    assert all(temporary(n) for n in extra), extra
    differing = {k for x, y in zip(killed["samples"], target["samples"]) for k in set(x) | set(y)
                 if x.get(k) != y.get(k)}
    committed_token = ds.get_run_info("a").config.token
    for name in differing - extra:
        if name not in killed["schema"]:  # the replaced audit's field, moved aside under a temporary name
            assert any(temporary(n) and n.startswith(OLD) and n.endswith(name[len("a"):]) for n in extra), name
        else:  # new values under a final name: not the linked run's
            assert not temporary(name) and ds.get_field(name).info["token"] != committed_token, name
    if step not in COMMITTED:
        assert killed["runs"] == before["runs"]  # the run is the old one until the commit

    out = recover(ds)
    if step != WRITE_STEPS[-1]:  # killed after its last step, the write left nothing to do
        assert out["finished" if step in COMMITTED else "rolled_back"] == ["a"]
    assert_same(state(ds), target)
    assert recover(ds) == {"rolled_back": [], "finished": [], "orphans": []}


def test_the_next_audit_and_delete_audit_clean_a_killed_write(audited):
    ds = audited
    before = state(ds)
    _killed_audit(ds, "a", "new_moved")
    na.audit(ds, "ground_truth", key="c", **NEW_AUDIT)  # another key: cleans, then writes
    na.delete_audit(ds, "c")
    assert_same(state(ds), before)

    _killed_audit(ds, "fresh", "new_moved")  # a new key, killed before its commit
    ds.reload()
    assert "fresh" not in na.list_audits(ds) and "fresh_corruption_score" in ds.get_field_schema()
    na.delete_audit(ds, "fresh")  # its leftovers are what there is to delete
    assert_same(state(ds), before)
    with pytest.raises(na.NoiseAuditError, match="No noise audit"):
        na.delete_audit(ds, "fresh")


def _token_of_tmp(ds):
    ds.reload()
    names = [n for n in ds.get_field_schema() if n.startswith(TMP + "_")]
    assert names
    return names[0][len(TMP) + 1:].split("_", 1)[0]


def test_recovery_from_renames_killed_half_way(audited):
    """FiftyOne renames the sample documents, then the schema; a kill can fall
    in between, with only some documents renamed. Both halves are undone."""
    ds = audited
    before = state(ds)
    coll = ds._sample_collection
    half = [d["_id"] for d in coll.find({}, {"_id": 1}).limit(len(ds) // 2)]

    # killed while moving the old audit aside: half the documents moved, schema unchanged
    _killed_audit(ds, "a", "prepared")
    token = _token_of_tmp(ds)
    coll.update_many({"_id": {"$in": half}}, {"$rename": {"a_influence": f"{OLD}_{token}_influence",
                                                          "a_suspect": f"{OLD}_{token}_suspect"}})
    assert recover(ds)["rolled_back"] == ["a"]
    assert_same(state(ds), before)

    # killed while moving the new fields in: old aside (schema saved), half the new documents renamed
    _killed_audit(ds, "a", "old_moved")
    token = _token_of_tmp(ds)
    coll.update_many({"_id": {"$in": half}}, {"$rename": {f"{TMP}_{token}_corruption_score": "a_corruption_score"}})
    assert recover(ds)["rolled_back"] == ["a"]
    assert_same(state(ds), before)
