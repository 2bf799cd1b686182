"""`tunelake leakage`: prompts that sit in two splits of the published gold, or in train beside a frozen eval set.

An independent check of what the build promises, over what it published: every gold table's prompts (as the
splits see them: the leading system turn and first user turn) and every frozen set's, each with its place (a
gold table, or a frozen set) and split. A leak is one prompt, or two near-identical prompts (MinHash LSH,
verified by exact Jaccard), held in two different splits.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tunelake import tables
from tunelake.lake import Lake
from tunelake.silver import lsh
from tunelake.silver.lsh import MinHashConfig
from tunelake.silver.prompt_groups import gold_prompt_texts, prompt_column


@dataclass
class Leak:
    kind: str  # exact | near
    jaccard: float
    prompt_ids: tuple[str, str]  # the same twice for an exact leak
    places: list[str]  # `place (split)` of every holder
    text: str  # one prompt's text, shortened


def find_leaks(lake: Lake, config: MinHashConfig, memory_limit: str = "512MB") -> tuple[list[Leak], int]:
    """Every leak in the published gold and frozen sets, and how many distinct prompts were checked."""
    with tempfile.TemporaryDirectory() as spill:
        con = duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": spill})
        bands = lsh.band_names(config)
        columns = ["prompt_id varchar", "place varchar", "split varchar", "text varchar", f"{lsh.SHINGLES} ubigint[]"]
        con.execute(f"create table places ({', '.join(columns)}, {', '.join(f'{b} ubigint' for b in bands)})")
        for batch in _places(lake, config):
            con.register("batch", batch)
            con.execute("insert into places select * from batch")
            con.unregister("batch")
        con.execute(
            f"""
            create table prompts as
            select prompt_id, {", ".join(f"any_value({c}) as {c}" for c in ["text", lsh.SHINGLES, *bands])},
                   list_sort(list(distinct place || ' (' || split || ')')) as places,
                   count(distinct split) as splits, row_number() over (order by prompt_id) - 1 as _ord
            from places group by prompt_id
            """
        )
        prompts = con.sql("select count(*) from prompts").fetchall()[0][0]
        exact = con.sql("select prompt_id, places, text from prompts where splits > 1 order by prompt_id").fetchall()
        leaks = [Leak("exact", 1.0, (p, p), places, _short(text)) for p, places, text in exact]
        nodes = np.arange(prompts)
        with lsh.ShingleSets(con, "prompts", nodes, spill) as sets:
            edges, similarity = lsh.verified_edges(con, "prompts", nodes, config, [sets])
        con.register("edges", pa.table({"a": nodes[edges[:, 0]], "b": nodes[edges[:, 1]], "jaccard": similarity}))
        near = con.sql(
            """
            select a.prompt_id, b.prompt_id, e.jaccard, list_distinct(list_concat(a.places, b.places)), a.text
            from edges e join prompts a on a._ord = e.a join prompts b on b._ord = e.b
            where (select count(distinct split) from places p where p.prompt_id in (a.prompt_id, b.prompt_id)) > 1
            order by a.prompt_id, b.prompt_id
            """
        ).fetchall()
        leaks += [Leak("near", j, (a, b), sorted(places), _short(text)) for a, b, j, places, text in near]
        con.close()
    return leaks, prompts


def _places(lake: Lake, config: MinHashConfig):
    """Batches of PLACES: every published gold table's records, file by file, then every frozen set's."""
    for regime, split, table in tables.gold_tables():
        if not lake.exists(table):
            continue
        for file in lake.files(table):
            rows = pq.read_table(file, columns=["prompt_id", prompt_column(regime)])
            yield _batch(rows["prompt_id"], table, split, gold_prompt_texts(rows, regime), config)
    if lake.exists(tables.FROZEN_NAME):
        frozen = lake.read(tables.FROZEN_NAME, ["name", "split", "prompt_id", "prompt_text"])
        places = pc.binary_join_element_wise("frozen:", frozen["name"], "")
        yield _batch(frozen["prompt_id"], places, frozen["split"], frozen["prompt_text"], config)


def _batch(prompt_ids, place, split, texts, config: MinHashConfig) -> pa.Table:
    """Rows of `places`: prompt_id, place (a gold table, or `frozen:<name>`), split, text, shingle set and band
    keys; `place` and `split` are arrays or one value for all."""
    texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    n = len(texts)
    place, split = (
        v if isinstance(v, pa.Array | pa.ChunkedArray) else pa.array([v] * n, pa.string()) for v in (place, split)
    )
    columns = {"prompt_id": prompt_ids, "place": place, "split": split, "text": texts}
    return pa.table({**columns, **lsh.shingle_columns(texts, config)})


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
