"""Decontamination against real eval sets (GSM8K test, MATH-500, HumanEval, MBPP; tests/fixtures/decontam): copies
planted in real training records are found, untouched real training data is left alone, and a build drops, reports
and re-runs as it should."""

from __future__ import annotations

import gzip
import json
import os
import random
import re
from collections import Counter

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from tests.conftest import FIXTURES, run_build, write_recipe
from tunelake.cli import app
from tunelake.recipe import RecipeError, load_recipe
from tunelake.schema import RECORD
from tunelake.silver.decontaminate import Decontaminate, DecontaminateConfig

DATA = FIXTURES / "decontam"
EVALS = [
    {"name": "gsm8k-test", "path": str(DATA / "gsm8k_test.jsonl.gz"), "field": "question"},
    {"name": "math500", "path": str(DATA / "math500_test.jsonl.gz"), "field": "problem", "id_field": "unique_id"},
    {"name": "humaneval", "path": str(DATA / "HumanEval.jsonl.gz"), "field": "prompt", "id_field": "task_id"},
    {"name": "mbpp", "path": str(DATA / "mbpp.jsonl.gz"), "field": "text", "id_field": "task_id"},
]
COLUMNS = pa.schema([RECORD.field(n) for n in ("regime", "messages", "prompt", "chosen", "rejected", "answer")])


def _rows(name: str) -> list[dict]:
    data = gzip.decompress((DATA / name).read_bytes())
    return json.loads(data) if name.endswith(".json.gz") else [json.loads(line) for line in data.splitlines()]


def _items(eval_set: dict) -> list[tuple[str, str]]:
    """(label, text) of each item, as the reason code names it."""
    rows = _rows(os.path.basename(eval_set["path"]))
    return [
        (str(r[eval_set["id_field"]]) if "id_field" in eval_set else str(i), r[eval_set["field"]])
        for i, r in enumerate(rows)
    ]


def _sft(user: str, assistant: str) -> dict:
    return {
        "regime": "sft",
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
    }


def _hosts() -> list[tuple[str, str]]:
    """Real training conversations: Alpaca (instruction + input, output) and GSM8K train (question, solution)."""
    alpaca = [
        (r["instruction"] + (f"\n\n{r['input']}" if r["input"] else ""), r["output"])
        for r in _rows("alpaca_1000.json.gz")
    ]
    return alpaca + [(r["question"], r["answer"]) for r in _rows("gsm8k_train_1500.jsonl.gz")]


def _decontaminate(records: list[dict], **config) -> tuple[list, list]:
    stage = Decontaminate(DecontaminateConfig(against=EVALS, **config))
    outcome = stage.process(pa.RecordBatch.from_pylist(records, schema=COLUMNS))
    return outcome.drop.to_pylist(), outcome.detail.to_pylist()


def _reformatted(text: str, rng: random.Random) -> str:
    """Upper case, other punctuation, other whitespace."""
    swap = {",": " ;", ".": " !", "?": " .", "!": ".", ":": " -", ";": ","}
    text = re.sub(r"([,.?!:;])(\s|$)", lambda m: swap[m.group(1)] + m.group(2), text)
    return re.sub(r"\s+", lambda _: rng.choice([" ", "  ", "\n", "\t "]), text).upper()


def _renumbered(text: str, rng: random.Random) -> str:
    return re.sub(r"\d+", lambda m: str(int(m.group()) + rng.randint(1, 97)), text)


def _partial(text: str, _: random.Random) -> str:
    """The item's first 60% of words."""
    split = text.split(" ")
    return " ".join(split[: max(1, round(len(split) * 0.6))])


VARIANTS = {"verbatim": lambda t, _: t, "reformatted": _reformatted, "numbers": _renumbered, "partial": _partial}


