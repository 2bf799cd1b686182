"""The preference audit: what a lake's preference pairs teach, and the signs that they teach the wrong thing.

Over silver/records' preference rows (see the README's "Preference audit" for what each figure means):
- ties: pairs kept as soft ties (`pair_label` 0.5, or `meta.pair.tie`), and pairs the build dropped as ties (the
  ledger's `tie` drops), as a share of both;
- length: the share of pairs whose chosen side is longer (words, or tokens of a local tokenizer), and the Pearson
  correlation of the length difference with the margin (`meta.pair.margin`, else score_chosen - score_rejected),
  overall, per source and per domain; ties are left out (their sides are in input order, not preferred);
- agreement: the mean of `pair_agreement`, and per category (the domain, else the source) percent agreement and
  Krippendorff's alpha (nominal, agreement.py) over the votes of `pair_reviews`, a pair with two votes or more
  being a unit; the categories with the lowest alpha;
- position: per reviewer, the share of its verdicts on judged pairs that picked the response shown first
  (`meta.pair.chosen_position`);
- margins (quantiles), pairs per prompt, and weak pairs: a side empty or whitespace, two sides alike after
  normalisation, a margin above a high quantile, a side that loops (few distinct word 3-grams).

A lake built without the silver.preference step has no pair_* columns: each pair is then one vote for its chosen
side (a tie when meta says so), by the reviewers meta names. Every figure is an aggregate in DuckDB: per pair, only
numbers and flags are kept (in a database file that spills to disk), never the texts.
"""

from __future__ import annotations

import math
import operator
import tempfile
from collections.abc import Callable
from functools import reduce
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field
from tokenizers import Tokenizer

from tunelake import tables
from tunelake.audit.agreement import Coincidences, coincidences
from tunelake.schema import Reason

VOTES = ("chosen", "rejected", "tie")  # a vote in pair_reviews, oriented to the kept record's chosen side
# The annotations silver.preference adds, and what a pair without them is taken to have: one vote, label 1.0.
PAIR_COLUMNS = {
    "pair_label": "1.0::double",
    "pair_agreement": "null::double",
    "pair_votes": "1",
    "pair_reviews": "null::varchar",
}
QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)
MEMORY = "256MB"  # DuckDB's working memory; the per-pair facts spill to the scratch folder beyond it
_UNKNOWN = "unknown"

# Where a table's files are: the build passes its staged parts, the CLI the published version's.
TableFiles = Callable[[str], list[str]]


class PreferenceAuditConfig(BaseModel):
    """When the preference audit warns, and what it calls a weak pair (see the README's "Preference audit")."""

    model_config = ConfigDict(extra="forbid")

    max_longer_skew: float = Field(
        0.1,
        gt=0,
        le=0.5,
        description="Warn when the share of pairs whose chosen side is longer is further than this from 0.5 "
        "(overall, and per source or domain where there are several).",
    )
    max_position_skew: float = Field(
        0.1,
        gt=0,
        le=0.5,
        description="Warn when the share of a reviewer's verdicts that picked the first-shown response is further "
        "than this from 0.5.",
    )
    min_pairs: int = Field(
        30,
        ge=1,
        description="A source, domain or reviewer with fewer pairs, or a category with fewer units, is not judged.",
    )
    lowest: int = Field(3, ge=0, description="How many of the categories with the lowest alpha are named.")
    extreme_margin_quantile: float = Field(
        0.99, gt=0, lt=1, description="A margin above this quantile of all margins makes a weak pair."
    )
    repetition_min_words: int = Field(20, ge=1, description="A side with fewer words is not judged as looping.")
    min_distinct_trigram_share: float = Field(
        0.6,
        gt=0,
        le=1,
        description="A side whose distinct word 3-grams (lowercased, split on whitespace) are a smaller share of its "
        "3-grams than this loops: a weak pair.",
    )
    examples: int = Field(3, ge=0, description="Record ids shown for each kind of weak pair.")


