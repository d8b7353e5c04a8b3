"""The one-pass field writer stores exactly what FiftyOne's set_values stores."""

import numpy as np
import fiftyone as fo

from noise_audit.store.fields import classification_doc, declare_field, write_columns

from conftest import unique_name


def test_write_columns_stores_what_set_values_stores():
    ds = fo.Dataset(unique_name())
    try:
        ds.add_samples([fo.Sample(filepath=f"/nowhere/{i}.jpg") for i in range(30)], progress=False)
        ids = ds.values("id")
        sample = ds.first()  # loaded in memory before the write: must see the new values
        rng = np.random.default_rng(0)
        floats, flags, logits = rng.normal(size=30), rng.random(30) > 0.5, rng.normal(size=(30, 3))
        labels = [["a", "b", "c"][int(v.argmax())] for v in logits]
        for prefix in ("mine", "ref"):
            declare_field(ds, f"{prefix}_f", fo.FloatField)
            declare_field(ds, f"{prefix}_b", fo.BooleanField)
            declare_field(ds, f"{prefix}_p", fo.EmbeddedDocumentField, fo.Classification)
        subset = ids[5:25][::-1]  # some samples, in another order
        pick = [ids.index(i) for i in subset]
        write_columns(ds, subset, {
            "mine_f": floats[pick].tolist(), "mine_b": flags[pick].tolist(),
            "mine_p": [classification_doc(labels[i], logits[i].max(), logits[i]) for i in pick]})
        ds.set_values("ref_f", dict(zip(subset, floats[pick].tolist())), key_field="id")
        ds.set_values("ref_b", dict(zip(subset, flags[pick].tolist())), key_field="id")
        ds.set_values("ref_p", {ids[i]: fo.Classification(label=labels[i], confidence=float(logits[i].max()),
                                                           logits=logits[i]) for i in pick}, key_field="id")
        assert ds.values("mine_f") == ds.values("ref_f") and ds.count("mine_f") == 20
        assert ds.values("mine_b") == ds.values("ref_b")
        for mine, ref in zip(ds.values("mine_p"), ds.values("ref_p")):
            if ref is None:
                assert mine is None
                continue
            assert (mine.label, mine.confidence) == (ref.label, ref.confidence)
            np.testing.assert_array_equal(mine.logits, ref.logits)
        assert ds[subset[0]].mine_f == floats[pick[0]]
        assert sample.id != subset[0] or sample.mine_f == floats[pick[0]]
        in_memory = ds[subset[-1]]
        write_columns(ds, [subset[-1]], {"mine_f": [42.0]})
        assert in_memory.mine_f == 42.0  # samples loaded in memory are refreshed
    finally:
        ds.delete()