def test_planted_copies_are_found_in_prompts_and_responses_of_real_records():
    """100 items of each eval set, each planted four ways (verbatim, reformatted, numbers renamed, first 60%) into
    the prompt and into the response of a real training conversation. Measured: verbatim and reformatted 1.00;
    numbers renamed 0.99 (MATH-500 0.96: its short items keep their digits); partial 0.535 (GSM8K 0.72, MATH-500
    0.40, HumanEval 0.97, MBPP 0.05: 60% of a 14-word MBPP task holds 1 of its 7 8-grams)."""
    rng, hosts = random.Random(0), _hosts()
    records, planted = [], []
    for eval_set in EVALS:
        for label, text in rng.sample(_items(eval_set), 100):
            for variant, rewrite in VARIANTS.items():
                copy = rewrite(text, rng)
                user, assistant = rng.choice(hosts)
                records.append(_sft(f"{user}\n\n{copy}", assistant))
                records.append(_sft(user, f"{assistant}\n\n{copy}"))
                planted += [(eval_set["name"], label, variant)] * 2
    drops, details = _decontaminate(records)
    found = Counter(variant for (_, _, variant), drop in zip(planted, drops, strict=True) if drop)
    per_set = Counter((name, variant) for (name, _, variant), drop in zip(planted, drops, strict=True) if drop)
    total = len(EVALS) * 200
    assert found["verbatim"] == found["reformatted"] == total
    assert found["numbers"] >= 0.99 * total
    assert found["partial"] >= 0.45 * total
    assert per_set["gsm8k-test", "partial"] >= 0.7 * 200 and per_set["humaneval", "partial"] >= 0.9 * 200
    # A verbatim copy names its own item (or an earlier item of the same set with the same words: MBPP repeats
    # some tasks word for word).
    named = [
        d.split(":", 2)[1:] == [n, label] for (n, label, v), d in zip(planted, drops, strict=True) if v == "verbatim"
    ]
    assert sum(named) >= 0.97 * total
    sides = Counter(detail.split(":")[0].rsplit(" ", 1)[-1] for detail in details if detail)
    assert sides["prompt"] > 0 and sides["response"] > 0


def test_untouched_real_training_data_is_left_alone_but_for_real_near_copies():
    """1,000 Alpaca and 1,500 GSM8K train conversations against all four eval sets: the only hits are two GSM8K
    train problems that are GSM8K test problems with other names and numbers."""
    drops, details = _decontaminate([_sft(user, assistant) for user, assistant in _hosts()])
    hits = {i - 1000 + 1: drop for i, drop in enumerate(drops) if drop}  # GSM8K train row numbers
    assert hits == {21: "contaminated:gsm8k-test:632", 1315: "contaminated:gsm8k-test:602"}
    assert len(hits) / len(drops) < 0.001
    # Train row 21: "Bella bought stamps at the post office. Some of the stamps had a snowflake design, ..."; test
    # item 632: "Max bought stamps at the post office. Some of the stamps had a snowflake design, ...".
    assert "snowflake design some had a truck design" in details[1000 + 20]


def test_a_short_item_matches_whole_at_word_boundaries_with_its_digits():
    """MATH-500 "Simplify $\\sqrt{242}$." has 3 words, fewer than the 8 of a gram: it must appear whole."""
    (label,) = [label for label, text in _items(EVALS[1]) if text == "Simplify $\\sqrt{242}$."]
    records = [
        _sft("Please SIMPLIFY \\sqrt{242}, thanks.", "Sure."),
        _sft("Simplify $\\sqrt{243}$.", "Sure."),
        _sft("Oversimplify sqrt 242.", "Sure."),
    ]
    drops, details = _decontaminate(records)
    assert drops == [f"contaminated:math500:{label}", None, None]
    assert details[0] == "the whole item (3 words) in the prompt: 'simplify sqrt 242'"