def audit_preference(files: TableFiles, config: PreferenceAuditConfig, tokenizer: Path | None = None) -> dict | None:
    """The audit of the preference records in silver/records (None when there are none); lengths in tokens of the
    tokenizer folder when one is given, else in words."""
    records = files(tables.RECORDS)
    if not records:
        return None
    with tempfile.TemporaryDirectory(prefix="tunelake-audit-") as scratch:
        database, settings = str(Path(scratch) / "audit.duckdb"), {"memory_limit": MEMORY, "temp_directory": scratch}
        con = duckdb.connect(database, config=settings)
        try:
            con.execute("set enable_progress_bar = false")
            annotated = _facts(con, records, tokenizer, config)
            pairs = con.sql("select count(*) from facts").fetchall()[0][0]
            if not pairs:
                return None
            report = _figures(con, files, config, pairs)
        finally:
            con.close()
    notes = []
    if not annotated:
        notes.append(
            "no pair_* columns (built without silver.preference): each pair counts as one vote with label 1.0"
        )
    if report["agreement"]["units"] == 0:
        notes.append("no pair has two votes or more: percent agreement and alpha are undefined")
    unit = "tokens" if tokenizer else "words"
    report = {"pairs": pairs, "length_unit": unit, "tokenizer": str(tokenizer) if tokenizer else None} | report
    report["notes"] = notes
    report["warnings"] = _warnings(report, config)
    report["summary"] = _summary(report)
    return report


def _facts(
    con: duckdb.DuckDBPyConnection, records: list[str], tokenizer: Path | None, config: PreferenceAuditConfig
) -> bool:
    """Table `facts`: one row of numbers and flags per preference record; and table `votes`: one row per vote.
    Returns whether the records carry silver.preference's annotations."""
    con.read_parquet(records).create_view("records")
    names = set(pq.read_schema(records[0]).names)
    annotated = set(PAIR_COLUMNS) <= names
    pair = ", ".join(f"{name if annotated else default} as {name}" for name, default in PAIR_COLUMNS.items())
    if tokenizer:
        encoder = Tokenizer.from_file(str(Path(tokenizer) / "tokenizer.json"))

        def token_count(texts: pa.Array) -> pa.Array:
            encoded = encoder.encode_batch(texts.to_pylist(), add_special_tokens=False)
            return pa.array([len(e.ids) for e in encoded], pa.int64())

        con.create_function("token_count", token_count, ["VARCHAR"], "BIGINT", type="arrow")
        length = "token_count({side}_text)"
    else:
        length = "len({side}_words)"
    con.execute(
        rf"""
        create table facts as
        with sides as (
            select id, source, coalesce(domain, '{_UNKNOWN}') as domain, coalesce(domain, source) as category,
                   prompt_id, meta, score_chosen, score_rejected, {pair},
                   {_text("chosen")} as chosen_text, {_text("rejected")} as rejected_text
            from records where regime = 'preference'
        ), words as (
            select *, regexp_extract_all(lower(chosen_text), '\S+') as chosen_words,
                   regexp_extract_all(lower(rejected_text), '\S+') as rejected_words
            from sides
        )
        select id, source, domain, category, prompt_id, pair_agreement, pair_votes, pair_reviews,
               coalesce(pair_label = 0.5, false) or coalesce(json_extract_string(meta, '$.pair.tie') = 'true', false)
                   as tie,
               coalesce(try_cast(json_extract_string(meta, '$.pair.margin') as double), score_chosen - score_rejected)
                   as margin,
               json_extract_string(meta, '$.pair.chosen_position') as chosen_position,
               nullif(array_to_string(from_json(json_extract(meta, '$.pair.reviewers'), '["VARCHAR"]'), ', '), '')
                   as reviewers,
               {length.format(side="chosen")} as chosen_length, {length.format(side="rejected")} as rejected_length,
               regexp_full_match(chosen_text, '\s*') or regexp_full_match(rejected_text, '\s*') as empty_side,
               {_normalised("chosen")} = {_normalised("rejected")} as identical,
               {_repeats("chosen")} or {_repeats("rejected")} as looping_side
        from words
        """,
        {"min_words": config.repetition_min_words, "min_share": config.min_distinct_trigram_share},
    )
    # A pair's votes as pair_reviews lists them, or else one vote for its chosen side by the reviewers meta names.
    con.execute(
        f"""
        create table votes as
        select id as unit, category, coalesce(v.reviewer, '{_UNKNOWN}') as reviewer, v.vote as value,
               v.picked as picked
        from (
            select id, category,
                   unnest(coalesce(
                       from_json(pair_reviews, '[{{"reviewer": "VARCHAR", "vote": "VARCHAR", "picked": "VARCHAR"}}]'),
                       [{{'reviewer': reviewers, 'vote': if(tie, 'tie', 'chosen'),
                          'picked': if(tie and chosen_position is not null, 'tie', chosen_position)}}]
                   )) as v
            from facts
        )
        where v.vote in {VOTES}
        """
    )
    return annotated


