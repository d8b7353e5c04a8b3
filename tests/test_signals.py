"""The table of signals: one direction and one name per signal, used everywhere."""

import numpy as np
import pytest

from noise_audit import signals
from noise_audit.store.ownership import SIGNAL_FIELDS, audit_fields


@pytest.mark.parametrize("name, low", [("average_influence", True), ("label_quality", True),
                                       ("self_influence", False), ("loss", False), ("loo_loss", False),
                                       ("corruption_score", False)])
def test_suspicion_orients_each_signal_higher_is_suspicious(name, low):
    v = np.array([0.1, 0.5, 0.9])
    got = signals.suspicion(name, v)
    assert np.array_equal(got, -v if low else v)


def test_field_direction_takes_the_longest_suffix():
    assert signals.signal_of_field("k_self_influence").name == "self_influence"
    assert signals.signal_of_field("k_influence").name == "average_influence"
    assert signals.signal_of_field("noise_audit_label_quality").name == "label_quality"
    assert signals.signal_of_field("my_score") is None
    assert not signals.higher_is_suspicious("k_influence")
    assert not signals.higher_is_suspicious("k_label_quality")
    assert signals.higher_is_suspicious("k_self_influence")
    assert signals.higher_is_suspicious("k_corruption_score")
    assert signals.higher_is_suspicious("my_score")  # not an audit signal: high = suspicious


def test_audit_fields_are_the_tables_field_signals_plus_flag_prediction_and_review():
    fields = audit_fields("k")
    assert set(fields) == {s.field for s in signals.FIELD_SIGNALS} | {"suspect", "prediction", "suggested_label",
                                                                     "review", "annotation"}
    assert set(SIGNAL_FIELDS) == set(fields)
    assert all(fields[s.field] == f"k_{s.field}" for s in signals.FIELD_SIGNALS)
    assert signals.SHOWN[0].name == "corruption_score"
    assert {s.name for s in signals.SHOWN} == {s.name for s in signals.FIELD_SIGNALS}
