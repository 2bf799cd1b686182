"""Krippendorff's alpha (nominal) from the coincidence matrix: the textbook example, and the reference package."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from tunelake.audit.agreement import coincidences

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: four observers, twelve units,
# values 1-5, None where an observer gave none. Nominal alpha = 0.743.
KRIPPENDORFF_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def _votes(data: list[list], category: str = "all") -> pa.Table:
    """Reliability data (observers x units) as vote rows; a missing value is no row."""
    rows = [(category, unit, str(v)) for observer in data for unit, v in enumerate(observer) if v is not None]
    category_, unit, value = zip(*rows, strict=True)
    return pa.table({"category": list(category_), "unit": list(unit), "value": list(value)})


def test_krippendorffs_worked_example_gives_0_743():
    con = duckdb.connect()
    con.register("votes", _votes(KRIPPENDORFF_2011))
    found = coincidences(con, "votes")["all"]
    assert found.values == ("1", "2", "3", "4", "5")
    # Unit 12 has one value: not pairable. The value totals n_c and n = 40 are the paper's.
    assert found.units == 11
    assert found.matrix.sum(axis=1).tolist() == pytest.approx([9, 13, 10, 5, 3])
    # His coincidence matrix, row 1: 7, 4/3, 1/3, 1/3, 0 (o_11: 3 from unit 1, 2 from unit 8, 2 from unit 11).
    assert found.matrix[0].tolist() == pytest.approx([7, 4 / 3, 1 / 3, 1 / 3, 0])
    assert found.matrix[1, 1] == pytest.approx(10) and found.matrix[4, 4] == pytest.approx(3)
    # D_o sums 8 disagreeing coincidences (units 2, 6, 8): alpha = 1 - 39 * 8 / (40^2 - sum n_c^2).
    assert found.alpha() == pytest.approx(1 - 39 * 8 / (1600 - (81 + 169 + 100 + 25 + 9)))
    assert round(found.alpha(), 3) == 0.743
    assert found.percent_agreement() == pytest.approx(32 / 40)


def test_categories_are_separate_and_pool_by_adding():
    con = duckdb.connect()
    half = [row[:6] for row in KRIPPENDORFF_2011], [row[6:] for row in KRIPPENDORFF_2011]
    con.register("votes", pa.concat_tables([_votes(half[0], "first"), _votes(half[1], "second")]))
    found = coincidences(con, "votes", ("1", "2", "3", "4", "5"))
    assert found["first"].units == 6 and found["second"].units == 5
    assert (found["first"] + found["second"]).alpha() == pytest.approx(0.743421, abs=1e-6)


def test_alpha_is_undefined_without_variation():
    con = duckdb.connect()
    con.register("votes", _votes([[1, 1, 1], [1, 1, 1]]))
    found = coincidences(con, "votes")["all"]
    assert found.alpha() is None and found.percent_agreement() == 1.0


def test_matches_the_krippendorff_package_on_random_data_with_gaps():
    krippendorff = pytest.importorskip("krippendorff")
    rng = np.random.default_rng(0)
    for _ in range(5):
        truth = rng.integers(0, 3, size=60)
        data = np.where(rng.random((5, 60)) < 0.7, truth, rng.integers(0, 3, size=(5, 60))).astype(float)
        data[rng.random(data.shape) < 0.3] = np.nan
        con = duckdb.connect()
        rows = [[None if np.isnan(v) else int(v) for v in observer] for observer in data]
        con.register("votes", _votes(rows))
        ours = coincidences(con, "votes")["all"].alpha()
        assert ours == pytest.approx(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))
