"""Preference curation: a global stage that decides which pairs a preference set holds, and says why of the rest.

The adapters make every pair a source gives whole (ingest/adapters: rated completions give all their pairs,
judgments one pair each, ranked siblings all theirs), with `chosen` the side the source prefers and the pair's facts
in `meta.pair` (kind, tie, margin, reviewers, ...). Over all of them this step, in order:
1. votes: the records of one pair (the same prompt and the same two responses, in either orientation: several
   reviewers' judgments, or two rows rating the same responses) are one pair. The majority of their votes decides
   it; agreement is the majority's share. One record stays for the pair, the earliest whose orientation is the
   majority's; the others are dropped as `judgment_merged:<kept id>`, their votes in its `pair_reviews`. Below
   `min_agreement` the pair is dropped (`low_agreement`); a majority for neither side (a tie verdict, or as many
   votes each way) is a tie.
2. ties: dropped (`tie`), or kept soft with `pair_label` 0.5. Never given a random winner.
3. pairs from ratings (rated and ranked pairs): below `min_margin` dropped (`low_margin`); then per prompt the
   strategy keeps best vs worst, best vs a seeded random lower one, or all (`pair_not_selected` for the rest).
4. `length_balance: downsample`: the pairs whose chosen is longer (or shorter, whichever are more) are thinned at
   seeded random until as many pairs have the longer side chosen as the shorter (`length_balance`).

A per-prompt cap on pairs is silver.prompt_groups' `max_pairs_per_prompt` (a prompt and its near-identical
rewordings count as one prompt there). Every kept preference record is annotated with `pair_label`,
`pair_agreement`, `pair_votes` and `pair_reviews`. Whatever is dropped, a pair is dropped whole: a record is a
pair, so no step can leave one side of it.
"""

from __future__ import annotations

from typing import Literal

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator, model_validator

from tunelake.gold.split import unit
from tunelake.ingest.adapters.pairs import RatingsPolicy
from tunelake.schema import Regime
from tunelake.silver.identify import content_hashes, encode_messages
from tunelake.silver.turns import Turns
from tunelake.stage import Decisions, GlobalStage, StageConfig, StagedRows, Tally, drops

PAIR_LABEL = pa.field("pair_label", pa.float64())
PAIR_AGREEMENT = pa.field("pair_agreement", pa.float64())
PAIR_VOTES = pa.field("pair_votes", pa.int32())
# JSON: [{reviewer, vote: chosen | rejected | tie, picked: a | b | tie (by the order it was shown in; null: not
# known)}, ...]
PAIR_REVIEWS = pa.field("pair_reviews", pa.string())
PAIR_STRATEGY = pa.field("pair_strategy", pa.string())  # what chose a pair from ratings (null for other pairs)
_RATED = "('rated', 'ranked')"  # the kinds of pair made from ratings or ranks (meta.pair.kind)
_NOTES_SCHEMA = pa.schema(
    [pa.field("_ord", pa.int64()), PAIR_LABEL, PAIR_AGREEMENT, PAIR_VOTES, PAIR_REVIEWS, PAIR_STRATEGY]
)


class PairsFromRatings(RatingsPolicy):
    """How pairs of rated or ranked responses are chosen among all of a prompt's pairs (`aggregate`, inherited, is
    applied as the adapters make the pairs: a change re-reads the rated sources)."""

    strategy: Literal["best_vs_worst", "best_vs_random_lower", "all_pairs"] = Field(
        "best_vs_random_lower",
        description="Per prompt: the best response against the worst, against a seeded random lower-rated one, "
        "or every pair.",
    )
    min_margin: float = Field(
        0.0, ge=0, description="The least score difference a pair from ratings needs (its pairs below: low_margin)."
    )
    seed: int = Field(0, description="Decides best_vs_random_lower's choice and length_balance's thinning.")


class PreferenceConfig(StageConfig):
    """Pairs from ratings and judgments: ties, reviewer agreement, choosing among rated pairs, length balance."""

    pairs_from_ratings: PairsFromRatings = Field(
        default_factory=PairsFromRatings, description="Choosing pairs among a prompt's rated or ranked responses."
    )
    ties: Literal["drop", "keep_soft"] = Field(
        "drop",
        description="A pair the source cannot decide (equal scores, a tie verdict, an even vote): dropped as tie, "
        "or kept with pair_label 0.5. Never a random winner.",
    )
    min_agreement: float = Field(
        0.6, ge=0, le=1, description="Pairs judged more than once: the least share of votes the majority needs."
    )
    length_balance: Literal["off", "downsample"] = Field(
        "off",
        description="downsample: thin the pairs whose chosen is longer (or shorter, whichever are more) until "
        "'chosen is longer' holds for half the pairs of unequal length.",
    )

    @model_validator(mode="before")
    @classmethod
    def _cap_lives_in_prompt_groups(cls, data: object) -> object:
        if isinstance(data, dict) and "max_pairs_per_prompt" in data:
            raise ValueError(
                "max_pairs_per_prompt is set under silver.prompt_groups, which counts a prompt and its "
                "near-identical rewordings as one prompt: move it there"
            )
        return data

    @field_validator("length_balance", mode="before")
    @classmethod
    def _off(cls, value: object) -> object:
        return "off" if value is False else value  # YAML reads a bare `off` as false