def _text(side: str) -> str:
    """SQL: the text of one side's messages (content, tool calls and reasoning), joined by newlines."""
    parts = "coalesce(m.content, '') || coalesce(m.tool_calls, '') || coalesce(m.reasoning_content, '')"
    return f"array_to_string(list_transform(coalesce({side}, []), lambda m: {parts}), chr(10))"


def _normalised(side: str) -> str:
    return rf"lower(trim(regexp_replace({side}_text, '\s+', ' ', 'g')))"


def _repeats(side: str) -> str:
    """SQL: whether a side loops, repeating its word 3-grams ($min_words and $min_share: the config's limits)."""
    words = f"{side}_words"
    trigram = f"{words}[i] || ' ' || {words}[i + 1] || ' ' || {words}[i + 2]"
    trigrams = f"list_transform(range(1, len({words}) - 1), lambda i: {trigram})"
    return f"(len({words}) >= $min_words and len(list_distinct({trigrams})) < $min_share * (len({words}) - 2))"


def _figures(con: duckdb.DuckDBPyConnection, files: TableFiles, config: PreferenceAuditConfig, pairs: int) -> dict:
    return {
        "prompts": con.sql("select count(distinct prompt_id) from facts").fetchall()[0][0],
        "ties": _ties(con, files, pairs),
        "length": _length(con),
        "agreement": _agreement(con, config),
        "position": _position(con),
        "margin": _margin(con),
        "pairs_per_prompt": _pairs_per_prompt(con),
        "weak": _weak(con, config),
    }


def _ties(con: duckdb.DuckDBPyConnection, files: TableFiles, pairs: int) -> dict:
    kept = con.sql("select count(*) from facts where tie").fetchall()[0][0]
    ledger = files(tables.LEDGER_NAME)
    dropped = 0
    if ledger:
        query = "select count(*) from read_parquet($files) where action = 'drop' and reason = $reason"
        dropped = con.execute(query, {"files": ledger, "reason": Reason.tie.value}).fetchall()[0][0]
    return {"kept_soft": kept, "dropped": dropped, "rate": _ratio(kept + dropped, pairs + dropped)}