def test_the_detail_names_the_share_and_the_matched_span():
    question = _items(EVALS[0])[0][1]  # "Janet’s ducks lay 16 eggs per day. ..."
    half = " ".join(question.split(" ")[:30])
    drops, details = _decontaminate([_sft("Hello", f"Here is one: {half}. Good luck.")])
    assert drops == ["contaminated:gsm8k-test:0"]
    assert re.fullmatch(r"0\.\d\d of its \d+ 8-grams in the response: 'janet s ducks lay 16 eggs .*'", details[0])


def test_checking_prompts_only_leaves_responses_alone():
    question = _items(EVALS[0])[5][1]
    records = [_sft(question, "I do not know."), _sft("Tell me a problem.", question)]
    assert _decontaminate(records, check=["prompt"])[0] == ["contaminated:gsm8k-test:5", None]
    assert _decontaminate(records, check=["response"])[0] == [None, "contaminated:gsm8k-test:5"]


def _write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _source(path, name: str, **extra) -> dict:
    return {"name": name, "path": str(path), "license": "mit", "origin": "human", **extra}


def _relative(eval_sets: list[dict], folder) -> list[dict]:
    return [e | {"path": os.path.relpath(e["path"], folder)} for e in eval_sets]


def test_a_build_drops_contaminated_records_and_reports_eval_by_source(tmp_path):
    """Through a recipe (eval paths relative to it, two workers): real GSM8K train and Alpaca rows, plus a source of
    planted copies; the manifest's report and `tunelake decontam-report` give the eval x source matrix."""
    gsm8k, humaneval = _items(EVALS[0]), _items(EVALS[2])
    planted = [
        {"messages": [{"role": "user", "content": f"Solve: {gsm8k[3][1]}"}, {"role": "assistant", "content": "42"}]},
        {"messages": [{"role": "user", "content": "A problem?"}, {"role": "assistant", "content": gsm8k[3][1]}]},
        {"messages": [{"role": "user", "content": humaneval[10][1]}, {"role": "assistant", "content": "pass"}]},
        {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]},
    ]
    sources = [
        _source(_write(tmp_path / "planted.jsonl", planted), "planted"),
        _source(DATA / "gsm8k_train_1500.jsonl.gz", "gsm8k_train", format="gsm8k"),
        _source(DATA / "alpaca_1000.json.gz", "alpaca"),
    ]
    silver = {"decontaminate": {"against": _relative(EVALS, tmp_path)}}
    manifest, lake = run_build(write_recipe(tmp_path, sources, silver=silver, engine={"workers": 2}))

    assert list(manifest["stages"]) == ["canonicalize", "decontaminate", "exact_dedup"]
    assert manifest["stages"]["decontaminate"]["dropped"] == {"contaminated": 5}
    assert manifest["reports"]["decontaminate"] == {
        "gsm8k-test": {
            "items": 1319,
            "sources": {
                "gsm8k_train": {"items_hit": 2, "records_dropped": 2},
                "planted": {"items_hit": 1, "records_dropped": 2},
            },
        },
        "math500": {"items": 500, "sources": {}},
        "humaneval": {"items": 164, "sources": {"planted": {"items_hit": 1, "records_dropped": 1}}},
        "mbpp": {"items": 974, "sources": {}},
    }
    drops = lake.query(
        "select source, row, reason from l where stage = 'decontaminate' order by source, row", l="ledger"
    )
    assert drops == [
        ("gsm8k_train", 21, "contaminated:gsm8k-test:632"),
        ("gsm8k_train", 1315, "contaminated:gsm8k-test:602"),
        ("planted", 1, "contaminated:gsm8k-test:3"),
        ("planted", 2, "contaminated:gsm8k-test:3"),
        ("planted", 3, "contaminated:humaneval:HumanEval/10"),
    ]
    assert manifest["counts"]["planted"]["silver"] == 1

    result = CliRunner().invoke(app, ["decontam-report", "--lake", str(tmp_path / "lake")])
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.output.splitlines() if "gsm8k-test" in line]
    assert re.search(r"1319 .* 1 / 2 .* 2 / 2 .* 0 / 0", row), row