class Preference(GlobalStage):
    name = "preference"
    # 2: pairs keyed by their whole prompt (not its opening turn) and sides by case and spacing only (not
    # punctuation); words counted as the audit counts them; each vote's shown position in pair_reviews
    version = "2"
    Config = PreferenceConfig
    reads = ("regime", "prompt", "chosen", "rejected", "score_chosen", "score_rejected", "meta")
    adds = (PAIR_LABEL, PAIR_AGREEMENT, PAIR_VOTES, PAIR_REVIEWS, PAIR_STRATEGY)
    # A soft tie's label must reach the trainer: a pair exported without it reads as a win for its chosen side.
    gold_columns = {Regime.preference.value: ("pair_label", "pair_agreement", "pair_votes", "pair_strategy")}

    def columns(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        """Per preference record: a key of its whole prompt (the prompt_id of splits is its opening turn only, which
        two branches of one conversation share), a key per side (its text with case and runs of spaces ignored, as
        the adapters' ties are: punctuation and signs count), each side's words and score, and its meta (where
        `pair` is); null for other regimes."""
        n = batch.num_rows
        pref = pc.equal(batch["regime"], Regime.preference.value).fill_null(False)
        at = np.flatnonzero(pref.to_numpy(zero_copy_only=False))
        rows = batch.take(pa.array(at))
        columns = {"pref": pref, "prompt_key": _scatter(content_hashes(encode_messages(rows["prompt"])), at, n)}
        for side in ("chosen", "rejected"):
            text = Turns.of(rows[side]).text()
            spaced = pc.utf8_trim_whitespace(pc.replace_substring_regex(pc.utf8_lower(text), r"\s+", " "))
            columns[f"{side}_key"] = _scatter(content_hashes(spaced), at, n)
            # Words as the preference audit counts them (runs of non-space), so a balanced set audits at 50%.
            spaced_words = pc.list_value_length(pc.utf8_split_whitespace(text)).cast(pa.int64())
            columns[f"{side}_words"] = _scatter(spaced_words, at, n)
        for name in ("score_chosen", "score_rejected", "meta"):
            columns[name] = _scatter(rows[name], at, n)
        return columns

    def columns_key(self) -> dict:
        return {"name": self.name, "version": self.version}

    def run(self, rows: StagedRows, memory_limit: str) -> Decisions:
        config, ratings = self.config, self.config.pairs_from_ratings
        with rows.connect(memory_limit) as con:
            con.execute(_PAIRS)
            con.execute(_VOTED)
            # Seeded places in [0, 1): best_vs_random_lower takes the lower response with the smallest (by its
            # text, so the same response wherever it is rated), length_balance thins pairs the smallest first.
            keys = con.sql("select _ord, id, rejected_key from live").to_arrow_table()
            places = {
                "lower_place": unit(keys["rejected_key"].combine_chunks(), ratings.seed),
                "place": unit(keys["id"].combine_chunks(), ratings.seed),
            }
            con.register("places", pa.table({"_ord": keys["_ord"], **places}))
            con.execute(
                "create table dropped (_ord bigint, id varchar, reason varchar, detail varchar, kept_ord bigint)"
            )
            _drop(con, _MERGED)  # from here on, a record is a pair with all its votes
            _drop(con, _LOW_AGREEMENT.format(min_agreement=config.min_agreement))
            if config.ties == "drop":
                _drop(con, _TIES)
            _drop(con, _LOW_MARGIN.format(min_margin=ratings.min_margin, rated=_RATED))
            if ratings.strategy != "all_pairs":
                order = "score_rejected asc" if ratings.strategy == "best_vs_worst" else "lower_place asc"
                _drop(con, _NOT_SELECTED.format(rated=_RATED, order=order, strategy=ratings.strategy))
            if config.length_balance == "downsample":
                _drop(con, _LENGTH_BALANCE)
            dropped = con.sql("select * from dropped order by _ord").to_arrow_table()
            notes = con.sql(_NOTES.format(rated=_RATED, strategy=ratings.strategy)).to_arrow_table()
            [figures] = con.sql(_TALLY).fetchall()
        # A merged vote's detail ends with the address of the record its pair stands as (two equal votes share an id).
        merged = pc.is_valid(dropped["kept_ord"])
        named = pc.binary_join_element_wise(
            dropped["detail"], rows.addresses.name(dropped["kept_ord"].fill_null(0)), ""
        )
        detail = pc.if_else(merged, named, dropped["detail"])
        decisions = drops(dropped["_ord"], dropped["id"], dropped["reason"], detail)
        tally = Tally({(key,): int(n or 0) for key, n in zip(_TALLIED, figures, strict=True)})
        return Decisions(decisions, notes.cast(_NOTES_SCHEMA), Tally({k: v for k, v in tally.items() if v}))

    def report(self, ledger: pa.Table, tally: Tally) -> dict | None:
        """The pairs the step saw, how many were judged more than once and how far their votes agreed, and the
        ties; what it dropped, by reason, is in the stage's counts."""
        if not tally["pairs",]:
            return None
        distinct, multi = tally["distinct",], tally["multi",]
        report = {
            "pairs": tally["pairs",],
            "distinct_pairs": distinct,
            "judged_more_than_once": multi,
            "majority_share": round(tally["majority_votes",] / tally["multi_votes",], 4) if multi else None,
            "ties": tally["ties",],
            "tie_rate": round(tally["ties",] / distinct, 4),
            "ties_kept_soft": tally["ties",] if self.config.ties == "keep_soft" else 0,
        }
        agreement = (
            f", majority share {report['majority_share']:.2f} over {multi:,} judged more than once" if multi else ""
        )
        if report["ties_kept_soft"]:
            report["warnings"] = [
                f"{report['ties_kept_soft']:,} ties are kept with pair_label 0.5 in gold/preference and its exports: "
                "a trainer that ignores pair_label (TRL's DPO does) trains each as a win for its chosen side "
                "(tokenized gold leaves them out, quarantined as tie)"
            ]
        report["summary"] = (
            f"{distinct:,} distinct pairs of {report['pairs']:,} records{agreement}; tie rate {report['tie_rate']:.2%}"
        )
        return report


def _scatter(values: pa.Array, at: np.ndarray, n: int) -> pa.Array:
    """`values` at rows `at` of n rows, null elsewhere."""
    index = np.full(n, len(values), np.int64)  # one past the end: null
    index[at] = np.arange(len(at))
    return pa.concat_arrays([values, pa.nulls(1, values.type)]).take(pa.array(index))


def _drop(con: duckdb.DuckDBPyConnection, query: str) -> None:
    """Drop the live pairs `query` selects (as _ord, id, reason, detail and, for a merged vote, kept_ord)."""
    con.execute(f"create or replace temp table batch as {query}")
    con.execute("insert into dropped by name select * from batch")
    con.execute("delete from live where _ord in (select _ord from batch)")


# Every preference record, its pair's facts (meta.pair) and its unordered pair (prompt, lo, hi).
_PAIRS = """
create table pairs as
select _ord, id, prompt_key, chosen_key, rejected_key, chosen_words, rejected_words, score_chosen, score_rejected,
       coalesce(json_extract_string(meta, '$.pair.kind'), 'plain') as kind,
       coalesce(try_cast(json_extract_string(meta, '$.pair.tie') as boolean), false) or chosen_key = rejected_key
           or coalesce(abs(score_chosen - score_rejected) <= 1e-9, false) as tie,
       coalesce(try_cast(json_extract_string(meta, '$.pair.margin') as double), score_chosen - score_rejected)
           as margin,
       nullif(array_to_string(json_extract_string(meta, '$.pair.reviewers[*]'), ','), '') as reviewer,
       json_extract_string(meta, '$.pair.chosen_position') as position,
       least(chosen_key, rejected_key) as lo, greatest(chosen_key, rejected_key) as hi
from staged where pref
"""
# Each pair's votes: for either side, for a tie; the winner (null: none has a majority), the majority's share, and
# the record that stays for the pair (the earliest that votes as the majority does).
_VOTED = """
create table voted as
with counted as (
    select *,
           count(*) over u as votes,
           sum((not tie and chosen_key = lo)::int) over u as for_lo,
           sum((not tie and chosen_key = hi)::int) over u as for_hi,
           sum(tie::int) over u as for_tie
    from pairs window u as (partition by prompt_key, lo, hi)
), won as (
    select *,
           case when for_lo > greatest(for_hi, for_tie) then lo when for_hi > greatest(for_lo, for_tie) then hi end
               as winner,
           greatest(for_lo, for_hi, for_tie) / votes as agreement
    from counted
), ranked as (
    select *, case when winner is null then tie else not tie and chosen_key = winner end as agrees from won
)
select *,
       first_value(_ord) over u = _ord as rep,
       first_value(_ord) over u as rep_ord,
       first_value(id) over u as rep_id,
       first_value(chosen_key) over u as rep_chosen
from ranked window u as (partition by prompt_key, lo, hi order by agrees desc, _ord
                         rows between unbounded preceding and unbounded following);
create table live as select * from voted;
"""
_LOW_AGREEMENT = """
select _ord, id, 'low_agreement' as reason,
       printf('%d of %d votes agree (%.3f); min_agreement is {min_agreement}',
              greatest(for_lo, for_hi, for_tie), votes, agreement) as detail
from live where votes > 1 and agreement < {min_agreement}
"""
_TIES = """
select _ord, id, 'tie' as reason,
       case when votes > 1
            then printf('no majority: %d and %d votes for either response, %d for a tie', for_lo, for_hi, for_tie)
            when chosen_key = rejected_key then 'the two responses are the same text but for case and spacing'
            else 'the source cannot tell the two responses apart (a tie verdict, or equal scores)'
       end as detail
from live where winner is null
"""
_MERGED = """
select _ord, id, 'judgment_merged:' || rep_id as reason,
       printf('one of %d votes on this pair; this vote: %s; the pair stands as the record of ', votes,
              case when tie then 'tie' when chosen_key = rep_chosen then 'chosen' else 'rejected' end) as detail,
       rep_ord as kept_ord
from live where not rep
"""
_LOW_MARGIN = """
select _ord, id, 'low_margin' as reason, printf('margin %.4g is below min_margin {min_margin}', margin) as detail
from live where kind in {rated} and winner is not null and margin < {min_margin}
"""
# Per prompt, among its pairs from ratings, the best response (the highest score any chosen side has) against
# the one `order` puts first of the responses it beats.
_NOT_SELECTED = """
with rated as (
    select live.*, lower_place from live join places using (_ord) where kind in {rated} and winner is not null
), best as (
    select prompt_key, first(chosen_key order by score_chosen desc nulls last, chosen_key) as best
    from rated group by prompt_key
), kept as (
    select prompt_key, first(_ord order by {order}, _ord) as kept_ord, first(id order by {order}, _ord) as kept_id
    from rated join best using (prompt_key) where chosen_key = best group by prompt_key
)
select rated._ord, rated.id, 'pair_not_selected' as reason,
       printf('{strategy} kept %s for this prompt', kept_id) as detail
from rated join kept using (prompt_key) where rated._ord != kept_ord
union all  -- a soft tie has no better side: the strategy, which keeps a better response against a lower, keeps none
select _ord, id, 'pair_not_selected' as reason, '{strategy} keeps a better response against a lower; a tie has none'
from live where kind in {rated} and winner is null
"""
# Pairs of unequal length (ties kept soft aside): the side with more pairs (chosen longer, or shorter) loses the
# excess, the smallest places first.
_LENGTH_BALANCE = """
with sided as (
    select _ord, id, sign(chosen_words - rejected_words) as side, place
    from live join places using (_ord) where winner is not null and chosen_words != rejected_words
), sides as (
    select count(*) filter (where side = 1) as longer, count(*) filter (where side = -1) as shorter from sided
), ranked as (
    select *, row_number() over (partition by side order by place, _ord) as nth from sided
)
select _ord, id, 'length_balance' as reason,
       printf('chosen is longer in %d pairs and shorter in %d; thinned to as many each way', longer, shorter)
           as detail
from ranked, sides
where side = case when longer > shorter then 1 else -1 end and nth <= abs(longer - shorter)
"""
_NOTES = """
select live._ord,
       case when winner is null then 0.5 else 1.0 end as pair_label,
       case when votes > 1 then agreement end as pair_agreement,
       votes as pair_votes,
       reviews as pair_reviews,
       case when kind in {rated} and winner is not null then '{strategy}' end as pair_strategy
from live join (
    select prompt_key, lo, hi,
           to_json(list({{'reviewer': reviewer,
                          'vote': case when tie then 'tie' when chosen_key = rep_chosen then 'chosen' else 'rejected'
                                  end,
                          'picked': case when tie and position is not null then 'tie' else position end}}
                         order by _ord))::varchar as reviews
    from voted group by prompt_key, lo, hi
) using (prompt_key, lo, hi)
order by live._ord
"""
_TALLIED = ("pairs", "distinct", "multi", "multi_votes", "majority_votes", "ties")
_TALLY = """
select sum(votes), count(*), count(*) filter (where votes > 1), sum(votes) filter (where votes > 1),
       sum(greatest(for_lo, for_hi, for_tie)) filter (where votes > 1),
       count(*) filter (where winner is null and _ord not in (select _ord from dropped where reason = 'low_agreement'))
from voted where rep
"""