def _length(con: duckdb.DuckDBPyConnection) -> dict:
    """Length bias of the pairs that are not ties: overall, per source, per domain."""
    rows = con.sql(
        """
        select grouping(source) = 0 as by_source, grouping(domain) = 0 as by_domain, coalesce(source, domain),
               count(*), count(*) filter (where chosen_length > rejected_length),
               count(*) filter (where chosen_length < rejected_length),
               avg(chosen_length), avg(rejected_length), count(margin),
               corr(chosen_length - rejected_length, margin)
        from facts where not tie
        group by grouping sets ((), (source), (domain))
        order by 1, 2, 3
        """
    ).fetchall()
    out: dict = {"overall": None, "by_source": {}, "by_domain": {}}
    for by_source, by_domain, name, n, longer, shorter, mean_c, mean_r, with_margin, corr in rows:
        figures = {
            "pairs": n,
            "chosen_longer": longer,
            "rejected_longer": shorter,
            "same_length": n - longer - shorter,
            "chosen_longer_share": _ratio(longer, longer + shorter),
            "mean_chosen": _round(mean_c),
            "mean_rejected": _round(mean_r),
            "with_margin": with_margin,
            "margin_correlation": _round(corr),
        }
        if by_source:
            out["by_source"][name] = figures
        elif by_domain:
            out["by_domain"][name] = figures
        else:
            out["overall"] = figures
    return out


def _agreement(con: duckdb.DuckDBPyConnection, config: PreferenceAuditConfig) -> dict:
    """Mean pair agreement, and percent agreement and alpha per category (the chosen and rejected sides made
    exchangeable: the chosen side is the majority's by construction, which would leave almost no expected
    disagreement and an alpha near 0 however much reviewers agree)."""
    found = {c: m.exchanged("chosen", "rejected") for c, m in coincidences(con, "votes", VOTES).items()}
    rows = con.sql(
        "select category, count(*), count(pair_agreement), avg(pair_agreement) from facts group by 1 order by 1"
    ).fetchall()
    categories = {}
    for category, n, judged, mean in rows:
        matrix = found.get(category)
        categories[category] = {
            "pairs": n,
            "pairs_with_agreement": judged,
            "mean_pair_agreement": _round(mean),
            **_reliability(matrix),
        }
    ranked = [c for c, f in categories.items() if f["alpha"] is not None and f["units"] >= config.min_pairs]
    lowest = sorted(ranked, key=lambda c: (categories[c]["alpha"], c))[: config.lowest]
    overall = con.sql("select count(pair_agreement), avg(pair_agreement) from facts").fetchall()[0]
    pooled = reduce(operator.add, found.values()) if found else None
    return {
        "pairs_with_agreement": overall[0],
        "mean_pair_agreement": _round(overall[1]),
        **_reliability(pooled),
        "by_category": categories,
        "lowest": lowest,
    }


def _reliability(matrix: Coincidences | None) -> dict:
    if matrix is None:
        return {"units": 0, "votes": 0, "percent_agreement": None, "alpha": None}
    return {
        "units": matrix.units,
        "votes": round(float(matrix.matrix.sum())),
        "percent_agreement": _round(matrix.percent_agreement()),
        "alpha": _round(matrix.alpha()),
    }


def _position(con: duckdb.DuckDBPyConnection) -> dict:
    """Per reviewer: of its verdicts on pairs shown in a known order (each vote's own `picked`, from the position its
    record's chosen side was shown in), how many picked the first-shown response."""
    rows = con.sql(
        """
        select reviewer, count(*) filter (where picked = 'a'), count(*) filter (where picked = 'b'),
               count(*) filter (where picked = 'tie')
        from votes where picked is not null group by reviewer order by reviewer
        """
    ).fetchall()
    return {
        reviewer: {"picked_a": a, "picked_b": b, "ties": ties, "share_a": _ratio(a, a + b)}
        for reviewer, a, b, ties in rows
    }


def _margin(con: duckdb.DuckDBPyConnection) -> dict:
    count, missing, mean, quantiles = con.execute(
        "select count(margin), count(*) - count(margin), avg(margin), quantile_cont(margin, $q) from facts",
        {"q": list(QUANTILES)},
    ).fetchall()[0]
    out = {"pairs_with_margin": count, "without_margin": missing, "mean": _round(mean)}
    return out | {f"p{round(q * 100):02d}": _round(v) for q, v in zip(QUANTILES, quantiles or [None] * 9, strict=True)}