def test_a_pair_is_dropped_whole_when_its_chosen_response_quotes_a_test_solution(tmp_path):
    solution = _rows("gsm8k_test.jsonl.gz")[9]["answer"]
    pairs = [
        {"prompt": "How much does Eliza earn this week?", "chosen": solution, "rejected": "About 100 dollars."},
        {"prompt": "How much does Eliza earn this week?", "chosen": "Let me think.", "rejected": "About 100 dollars."},
    ]
    solutions = {"name": "gsm8k-test-solutions", "path": EVALS[0]["path"], "field": "answer"}
    silver = {"decontaminate": {"against": [solutions]}}
    manifest, lake = run_build(
        write_recipe(tmp_path, [_source(_write(tmp_path / "p.jsonl", pairs), "pairs")], silver=silver)
    )
    ((reason, detail),) = lake.query("select reason, detail from l where stage = 'decontaminate'", l="ledger")
    assert reason == "contaminated:gsm8k-test-solutions:9"
    assert detail.startswith("1.00 of its ") and " in the response: 'eliza is entitled to 45" in detail
    silver_rows = lake.query("select prompt, chosen, rejected from s", s="silver/records")
    assert [r[1][0]["content"] for r in silver_rows] == ["Let me think."]  # the other pair is gone, both sides


def test_a_changed_eval_file_reruns_the_stage_instead_of_standing(tmp_path):
    evals = tmp_path / "evals.jsonl"
    evals.write_text(json.dumps({"question": "What is the capital of France and why is it there?"}) + "\n")
    rows = [
        {"instruction": "Name the capital of Spain and say why it is there.", "output": "Madrid."},
        {"instruction": "Say hi.", "output": "Hi!"},
    ]
    source = _source(_write(tmp_path / "a.jsonl", rows), "a")
    silver = {"decontaminate": {"against": [{"name": "capitals", "path": "evals.jsonl", "field": "question"}]}}
    recipe = write_recipe(tmp_path, [source], silver=silver)
    first, _ = run_build(recipe)
    assert first["counts"]["a"]["dropped"] == 0 and run_build(recipe)[0].get("unchanged")
    evals.write_text(json.dumps({"question": "Name the capital of Spain and say why it is there."}) + "\n")
    second, _ = run_build(recipe)
    assert not second.get("unchanged") and second["counts"]["a"]["dropped"] == 1
    assert second["chain"][0]["eval_sha256"] != first["chain"][0]["eval_sha256"]


@pytest.mark.parametrize(
    ("eval_rows", "eval_set", "message"),
    [
        (None, {}, "silver.decontaminate: eval set 'e': no file {tmp}/missing.jsonl"),
        ([{"question": "a b"}, {"prompt": "c"}], {}, "{tmp}/e.jsonl: row 2 has no field 'question'"),
        ([{"question": ["a", "b"]}], {}, "{tmp}/e.jsonl: row 1: field 'question' is list, expected a string"),
        ([{"question": "a b", "id": 1.5}], {"id_field": "id"}, "row 1: field 'id' is float, expected a string or an"),
        ([{"question": "a"}], {"name": "a:b"}, "'a:b': expected a letter or digit"),
    ],
)
def test_an_eval_set_that_cannot_be_used_is_a_recipe_error(tmp_path, eval_rows, eval_set, message):
    path = "missing.jsonl" if eval_rows is None else _write(tmp_path / "e.jsonl", eval_rows)
    source = _source(_write(tmp_path / "a.jsonl", [{"instruction": "Hi", "output": "Hi!"}]), "a")
    against = [{"name": "e", "path": os.path.basename(path), "field": "question"} | eval_set]
    with pytest.raises(RecipeError) as e:
        load_recipe(write_recipe(tmp_path, [source], silver={"decontaminate": {"against": against}}))
    assert message.format(tmp=tmp_path) in str(e.value)
