"""The `tunelake` command: thin wrappers over build, lake and ledger queries."""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Annotated

import orjson
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from tokenizers import Tokenizer

from tunelake import tables
from tunelake.audit.preference import PreferenceAuditConfig, audit_preference, shown
from tunelake.build import QuarantineRateExceeded
from tunelake.build import build as run_build
from tunelake.engine.parts import PartWriteError
from tunelake.gold.freeze import FreezeError
from tunelake.gold.freeze import freeze as freeze_table
from tunelake.gold.leakage import find_leaks
from tunelake.gold.tokenize.show import legend, token_text
from tunelake.lake import Lake, LakeBusy, new_run_id
from tunelake.recipe import RecipeError, example_recipe, load_recipe
from tunelake.schema import Reason
from tunelake.silver.lsh import MinHashConfig
from tunelake.stage import BuildRefused

app = typer.Typer(
    help="tunelake: raw post-training data -> clean, deduplicated, audited, versioned, training-ready datasets.",
    no_args_is_help=True,
    add_completion=False,
)
audit_app = typer.Typer(
    help="Audits of the published lake: figures and warnings (also in each build manifest's `audits`).",
    no_args_is_help=True,
)
app.add_typer(audit_app, name="audit")
rl_app = typer.Typer(
    help="RL: the prompt bank's rewards, calibration, and the online data plane (run, serve, reverify, assemble).",
    no_args_is_help=True,
)
app.add_typer(rl_app, name="rl")
console = Console(stderr=True)
out = Console()
LakeOption = Annotated[Path, typer.Option("--lake", help="The lake directory (the recipe's `lake:`).")]