def _pairs_per_prompt(con: duckdb.DuckDBPyConnection) -> dict:
    rows = con.sql(
        "select n, count(*) from (select count(*) as n from facts group by prompt_id) group by n order by n"
    ).fetchall()
    prompts = sum(count for _, count in rows)
    return {
        "prompts": prompts,
        "mean": _ratio(sum(n * count for n, count in rows), prompts),
        "max": rows[-1][0],
        "histogram": {str(n): count for n, count in rows},
    }


def _weak(con: duckdb.DuckDBPyConnection, config: PreferenceAuditConfig) -> dict:
    """Pairs that teach little, by kind, each with a count and the first few ids."""
    threshold = con.execute(
        "select quantile_cont(margin, $q) from facts", {"q": config.extreme_margin_quantile}
    ).fetchall()[0][0]
    kinds = {
        "empty_side": "empty_side",
        "identical_sides": "identical",
        "looping_side": "looping_side",
        "extreme_margin": "margin > $threshold",
    }
    flags = {kind: f"coalesce({condition}, false)" for kind, condition in kinds.items()}
    columns = ", ".join(f"count(*) filter (where {f}), min(id, $k) filter (where {f})" for f in flags.values())
    params = {"threshold": threshold, "k": max(config.examples, 1)}
    row = con.execute(f"select count(*) filter (where {' or '.join(flags.values())}), {columns} from facts", params)
    total, *cells = row.fetchall()[0]
    out = {"pairs": total}
    for i, kind in enumerate(kinds):
        out[kind] = {"count": cells[2 * i], "examples": (cells[2 * i + 1] or [])[: config.examples]}
    out["extreme_margin"]["above"] = _round(threshold)
    return out


def _warnings(report: dict, config: PreferenceAuditConfig) -> list[str]:
    warnings = []
    length, unit = report["length"], report["length_unit"]
    groups = [("all pairs", length["overall"])]
    for facet in ("source", "domain"):
        named = length[f"by_{facet}"]
        if len(named) > 1:
            groups += [(f"{facet} {name!r}", figures) for name, figures in named.items()]
    for name, figures in groups:
        share = figures and figures["chosen_longer_share"]
        if share is not None and figures["pairs"] >= config.min_pairs and abs(share - 0.5) > config.max_longer_skew:
            warnings.append(
                f"{name}: the chosen side is longer in {share:.0%} of {figures['pairs']} pairs ({unit}; "
                f"outside 50% +- {config.max_longer_skew:.0%}): a model trained on them may learn that longer wins"
            )
    for reviewer, figures in report["position"].items():
        share, judged = figures["share_a"], figures["picked_a"] + figures["picked_b"]
        if share is not None and judged >= config.min_pairs and abs(share - 0.5) > config.max_position_skew:
            warnings.append(
                f"reviewer {reviewer!r}: picked the first-shown response in {share:.0%} of {judged} verdicts "
                f"(outside 50% +- {config.max_position_skew:.0%}): position bias, if the order was random"
            )
    return warnings


def _summary(report: dict) -> str:
    overall = report["length"]["overall"] or {}
    return (
        f"preference audit: {report['pairs']} pairs over {report['prompts']} prompts; tie rate "
        f"{shown(report['ties']['rate'], '.1%')}; chosen longer {shown(overall.get('chosen_longer_share'), '.1%')} "
        f"({report['length_unit']}); length-margin correlation {shown(overall.get('margin_correlation'), '+.3f')}; "
        f"alpha {shown(report['agreement']['alpha'], '.3f')}; weak pairs {report['weak']['pairs']}"
    )


def shown(value: float | None, spec: str) -> str:
    """A figure as the terminal shows it; n/a where it could not be computed."""
    return "n/a" if value is None else format(value, spec)


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def _round(value: float | None) -> float | None:
    """A figure for the JSON: 4 decimals; None for a value SQL could not compute (NaN: no variance)."""
    return None if value is None or math.isnan(value) else round(value, 4)
