"""Agreement between reviewers: percent agreement and Krippendorff's alpha for nominal values.

Reliability data are votes, rows (category, unit, value): a unit is one thing several reviewers judged (a
preference pair), a value one reviewer's verdict on it. Following Krippendorff (2011), "Computing Krippendorff's
Alpha-Reliability": a unit with m_u >= 2 values is pairable, and each ordered pair of its values from two different
votes, (c, k), adds 1 / (m_u - 1) to the coincidence o_ck; a unit with one value adds nothing. With the value
totals n_c = sum_k o_ck and n = sum_c n_c (the pairable values),

    alpha = 1 - D_o / D_e,   D_o = sum_{c != k} o_ck / n,   D_e = sum_{c != k} n_c n_k / (n (n - 1)),

and percent agreement is 1 - D_o = sum_c o_cc / n: the share of the pairable values' coincidences that agree.

The coincidences are summed in DuckDB from each unit's count of each value, n_uc: o_ck = sum_u n_uc (n_uk - [c = k])
/ (m_u - 1). What stays in memory is a matrix per category, whatever the number of units.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np


@dataclass
class Coincidences:
    """One category's coincidence matrix over `values`, and how many pairable units made it."""

    values: tuple[str, ...]
    matrix: np.ndarray
    units: int

    def alpha(self) -> float | None:
        """Krippendorff's alpha (nominal); None where it is undefined: fewer than two pairable values, or every
        value alike (no expected disagreement)."""
        totals = self.matrix.sum(axis=1)
        n = totals.sum()
        expected = n * n - (totals**2).sum()  # sum over c != k of n_c n_k
        if n < 2 or expected <= 0:
            return None
        observed = self.matrix.sum() - np.trace(self.matrix)
        return float(1 - (n - 1) * observed / expected)

    def percent_agreement(self) -> float | None:
        n = self.matrix.sum()
        return float(np.trace(self.matrix) / n) if n else None

    def exchanged(self, a: str, b: str) -> Coincidences:
        """The matrix with the values a and b made exchangeable: the mean of it and of it with a and b swapped.
        For a coding that names a side by the outcome (the chosen side is the majority's by construction), this
        takes the outcome out of the expected disagreement; observed agreement is unchanged."""
        order = list(range(len(self.values)))
        i, j = self.values.index(a), self.values.index(b)
        order[i], order[j] = j, i
        swapped = self.matrix[np.ix_(order, order)]
        return Coincidences(self.values, (self.matrix + swapped) / 2, self.units)

    def __add__(self, other: Coincidences) -> Coincidences:
        """The two categories' units pooled (coincidences add up over units)."""
        return Coincidences(self.values, self.matrix + other.matrix, self.units + other.units)


def coincidences(
    con: duckdb.DuckDBPyConnection, votes: str, values: tuple[str, ...] | None = None
) -> dict[str, Coincidences]:
    """Per category of the relation `votes` (columns category, unit, value; null values are no vote): its
    coincidence matrix over `values` (default: every value found, sorted), and its pairable units."""
    con.execute(
        f"""
        create or replace temp table _cells as
        with cells as (
            select category, unit, value, count(*) as n from {votes} where value is not null group by all
        )
        select *, sum(n) over (partition by category, unit) as m from cells qualify m >= 2
        """
    )
    if values is None:
        values = tuple(v for (v,) in con.sql("select distinct value from _cells order by value").fetchall())
    index = {value: i for i, value in enumerate(values)}
    units = dict(con.sql("select category, count(distinct unit) from _cells group by category").fetchall())
    found = {category: Coincidences(values, np.zeros((len(values), len(values))), n) for category, n in units.items()}
    pairs = con.sql(
        """
        select a.category, a.value, b.value, sum(a.n * (b.n - (a.value = b.value)::int) / (a.m - 1))
        from _cells a join _cells b using (category, unit)
        group by all
        """
    ).fetchall()
    for category, c, k, o in pairs:
        found[category].matrix[index[c], index[k]] = o
    con.execute("drop table _cells")
    return found