class _RichProgress:
    """One progress bar per stage."""

    def __init__(self) -> None:
        self._bar: Progress | None = None

    def start(self, stage: str, total: int | None) -> None:
        self._bar = Progress(
            TextColumn(f"[bold]{stage:<13}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(stage, total=total)

    def advance(self, amount: int) -> None:
        self._bar.advance(self._task, amount)

    def finish(self) -> None:
        task = self._bar.tasks[0]
        self._bar.update(self._task, completed=task.total or task.completed)
        self._bar.stop()


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the example recipe.")] = Path("recipe.yaml"),
) -> None:
    """Write a commented example recipe to PATH."""
    if path.exists():
        console.print(f"[red]{path} exists; not overwriting it.[/red]")
        raise typer.Exit(1)
    path.write_text(example_recipe())
    console.print(f"Wrote {path}. Edit the sources, then: tunelake build {path}")


@app.command()
def build(recipe: Annotated[Path, typer.Argument(help="The recipe YAML file.")]) -> None:
    """Build the lake: raw sources -> bronze -> silver -> gold and exports, with a manifest."""
    try:
        cfg, sha = load_recipe(recipe)
        manifest = run_build(cfg, sha, _RichProgress())
    except (RecipeError, LakeBusy) as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    except (QuarantineRateExceeded, BuildRefused) as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(1) from None
    except PartWriteError as e:
        console.print(f"[red]{e}. Nothing was published, and this build's files were removed.[/red]", markup=False)
        raise typer.Exit(1) from None
    except BrokenProcessPool:
        console.print("[red]A worker process died (killed, or out of memory); no table was committed. Re-run.[/red]")
        raise typer.Exit(1) from None
    if manifest.get("unchanged"):
        out.print(
            f"Nothing changed since build {manifest['run_id']} (same recipe, inputs and stages): the lake stands."
        )
    table = Table(title=f"build {manifest['run_id']}")
    for col in ("source", "bronze", "silver", "quarantined", "dropped", "file issues"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for source, c in manifest["counts"].items():
        table.add_row(source, *(str(c[k]) for k in ("bronze", "silver", "quarantined", "dropped", "file_issues")))
    out.print(table)
    out.print(_stage_table(manifest["stages"]))
    for warning in manifest["warnings"]:
        console.print(f"[yellow]over-filter warning: {warning}[/yellow]", highlight=False)
    # A stage's report or an audit may hold a summary line and warnings to print.
    for name, report in [*manifest["reports"].items(), *manifest["audits"].items()]:
        if not isinstance(report, dict):
            continue
        if "summary" in report:
            out.print(report["summary"], markup=False, highlight=False, soft_wrap=True)
        for warning in report.get("warnings", []):
            console.print(f"{name}: {warning}", style="yellow", markup=False, highlight=False, soft_wrap=True)
    for item in manifest["inputs"]:
        for issue in item["issues"]:
            console.print(f"[yellow]{item['path']}: {issue['reason']}: {issue['detail']}[/yellow]")
        for note in item["notes"]:
            console.print(f"{item['path']}: {note}", markup=False, highlight=False)
    gold = ", ".join(f"{k.removeprefix('gold/')}={v}" for k, v in manifest["gold"].items() if v)
    out.print(f"gold: {gold or 'empty'}")
    out.print(f"lake: {cfg.lake}  manifest: {cfg.lake / 'manifests' / (manifest['run_id'] + '.json')}")


def _stage_table(stages: dict[str, dict]) -> Table:
    """One row per stage of the chain, from the counts the runner kept: rows in, kept, and why the others left."""
    table = Table(title="stages")
    table.add_column("stage", no_wrap=True)
    for col in ("in", "kept", "dropped", "quarantined", "seconds"):
        table.add_column(col, justify="left" if col in ("dropped", "quarantined") else "right")
    for name, c in stages.items():
        table.add_row(
            f"{name} v{c['version']}",
            str(c["in"]),
            str(c["kept"]),
            _by_reason(c["dropped"]),
            _by_reason(c["quarantined"]),
            f"{c['seconds']:.2f}",
        )
    return table


def _by_reason(counts: dict[str, int], top: int = 3) -> str:
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ", ".join(f"{reason} {n}" for reason, n in ranked[:top])
    return shown + (f", +{len(ranked) - top} more" if len(ranked) > top else "")


@app.command()
def status(lake: LakeOption) -> None:
    """Tables with their Delta versions and row counts, and the counts of the last builds."""
    lk = Lake(lake)
    table = Table(title=f"lake {lake}")
    for col in ("table", "version", "rows"):
        table.add_column(col)
    for name in lk.tables():
        rows = lk.query("select count(*) from t", t=name)[0][0]
        table.add_row(name, str(lk.version(name)), str(rows))
    out.print(table)
    for manifest in lk.manifests()[-5:]:
        totals = {
            k: sum(c[k] for c in manifest["counts"].values()) for k in ("bronze", "silver", "quarantined", "dropped")
        }
        out.print(f"{manifest['run_id']}  " + "  ".join(f"{k}={v}" for k, v in totals.items()))


@app.command()
def explain(
    lake: LakeOption,
    record: Annotated[str, typer.Argument(help="A record id, or an input address SOURCE:ROW or SOURCE:FILE:ROW.")],
) -> None:
    """What happened to one input record, stage by stage, and why."""
    lk = Lake(lake)
    if ":" in record:
        source, *file, row = record.split(":")
        if not row.isdigit():
            console.print(f"[red]{record}: expected SOURCE:ROW or SOURCE:FILE:ROW with a row number.[/red]")
            raise typer.Exit(2)
        where = "source = $source and row = $row" + (" and file like $file" if file else "")
        params = {"source": source, "row": int(row)} | ({"file": f"%{file[0]}"} if file else {})
    else:
        where, params = "id = $id", {"id": record}
    rows = lk.query(
        f"select id, source, file, row, sub, stage, action, reason, detail from l where {where} "
        "order by source, file, row, sub nulls first",
        params,
        l="ledger",
    )
    if not rows:
        console.print(f"[red]No ledger entry for {record} in the last build.[/red]")
        raise typer.Exit(1)
    _print_entries(rows)
    _print_groups(lk, rows)
    for record_id in dict.fromkeys(r[0] for r in rows if r[0]):
        _print_cluster(lk, record_id)


def _print_groups(lk: Lake, rows: list[tuple]) -> None:
    """For a row of a grouped format (rated_rows), what became of its group: the entries of the group's first row,
    where the pairs its ratings went into are recorded."""
    firsts = {(r[1], r[2], int(r[7].split(":", 1)[1])) for r in rows if (r[7] or "").startswith("grouped_into:")}
    for source, file, row in sorted(firsts):
        out.print(f"its group's pairs, at row {row}:", highlight=False)
        _print_entries(
            lk.query(
                "select id, source, file, row, sub, stage, action, reason, detail from l where source = $source "
                "and file = $file and row = $row order by sub nulls first",
                {"source": source, "file": file, "row": row},
                l="ledger",
            )
        )


def _print_cluster(lk: Lake, record_id: str) -> None:
    """A record's near-duplicate cluster (when near_dedup ran): its kept record and the records dropped for it."""
    if "cluster_id" not in lk.schema(tables.RECORDS).names:
        return
    kept = lk.query("select cluster_id from s where id = $id", {"id": record_id}, s=tables.RECORDS)
    if not kept:  # dropped: its ledger entry names the record it was dropped for
        found = lk.query(
            "select reason from l where id = $id and reason like 'near_duplicate_of:%'", {"id": record_id}, l="ledger"
        )
        kept = [(found[0][0].split(":", 1)[1],)] if found else []
    if not kept:
        return
    cluster = kept[0][0]
    dropped = lk.query(
        "select id, source, row, detail from l where reason = $r order by source, file, row",
        {"r": f"{Reason.near_duplicate.value}:{cluster}"},
        l="ledger",
    )
    if not dropped and cluster == record_id:
        return
    out.print(
        f"near-duplicate cluster {cluster}: kept {cluster}, dropped {len(dropped)}", highlight=False, soft_wrap=True
    )
    for id_, source, row, detail in dropped[:10]:
        out.print(f"  {id_}  {source} row {row}  {detail}", markup=False, highlight=False, soft_wrap=True)


def _print_entries(rows: list[tuple]) -> None:
    """Ledger entries (id, source, file, row, sub, stage, action, reason, detail), under each input row."""
    for address in dict.fromkeys((r[1], r[2], r[3]) for r in rows):
        source, file, row = address
        head = f"[bold]{source}[/bold] {file} row {row if row is not None else '-'}"
        entries = [r for r in rows if (r[1], r[2], r[3]) == address]
        # A row that gave several records (sub 0, 1, ...) lists each record's entries under its own id; a record
        # explained alone still says which of its row's records it is.
        records = list(dict.fromkeys(r[4] or 0 for r in entries))
        for sub in records:
            mine = [r for r in entries if (r[4] or 0) == sub]
            id_ = next((r[0] for r in mine if r[0]), None)
            label = head + (f" record {sub}" if len(records) > 1 or sub else "")
            out.print(label + (f"  id {id_}" if id_ else ""), highlight=False, soft_wrap=True)
            for *_, stage, action, reason, detail in mine:
                out.print(
                    f"  {stage:<13} {action:<10} {reason or '':<22} {detail or ''}",
                    markup=False,
                    highlight=False,
                    soft_wrap=True,
                )


@app.command()
def show(
    lake: LakeOption,
    table: Annotated[str, typer.Option(help="A table, e.g. gold/sft/train or gold/tokenized/<fp>/sft/train.")],
    record: Annotated[str, typer.Option("--id", help="The record id.")],
) -> None:
    """Print one record; for a tokenized table, every token with the trained ones highlighted."""
    lk = Lake(lake)
    if not lk.exists(table):
        console.print(f"[red]No table {table!r} in {lake}; `tunelake status --lake {lake}` lists them.[/red]")
        raise typer.Exit(1)
    key = "ids" if "ids" in lk.schema(table).names else "id"
    where = "list_contains(ids, $id)" if key == "ids" else "id = $id"
    rows = lk.query(f"select * from t where {where} limit 1", {"id": record}, t=table)
    if not rows:
        console.print(f"[red]No record {record} in {table}.[/red]")
        raise typer.Exit(1)
    row = dict(zip(lk.schema(table).names, rows[0], strict=True))
    if "labels" not in row:
        for key, value in row.items():
            out.print(f"[bold]{key}[/bold]: {value}", highlight=False)
        return
    tokenizer_dir = _tokenizer_of(lk, table)
    text = token_text(row["input_ids"], row["labels"], Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")))
    out.print(f"[bold]{table}[/bold]  {record}  (tokenizer {tokenizer_dir})")
    out.print(legend(row["input_ids"], row["labels"]))
    out.print(text)


def _tokenizer_of(lk: Lake, table: str) -> Path:
    """The tokenizer folder of the newest build that wrote this tokenized table's fingerprint."""
    fingerprint = table.split("/")[2]
    for manifest in reversed(lk.manifests()):
        if (manifest.get("tokenized") or {}).get("fingerprint") == fingerprint:
            return Path(manifest["recipe"]["gold"]["tokenize"]["tokenizer"])
    console.print(f"[red]No build manifest names fingerprint {fingerprint}.[/red]")
    raise typer.Exit(1)


@app.command()
def quarantine(
    lake: LakeOption,
    examples: Annotated[int, typer.Option(help="Examples shown per reason.")] = 2,
) -> None:
    """Quarantined rows grouped by reason code, with examples."""
    lk = Lake(lake)
    groups = lk.query(
        "select reason, count(*) n from q group by reason order by n desc, reason", q="silver/quarantine"
    )
    for reason, n in groups:
        out.print(f"[bold]{reason}[/bold]  {n}")
        sample = lk.query(
            "select source, file, row, field, detail from q where reason = $reason order by source, file, row "
            "limit $n",
            {"reason": reason, "n": examples},
            q="silver/quarantine",
        )
        for source, file, row, field, detail in sample:
            where = f"{source}:{Path(file).name}:{row if row is not None else '-'}"
            out.print(f"  {where}  {field or ''}  {detail[:200]}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def freeze(
    lake: LakeOption,
    table: Annotated[str, typer.Option(help="The published eval table to freeze, e.g. gold/sft/test.")],
    name: Annotated[str, typer.Option(help="The frozen set's name, unique in the lake, e.g. sft-eval-v1.")],
) -> None:
    """Pin an eval split as a named frozen set: every later build keeps its prompts, and their near-duplicates,
    in that split and out of train (a build that would move one fails)."""
    try:
        rows = freeze_table(Lake(lake), table, name)
    except (FreezeError, LakeBusy) as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    out.print(f"Froze {rows} records of {table} as {name!r}.")


@app.command()
def leakage(
    lake: LakeOption,
    threshold: Annotated[float, typer.Option(help="Jaccard of word 5-grams at which two prompts are one.")] = 0.8,
    show: Annotated[int, typer.Option(help="Leaks listed (all are counted).")] = 20,
) -> None:
    """Prompts held in two splits of the published gold, or in train beside a frozen eval set, exactly or as
    near-duplicates (MinHash LSH, verified by exact Jaccard). Exits 1 if there is any."""
    lk = Lake(lake)
    if not lk.manifests():  # a mistyped path is not a lake without leaks
        console.print(f"[red]No build in {lake}: nothing to check.[/red]")
        raise typer.Exit(2)
    try:
        config = MinHashConfig(threshold=threshold)
    except ValidationError:
        console.print(f"[red]--threshold {threshold}: a Jaccard similarity strictly between 0 and 1.[/red]")
        raise typer.Exit(2) from None
    leaks, prompts = find_leaks(lk, config)
    if not leaks:
        out.print(f"No leak: {prompts} distinct prompts, none in two splits (exact or at Jaccard >= {threshold}).")
        return
    table = Table(title=f"{len(leaks)} leaks among {prompts} distinct prompts")
    for col in ("kind", "jaccard", "held in", "prompt"):
        table.add_column(col)
    for leak in leaks[:show]:
        table.add_row(leak.kind, f"{leak.jaccard:.3f}", "\n".join(leak.places), leak.text)
    out.print(table)
    raise typer.Exit(1)


@app.command("decontam-report")
def decontam_report(lake: LakeOption) -> None:
    """Eval set x source: items hit and records dropped by the decontaminate stage in the last build."""
    manifests = Lake(lake).manifests()
    if not manifests:
        console.print(f"[red]No build in {lake}.[/red]")
        raise typer.Exit(1)
    manifest = manifests[-1]
    report = manifest.get("reports", {}).get("decontaminate")
    if report is None:
        console.print(f"[red]Build {manifest['run_id']} did not run decontaminate (silver.decontaminate).[/red]")
        raise typer.Exit(1)
    sources = list(manifest["counts"])
    table = Table(title=f"decontamination, build {manifest['run_id']}", caption="items hit / records dropped")
    for col in ("eval set", "items", *sources):
        table.add_column(col, justify="left" if col == "eval set" else "right")
    for name, entry in report.items():
        cells = [entry["sources"].get(s, {"items_hit": 0, "records_dropped": 0}) for s in sources]
        table.add_row(name, str(entry["items"]), *(f"{c['items_hit']} / {c['records_dropped']}" for c in cells))
    out.print(table)


@audit_app.command("preference")
def audit_preference_command(
    lake: LakeOption,
    as_json: Annotated[bool, typer.Option("--json", help="Print the audit as JSON (the manifest's form).")] = False,
    tokenizer: Annotated[
        Path | None, typer.Option(help="A local tokenizer folder (tokenizer.json): lengths in its tokens, not words.")
    ] = None,
) -> None:
    """The preference pairs of silver/records: tie rate; how often the chosen side is longer, and how length
    difference follows the margin (overall, per source, per domain); reviewer agreement (mean pair agreement,
    percent agreement, Krippendorff's alpha per domain or source, the lowest); each reviewer's share of verdicts
    for the first-shown response; margins; pairs per prompt; weak pairs. Warnings when the chosen-longer or a
    reviewer's first-shown share is far from 50% (the recipe's `audits.preference`; see the README)."""
    lk = Lake(lake)
    manifests = lk.manifests()
    if not manifests:
        console.print(f"[red]No build in {lake}: nothing to audit.[/red]")
        raise typer.Exit(2)
    if tokenizer is not None and not (tokenizer / "tokenizer.json").is_file():
        console.print(f"[red]--tokenizer {tokenizer}: expected a folder with tokenizer.json.[/red]")
        raise typer.Exit(2)
    # The thresholds of the recipe that built the lake, as the manifest's audit used them.
    config = PreferenceAuditConfig.model_validate(manifests[-1]["recipe"].get("audits", {}).get("preference", {}))
    report = audit_preference(lambda table: lk.files(table) if lk.exists(table) else [], config, tokenizer)
    if report is None:
        console.print(f"No preference records in {lake}: nothing to audit.")
        return
    if as_json:
        typer.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    _print_preference_audit(report)


def _print_preference_audit(report: dict) -> None:
    """The audit as tables: headline figures, length bias by group, agreement by category, position by reviewer,
    weak pairs; then notes and warnings."""
    ties, length, agreement, margin = report["ties"], report["length"], report["agreement"], report["margin"]
    overall, per_prompt, unit = length["overall"] or {}, report["pairs_per_prompt"], report["length_unit"]
    headline = Table(title=f"preference audit: {report['pairs']} pairs, {report['prompts']} prompts")
    headline.add_column("figure")
    headline.add_column("value", justify="right")
    for figure, value in (
        ("tie rate", f"{shown(ties['rate'], '.1%')} ({ties['kept_soft']} kept soft, {ties['dropped']} dropped)"),
        (f"chosen longer ({unit})", shown(overall.get("chosen_longer_share"), ".1%")),
        ("length diff ~ margin (Pearson)", shown(overall.get("margin_correlation"), "+.3f")),
        ("mean pair agreement", shown(agreement["mean_pair_agreement"], ".3f")),
        ("percent agreement", shown(agreement["percent_agreement"], ".1%")),
        (f"Krippendorff's alpha ({agreement['units']} pairs)", shown(agreement["alpha"], ".3f")),
        ("margin p05 / p50 / p95", " / ".join(shown(margin[q], ".3g") for q in ("p05", "p50", "p95"))),
        ("pairs per prompt (mean / max)", f"{shown(per_prompt['mean'], '.2f')} / {per_prompt['max']}"),
        ("weak pairs", str(report["weak"]["pairs"])),
    ):
        headline.add_row(figure, value)
    out.print(headline)
    groups = Table(title=f"length bias ({unit}; ties left out)")
    groups.add_column("group", no_wrap=True)
    for col in ("pairs", "chosen longer", "mean chosen", "mean rejected", "corr with margin"):
        groups.add_column(col, justify="right")
    for facet in ("source", "domain"):
        for name, f in length[f"by_{facet}"].items():
            groups.add_row(
                f"{facet} {name}",
                str(f["pairs"]),
                shown(f["chosen_longer_share"], ".1%"),
                shown(f["mean_chosen"], ".1f"),
                shown(f["mean_rejected"], ".1f"),
                shown(f["margin_correlation"], "+.3f"),
            )
    out.print(groups)
    if agreement["units"] or agreement["pairs_with_agreement"]:
        lowest = set(agreement["lowest"])
        categories = Table(title="agreement by category (domain, else source); * lowest alpha")
        for col in ("category", "pairs", "units", "mean pair agreement", "percent agreement", "alpha"):
            categories.add_column(col, justify="left" if col == "category" else "right")
        for name, c in agreement["by_category"].items():
            categories.add_row(
                name + (" *" if name in lowest else ""),
                str(c["pairs"]),
                str(c["units"]),
                shown(c["mean_pair_agreement"], ".3f"),
                shown(c["percent_agreement"], ".1%"),
                shown(c["alpha"], ".3f"),
            )
        out.print(categories)
    if report["position"]:
        position = Table(title="position: verdicts for the first-shown response (a)")
        for col in ("reviewer", "picked a", "picked b", "ties", "share a"):
            position.add_column(col, justify="left" if col == "reviewer" else "right")
        for reviewer, p in report["position"].items():
            counts = (str(p[k]) for k in ("picked_a", "picked_b", "ties"))
            position.add_row(reviewer, *counts, shown(p["share_a"], ".1%"))
        out.print(position)
    weak = Table(title="weak pairs")
    for col in ("kind", "pairs", "examples"):
        weak.add_column(col, justify="right" if col == "pairs" else "left")
    for kind, w in report["weak"].items():
        if isinstance(w, dict):
            weak.add_row(kind.replace("_", " "), str(w["count"]), " ".join(w["examples"]))
    out.print(weak)
    for note in report["notes"]:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    for warning in report["warnings"]:
        console.print(f"warning: {warning}", style="yellow", markup=False, highlight=False, soft_wrap=True)


@rl_app.command("rescore")
def rl_rescore(
    lake: LakeOption,
    verifier: Annotated[str, typer.Option(help="The verifier whose version changed (e.g. math).")],
    from_version: Annotated[str, typer.Option(help="The older version whose cached rewards are scored again.")],
) -> None:
    """Score again, with the verifier's current version, every completion its older version scored: from the inputs
    the reward cache kept (completion, gold, config), with no model call. The old rewards stay under their version."""
    from tunelake.rl.trainers import Rewards
    from tunelake.rl.verifiers import VERIFIERS

    if verifier not in VERIFIERS:
        console.print(f"[red]Unknown verifier {verifier!r}: expected one of {', '.join(sorted(VERIFIERS))}.[/red]")
        raise typer.Exit(2)
    rewards = Rewards(lake)
    try:
        counts = rewards.rescore(verifier, from_version)
    except ValueError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    finally:
        rewards.close()
    console.print(
        f"{verifier} {from_version} -> {VERIFIERS[verifier].version}: {counts['rescored']:,} rescored, "
        f"{counts['already']:,} already scored, {counts['changed']:,} changed, {counts['infra_error']:,} infra_error"
    )


EndpointOption = Annotated[
    str, typer.Option("--endpoint", help="An OpenAI-compatible endpoint's base URL, e.g. http://127.0.0.1:8000/v1.")
]
ModelOption = Annotated[str, typer.Option("--model", help="The model name the endpoint serves (the policy).")]
LoopOption = Annotated[
    Path | None, typer.Option("--config", help="A YAML file of the loop's settings (README: The RL data plane).")
]
RunOption = Annotated[str | None, typer.Option("--run-id", help="Resume this run (its state is in the lake).")]


def _endpoint(lake: Path, url: str, model: str, concurrency: int = 8):
    """The policy's endpoint, through the lake's request cache (an ask answered before is never paid again)."""
    import os

    from tunelake.rl.endpoint import Endpoint, RequestCache

    key = os.environ.get("OPENAI_API_KEY")
    return Endpoint(url, model, api_key=key, concurrency=concurrency, cache=RequestCache.of_lake(lake))


def _plane(lake: Path, endpoint: str, model: str, config: Path | None, run_id: str | None):
    """The data plane for a run, or an exit with the reason it cannot start."""
    import yaml

    from tunelake.rl.bank import BankError
    from tunelake.rl.curriculum import EmptyWindow
    from tunelake.rl.dataplane import DataPlane, LoopConfig

    try:
        settings = LoopConfig.model_validate(yaml.safe_load(config.read_text()) or {} if config else {})
    except (OSError, yaml.YAMLError, ValidationError) as e:
        console.print(f"{config}: {e}", style="red", markup=False)
        raise typer.Exit(2) from None
    try:
        return DataPlane(Lake(lake), _endpoint(lake, endpoint, model), settings, run_id=run_id)
    except (BankError, EmptyWindow, ValueError) as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(1) from None


@rl_app.command("calibrate")
def rl_calibrate(
    lake: LakeOption,
    endpoint: EndpointOption,
    model: ModelOption,
    k: Annotated[int, typer.Option(min=1, help="Completions sampled per prompt.")] = 8,
    split: Annotated[str, typer.Option(help="The gold split whose RL prompts are measured.")] = "train",
    temperature: Annotated[float, typer.Option(min=0.0)] = 1.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    max_tokens: Annotated[int, typer.Option(min=1)] = 1024,
    seed: Annotated[int | None, typer.Option(help="The endpoint's sampling seed.")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight at once.")] = 8,
    resume: Annotated[
        str | None, typer.Option(help="A calibration id that did not finish: what it asked is not paid again.")
    ] = None,
) -> None:
    """Sample K completions of every bank prompt from the policy, score them through the reward cache, and append
    each prompt's pass rate and difficulty, with the policy and sampling that measured them, to rl/calibration."""
    from tunelake.rl.bank import Bank, BankError
    from tunelake.rl.calibrate import calibrate
    from tunelake.rl.completion import Sampling
    from tunelake.rl.endpoint import EndpointError
    from tunelake.rl.trainers import Rewards

    the_lake = Lake(lake)
    try:
        total = len(Bank(the_lake, split))
    except BankError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(1) from None
    progress, rewards, calibration_id = _RichProgress(), Rewards(lake), resume or new_run_id()
    policy = _endpoint(lake, endpoint, model, concurrency)
    progress.start("calibrate", total)
    try:
        result = calibrate(
            the_lake,
            policy,
            rewards,
            k,
            Sampling(temperature, top_p, max_tokens, seed),
            split,
            progress=progress.advance,
            calibration_id=calibration_id,
        )
    except EndpointError as e:
        console.print(f"[red]{e}[/red]\nRun it again with --resume {calibration_id}: nothing answered is paid twice.")
        raise typer.Exit(1) from None
    finally:
        progress.finish()
        rewards.close()
        policy.close()
    mean = "none" if result.mean_pass_rate is None else f"{result.mean_pass_rate:.3f}"
    out.print(
        f"calibration {result.calibration_id}: {result.prompts:,} prompts, mean pass rate {mean}; "
        f"{result.solved:,} always solved, {result.unsolved:,} never solved, {result.unscored:,} unscored; "
        f"{result.prompts - result.solved - result.unsolved - result.unscored:,} inside 0 < p < 1"
    )


@rl_app.command("run")
def rl_run(
    lake: LakeOption,
    endpoint: EndpointOption,
    model: ModelOption,
    steps: Annotated[int, typer.Option(min=1, help="Steps to run.")],
    config: LoopOption = None,
    run_id: RunOption = None,
    policy_version: Annotated[int, typer.Option(help="The policy's version, recorded on each rollout.")] = 0,
) -> None:
    """Run the data plane for STEPS steps against the endpoint: GRPO groups into rl/rollouts, one line per step."""
    from tunelake.rl.dataplane import RewardHacking
    from tunelake.rl.endpoint import EndpointError

    plane = _plane(lake, endpoint, model, config, run_id)
    console.print(f"run {plane.run_id}: {len(plane.curriculum.prompt_ids):,} prompts")
    try:
        for step in plane.run(steps, policy_version):
            dropped = ", ".join(f"{reason} {n}" for reason, n in sorted(step.dropped.items())) or "none"
            reward = "-" if step.training_reward is None else f"{step.training_reward:.3f}"
            out.print(f"step {step.number}: {len(step.admitted)} groups admitted, dropped: {dropped}; reward {reward}")
            if step.alarm:
                console.print(f"[yellow]{step.alarm}[/yellow]")
    except (EndpointError, RewardHacking) as e:
        console.print(f"[red]{e}[/red]\nResume with --run-id {plane.run_id}: nothing is paid or scored twice.")
        raise typer.Exit(1) from None
    finally:
        plane.rewards.close()


@rl_app.command("serve")
def rl_serve(
    lake: LakeOption,
    endpoint: EndpointOption,
    model: ModelOption,
    config: LoopOption = None,
    run_id: RunOption = None,
    host: Annotated[str, typer.Option(help="The address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The port to listen on (0: any free one).")] = 8100,
    ahead: Annotated[int, typer.Option(min=0, help="Steps sampled ahead while the trainer trains (0: on pull).")] = 1,
) -> None:
    """Serve GRPO batches to a trainer: GET /batch?policy_version=V gives the next step's admitted groups (exact
    token ids, logprobs, rewards, advantages); GET /stats the figures. Every step is kept in rl/rollouts."""
    from tunelake.rl.serve import Service, serve

    plane = _plane(lake, endpoint, model, config, run_id)
    service = Service(plane, ahead=ahead)
    server = serve(service, host, port)
    console.print(f"run {plane.run_id}: serving on http://{host}:{server.server_address[1]}/batch", soft_wrap=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        service.close()
        plane.rewards.close()


@rl_app.command("reverify")
def rl_reverify(
    lake: LakeOption, run: Annotated[str, typer.Option("--run", help="The run whose rollouts are scored again.")]
) -> None:
    """Score a run's rollouts again with today's verifiers, from the rollouts table alone (no model call); the
    rescored run is appended as <run>.reverified-<id>."""
    from tunelake.rl.reverify import reverify
    from tunelake.rl.trainers import Rewards

    rewards = Rewards(lake)
    try:
        result = reverify(Lake(lake), run, rewards)
    except ValueError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(1) from None
    finally:
        rewards.close()
    out.print(
        f"{result.run_id}: {result.rollouts:,} rollouts, {result.changed:,} changed; groups admitted "
        f"{result.admitted_before:,} -> {result.admitted_after:,}"
    )


@rl_app.command("assemble")
def rl_assemble(
    lake: LakeOption,
    run: Annotated[str, typer.Option("--run", help="The run whose rollouts become SFT and preference data.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Where sft.jsonl and preference.jsonl are written.")],
) -> None:
    """Rejection sampling (the best verified completion per prompt -> SFT) and verified-vs-failed preference pairs
    from a run's rollouts, as JSONL files a recipe's sources can name."""
    from tunelake.rl.assemble import assemble

    try:
        result = assemble(Lake(lake), run, out_dir)
    except (FileNotFoundError, ValueError) as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(1) from None
    out.print(f"{result.examples:,} SFT examples in {result.sft}; {result.pairs:,} pairs in {result.preference}")
