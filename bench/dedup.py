"""Near-dedup benchmark: tunelake's near_dedup stage beside datasketch and rensa, on real text with planted
near-duplicates whose true pairs are known.

Corpus (generated once per size and seed under --workdir, deterministic): base documents made of windows of
real text from shared/data (every string of >= 8 words in its JSON files, exact duplicates removed, split into
sentences); each base joins 2-4 windows from different texts, each cut to its share of a drawn length, so bases
are distinct and a shared window is at most half of either document. A tenth of the bases get 1-3 planted copies:
word substitutions, deletions, insertions and swapped sentences until the copy's exact Jaccard with its base
falls to a drawn target in 0.5-1.0, plus case, punctuation and whitespace changes (a tenth of the copies get only
those: Jaccard 1). Every pair within a family (base and copies) is a planted pair, with its exact Jaccard.

Truth is computed here, independently of tunelake: plain Python sets of 5-word shingles of normalised words
(lowercase, every run of characters that are neither letters nor digits a space, split; a text of fewer than 5
words is one shingle), for every planted pair and every pair a side reports. Recall is the share of planted
pairs with J >= 0.8 whose two records a side puts in one cluster (and, on a random sample of records, of every
pair with J >= 0.8 found by brute force over the whole corpus); precision is the share of reported pairs with
exact J >= 0.8.

Sides, each in its own process on the same corpus, alternating run by run:

- tunelake: the near_dedup stage (threshold 0.8, 5-grams, 128 permutations, its bands) the way a build runs it:
  the texts are canonical RL records (one user turn), in chunks of --chunk records on a LocalEngine of 2 spawned
  workers; each chunk goes through NearDedup.columns and is staged as Parquet as tasks._stage_out does; then
  NearDedup.run over the staged files as a build runs it (engine.run: on the pool, or alone from
  build.ALONE_ROWS records), with the build's DuckDB memory limit.
  Its reported pairs are the verified edges (read from inside the stage) and the dropped -> kept pairs of its
  decisions; its clusters are its cluster_id annotations. (A build also runs prompt_groups, on by default, over
  the prompts: work the peers do not do, not timed here.)
- datasketch: MinHash(num_perm=128) per text (update_batch over the shingles, shingled in Python as above), then
  MinHashLSH(threshold=0.8) with its own band choice: insert all, query all; the pairs into a union-find.
- rensa: RMinHash.from_token_sets (128 permutations) over the same shingles, RMinHashLSH(threshold=0.8,
  num_bands=--rensa-bands, default 16: rensa asks for the bands), insert_many then query_all; union-find.

A side whose package is missing (`pip install -e .[bench]`) is skipped, with a line saying so.

    PYTHONPATH=src python bench/dedup.py --quick        # 20k records, 1 run: a smoke run
    PYTHONPATH=src python bench/dedup.py                # 200k records, median of 3 runs
    PYTHONPATH=src python bench/dedup.py --scale        # also tunelake at 100k, 200k and 400k
    PYTHONPATH=src python bench/dedup.py --no-peers     # tunelake only
    PYTHONPATH=src python bench/dedup.py --profile      # also tunelake with workers=1 under cProfile
    PYTHONPATH=src python bench/dedup.py --compare-src /tmp/src-before   # also tunelake from a copy of src/

tunelake's time per step (shingling, signatures, band keys, staging; DuckDB bucketing, candidate pairs,
verification, components) is timed inside the stage by wrapping its functions (the code measured is unchanged)
and printed with the table.

Wall times are of the whole child process (interpreter start and imports included, the same for every side);
`CPU s` is its user + system time and that of every process it reaped (tunelake's workers); `tree MiB` is the
largest sum of RSS over the process and its descendants, sampled every 50 ms (bench/ingest.py's run_measured).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import random
import re
import shutil
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import Measured, _check, environment, run_measured  # noqa: E402  (the sibling bench's measuring)

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TUNELAKE_SHARED_DATA", ROOT.parent / "shared" / "data"))
GEN_VERSION = 1  # bump when the generated content changes, so old work dirs are not reused
THRESHOLD, NGRAM, NUM_PERM = 0.8, 5, 128
FAMILY_SHARE = 0.10  # share of bases that get planted copies
BRUTE_SAMPLE = 1000  # records whose every J >= THRESHOLD partner is found by brute force

# --------------------------------------------------------------------------------------------- shingles (truth)

_NOT_WORD = re.compile(r"[\W_]+")  # \w is letters, digits and "_": so this is every run of non letter/digit


def words(text: str) -> list[str]:
    """Normalised words, as tunelake's ngrams.py documents them: lowercase, non letter/digit runs as spaces."""
    return _NOT_WORD.sub(" ", text.lower()).split()


def shingles(text: str, n: int = NGRAM) -> set[str]:
    """The set of word n-grams (joined by spaces); a text of fewer than n words, but some, is one shingle."""
    w = words(text)
    if len(w) < n:
        return {" ".join(w)} if w else set()
    return {" ".join(w[i : i + n]) for i in range(len(w) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return 1.0 if not (a or b) else len(a & b) / len(a | b)


# --------------------------------------------------------------------------------------------- corpus


def _strings(value: object, out: list[str]) -> None:
    if isinstance(value, str):
        if len(value.split()) >= 8:
            out.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            _strings(v, out)
    elif isinstance(value, list):
        for v in value:
            _strings(v, out)


def real_texts() -> list[str]:
    """Every distinct string of >= 8 words in the JSON files of shared/data (tokenizers aside), in file order."""
    found: list[str] = []
    for path in sorted(DATA.rglob("*.json*.gz")):
        if "tokenizers" in path.parts:
            continue
        raw = gzip.decompress(path.read_bytes())
        if path.name.endswith(".jsonl.gz"):
            rows = [orjson.loads(line) for line in raw.splitlines() if line.strip()]
        else:
            rows = orjson.loads(raw)
        _strings(rows, found)
    return list(dict.fromkeys(found))


_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def _windowed(rng: random.Random, pool: list[list[str]], length: int) -> str:
    """2-4 windows of consecutive sentences from different texts, each cut to its share of `length` words."""
    parts = rng.randint(2, 4)
    share = max(4, length // parts)
    picked: set[int] = set()
    out = []
    while len(picked) < parts:
        k = rng.randrange(len(pool))
        if k in picked:
            continue
        picked.add(k)
        sentences = pool[k]
        start = rng.randrange(len(sentences))
        taken: list[str] = []
        for sentence in sentences[start:]:
            taken += sentence.split()
            if len(taken) >= share:
                break
        out.append(" ".join(taken[:share]))
    return " ".join(out)


_PUNCT = (",", ".", "!", "?", ";", ":")


def _cosmetic(rng: random.Random, tokens: list[str]) -> None:
    """A change normalising undoes: a token's case, punctuation at a token's end, or a space doubled."""
    i = rng.randrange(len(tokens))
    op = rng.randrange(3)
    if op == 0:
        tokens[i] = tokens[i].upper() if rng.random() < 0.5 else tokens[i].title()
    elif op == 1:
        tokens[i] = tokens[i].rstrip("".join(_PUNCT)) + rng.choice(_PUNCT) if tokens[i] else tokens[i]
    else:
        tokens[i] = tokens[i] + rng.choice((" ", "\n", "  "))


def _edit(rng: random.Random, tokens: list[str], vocab: list[str]) -> None:
    """A change of words: substitute, delete, insert, or swap two adjacent sentences."""
    op = rng.randrange(4)
    i = rng.randrange(len(tokens))
    if op == 0:
        tokens[i] = rng.choice(vocab)
    elif op == 1 and len(tokens) > 3:
        del tokens[i]
    elif op == 2:
        tokens.insert(i, rng.choice(vocab))
    else:
        ends = [j + 1 for j, t in enumerate(tokens[:-1]) if t.endswith((".", "!", "?"))]
        if len(ends) >= 2:
            k = rng.randrange(len(ends) - 1)
            a, b = ends[k], ends[k + 1]
            start = ends[k - 1] if k else 0
            tokens[start:b] = tokens[a:b] + tokens[start:a]
        else:  # one sentence: move a word instead
            tokens.insert(rng.randrange(len(tokens)), tokens.pop(i))


def planted_copy(rng: random.Random, base: str, vocab: list[str]) -> str:
    """A copy of base with edits until its exact Jaccard with base is at most a drawn target in 0.5-1.0 (a tenth
    of the copies: only cosmetic changes, Jaccard 1), never equal to base."""
    target = 1.0 if rng.random() < 0.1 else rng.uniform(0.5, 1.0)
    tokens = base.split()
    base_set = shingles(base)
    for _ in range(rng.randint(1, 3)):
        _cosmetic(rng, tokens)
    for _ in range(400):
        if target >= 1.0 or jaccard(shingles(" ".join(tokens)), base_set) <= target:
            break
        _edit(rng, tokens, vocab)
        if rng.random() < 0.3:
            _cosmetic(rng, tokens)
    copy = " ".join(tokens)
    return copy if copy != base else copy + "!"


def generate(records: int, workdir: Path, seed: int, chunk: int) -> Path:
    """Write (or reuse) the corpus folder: texts.parquet (text, family, planted), planted.parquet (every pair
    within a family, with its exact Jaccard), candidates/*.arrow (canonical RL records + _ord, `chunk` a file),
    params.json."""
    params = {"version": GEN_VERSION, "records": records, "seed": seed, "chunk": chunk}
    folder = workdir / f"corpus-n{records}-s{seed}-c{chunk}"
    meta_path = folder / "params.json"
    if meta_path.exists() and json.loads(meta_path.read_text())["params"] == params:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "candidates").mkdir(parents=True)
    started = time.perf_counter()
    rng = random.Random(f"dedup-bench:{seed}")
    reals = real_texts()
    pool = [[s for s in _SENTENCE.split(t) if s.strip()] for t in reals]
    vocab = sorted({w for t in reals[:5000] for w in t.split() if w.isalpha()})
    texts: list[str] = []
    family: list[int] = []
    seen: set[str] = set()
    families = 0
    while len(texts) < records:
        base = _windowed(rng, pool, int(min(400, max(12, rng.lognormvariate(4.3, 0.6)))))
        if base in seen:
            continue
        members = [base]
        if rng.random() < FAMILY_SHARE:
            members += [planted_copy(rng, base, vocab) for _ in range(rng.randint(1, 3))]
        members = [m for m in dict.fromkeys(members) if m not in seen][: records - len(texts)]
        seen.update(members)
        fam = families if len(members) > 1 else -1
        families += len(members) > 1
        texts += members
        family += [fam] * len(members)
    order = list(range(records))
    rng.shuffle(order)  # copies are not next to their base
    texts = [texts[i] for i in order]
    family = np.array([family[i] for i in order], np.int64)
    pq.write_table(pa.table({"text": texts, "family": family}), folder / "texts.parquet")
    # Planted pairs: every pair within a family.
    rows = np.flatnonzero(family >= 0)
    by_family = defaultdict(list)
    for r in rows[np.argsort(family[rows], kind="stable")]:
        by_family[int(family[r])].append(int(r))
    left, right, sims = [], [], []
    for members in by_family.values():
        sets = [shingles(texts[m]) for m in members]
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                left.append(members[i])
                right.append(members[j])
                sims.append(jaccard(sets[i], sets[j]))
    pq.write_table(pa.table({"a": left, "b": right, "jaccard": sims}), folder / "planted.parquet")
    _write_candidates(folder, texts, chunk)
    sims_np = np.array(sims)
    meta = {
        "params": params,
        "real_texts": len(reals),
        "families": families,
        "planted_records": int(len(rows)),
        "planted_pairs": len(sims),
        "planted_pairs_by_jaccard": _bands_count(sims_np),
        "mean_words": round(float(np.mean([len(t.split()) for t in texts[:20000]])), 1),
        "seconds": round(time.perf_counter() - started, 1),
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    return folder


BANDS = (("< 0.5", 0.0, 0.5), ("0.5-0.8", 0.5, 0.8), ("0.8-0.9", 0.8, 0.9), ("0.9-1.0", 0.9, 1.01))


def _bands_count(sims: np.ndarray) -> dict[str, int]:
    return {name: int(((sims >= lo) & (sims < hi)).sum()) for name, lo, hi in BANDS}


def _write_candidates(folder: Path, texts: list[str], chunk: int) -> None:
    """The texts as canonical RL records (one user turn; ids and prompt ids as canonicalize makes them), with
    their ordinals (source 0, file 0, row i + 1), as Arrow files of `chunk` records: a build's candidates."""
    from tunelake.address import ordinal
    from tunelake.schema import RECORD
    from tunelake.silver.identify import encode_lists, prompt_ids, record_ids

    for seq, lo in enumerate(range(0, len(texts), chunk)):
        part = texts[lo : lo + chunk]
        n = len(part)
        columns = {f.name: pa.nulls(n, f.type) for f in RECORD}
        columns.update(
            regime=pa.array(["rl"] * n),
            source=pa.array(["bench"] * n),
            origin=pa.array(["human"] * n),
            license=pa.array(["mit"] * n),
            prompt=pa.array([[{"role": "user", "content": t}] for t in part], RECORD.field("prompt").type),
            id=pa.array([""] * n),
            prompt_id=pa.array([""] * n),
        )
        batch = pa.RecordBatch.from_arrays([columns[f.name] for f in RECORD], schema=RECORD)
        batch = batch.set_column(0, RECORD.field("id"), record_ids(batch, encode_lists(batch)))
        batch = batch.set_column(5, RECORD.field("prompt_id"), prompt_ids(batch))
        ords = pa.array([ordinal(0, 0, lo + i + 1) for i in range(n)], pa.int64())
        batch = batch.append_column("_ord", ords)
        with pa.ipc.new_file(folder / "candidates" / f"part-{seq:05}.arrow", batch.schema) as out:
            out.write_batch(batch)


def ord_rows(ords: np.ndarray) -> np.ndarray:
    """Ordinals (source 0, file 0) back to text rows."""
    from tunelake.address import SUB_BITS

    return (np.asarray(ords, np.int64) >> SUB_BITS) - 1


def brute_force(folder: Path, seed: int) -> dict:
    """For a random sample of records, every partner in the corpus with exact J >= THRESHOLD: the sample's
    shingles are looked up in an index of every record's shingle hashes (a pair with J >= t shares at least
    t * |A| shingles), and the survivors verified on the shingle sets. Cached beside the corpus."""
    path = folder / "brute.json"
    if path.exists():
        return json.loads(path.read_text())
    started = time.perf_counter()
    texts = pq.read_table(folder / "texts.parquet")["text"].to_pylist()
    sets = [shingles(t) for t in texts]
    counts = np.fromiter((len(s) for s in sets), np.int64, len(sets))
    hashes = np.fromiter((hash(g) for s in sets for g in s), np.int64, int(counts.sum()))
    owner = np.repeat(np.arange(len(sets)), counts)
    order = np.argsort(hashes, kind="stable")
    hashes, owner = hashes[order], owner[order]
    rng = random.Random(f"brute:{seed}")
    sample = sorted(rng.sample(range(len(texts)), min(BRUTE_SAMPLE, len(texts))))
    pairs = []
    for r in sample:
        mine = np.fromiter((hash(g) for g in sets[r]), np.int64, len(sets[r]))
        lo, hi = np.searchsorted(hashes, mine, "left"), np.searchsorted(hashes, mine, "right")
        hits = owner[np.concatenate([np.arange(a, b) for a, b in zip(lo, hi, strict=True)])]
        who, shared = np.unique(hits, return_counts=True)
        for other in who[(shared >= THRESHOLD * len(sets[r])) & (who != r)]:
            sim = jaccard(sets[r], sets[int(other)])
            if sim >= THRESHOLD:
                pairs.append([r, int(other), sim])
    out = {"sample": sample, "pairs": pairs, "seconds": round(time.perf_counter() - started, 1)}
    path.write_text(json.dumps(out))
    return out


# --------------------------------------------------------------------------------------------- tunelake side

_TIMES: dict[str, float] = defaultdict(float)
_EDGES: list[np.ndarray] = []


def _timer(name: str, fn, keyed_by_source: bool = False):
    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            key = f"{name}[{args[1]}]" if keyed_by_source else name
            _TIMES[key] += time.perf_counter() - started

    return timed


def _instrument() -> None:
    """Wraps the stage's steps with timers, and keeps the verified edges of the records' step (once per process;
    the code measured is unchanged)."""
    from tunelake.silver import lsh, minhash, near_dedup

    if getattr(near_dedup, "_bench_instrumented", False):
        return
    near_dedup._bench_instrumented = True
    verified_edges = lsh.verified_edges

    def keep_edges(con, source, nodes, *args):
        edges, similarity = verified_edges(con, source, nodes, *args)
        if source == "staged":
            _EDGES.append(np.c_[nodes[edges], similarity] if len(edges) else np.empty((0, 3)))
        return edges, similarity

    band_pairs = lsh.band_pairs

    def count_pairs(con, source, *args):
        """The bands' pairs, counted, and the time spent making them (the generator's own, not its consumer's)."""
        bands = band_pairs(con, source, *args)
        while True:
            started = time.perf_counter()
            pairs = next(bands, None)
            _TIMES[f"band_pairs[{source}]"] += time.perf_counter() - started
            if pairs is None:
                return
            _TIMES[f"candidate pairs[{source}] (count)"] += len(pairs)
            yield pairs

    lsh.verified_edges = _timer("verified_edges", keep_edges, keyed_by_source=True)
    lsh.band_pairs = count_pairs
    for name, step in (("__init__", "write shingle sets"), ("bound", "bound"), ("jaccard", "verify")):
        setattr(lsh.ShingleSets, name, _timer(step, getattr(lsh.ShingleSets, name)))
    for name in ("compared_texts", "ngram_hashes", "salted_grams", "_near_duplicates"):
        setattr(near_dedup, name, _timer(name, getattr(near_dedup, name)))
    for name in ("signatures", "band_keys", "unique_pairs", "sorted_sets"):
        setattr(minhash, name, _timer(name, getattr(minhash, name)))
    minhash.components = _timer("components", minhash.components)
    minhash.greedy_keep = _timer("greedy_keep", minhash.greedy_keep)


def _columns_task(task: tuple) -> tuple[str, int, dict]:
    """One chunk of candidates through NearDedup.columns, staged as tasks._stage_out stages it."""
    from tunelake.engine.parts import write_part
    from tunelake.tasks import columns_table

    _instrument()
    _TIMES.clear()
    step, path, root, run_id, name = task
    started = time.perf_counter()
    with pa.memory_map(path) as source:
        kept = pa.ipc.open_file(source).read_all().to_batches()[0]
    _TIMES["read candidates"] += time.perf_counter() - started
    started = time.perf_counter()
    extra = step.columns(kept)
    _TIMES["columns"] += time.perf_counter() - started
    started = time.perf_counter()
    names = ["_ord", "id", *(f"{step.name}.{column}" for column in extra)]
    data = pa.Table.from_arrays([kept["_ord"], kept["id"], *extra.values()], names=names)
    part = write_part(Path(root), columns_table(run_id, 0), name, data)
    _TIMES["write staged parquet"] += time.perf_counter() - started
    return str(Path(root) / part.table / part.name), part.rows, dict(_TIMES)


def _run_task(step, rows) -> tuple:
    """NearDedup.run as the build calls it (build._run_step), with the verified edges and step times."""
    from tunelake.build import GLOBAL_MEMORY

    _instrument()
    _TIMES.clear()
    _EDGES.clear()
    started = time.perf_counter()
    decided = step.run(rows, GLOBAL_MEMORY)
    _TIMES["run"] = time.perf_counter() - started
    edges = np.concatenate(_EDGES) if _EDGES else np.empty((0, 3))
    return decided, edges, dict(_TIMES)


def _tunelake_child(folder: str, out: str, workers: int) -> None:
    from tunelake.address import Addresses
    from tunelake.build import ALONE_ROWS
    from tunelake.engine.local import LocalEngine
    from tunelake.silver.near_dedup import NearDedup, NearDedupConfig

    started = time.perf_counter()
    step = NearDedup(NearDedupConfig(threshold=THRESHOLD, ngram=NGRAM, num_perm=NUM_PERM))
    chunks = sorted((Path(folder) / "candidates").glob("*.arrow"))
    root = Path(out) / "lake"
    addresses = Addresses(("bench",), (("corpus.jsonl",),))
    with LocalEngine(workers) as engine:  # spawns its workers at the first task
        tasks = [(step, str(c), str(root), "bench", f"part-{i:05}.parquet") for i, c in enumerate(chunks)]
        staged = list(engine.map(_columns_task, tasks))  # workers' start included
        columns_done = time.perf_counter()
        from tunelake.stage import StagedRows

        rows = StagedRows(
            [s[0] for s in staged], addresses, step.name, np.empty(0, np.int64), {}, str(root / "scratch")
        )
        alone = sum(rows for _, rows, _ in staged) >= ALONE_ROWS  # as a build decides (build._global)
        decided, edges, run_times = engine.run(_run_task, step, rows, alone=alone)
        run_done = time.perf_counter()
    finished = time.perf_counter()
    column_times: dict[str, float] = defaultdict(float)
    for _, _, times in staged:
        for k, v in times.items():
            column_times[k] += v
    # Pairs as text rows: verified edges, and dropped -> kept (the kept id from the reason).
    table = decided.decisions
    notes = decided.annotations
    rows = ord_rows(notes["_ord"].to_numpy())
    id_of = {}
    for path, _, _ in staged:
        t = pq.read_table(path, columns=["_ord", "id"])
        id_of.update(zip(t["id"].to_pylist(), ord_rows(t["_ord"].to_numpy()).tolist(), strict=True))
    kept_ids = [r.split(":", 1)[1] for r in table["reason"].to_pylist()]
    dropped = np.c_[
        ord_rows(table["_ord"].to_numpy()),
        np.array([id_of[k] for k in kept_ids], np.int64),
    ]
    sims = np.array([float(d.split()[1]) for d in table["detail"].to_pylist()])
    cluster = np.array([id_of[c] for c in notes["cluster_id"].to_pylist()], np.int64)
    labels = np.empty(len(cluster), np.int64)
    labels[rows] = cluster
    np.savez(
        Path(out) / "result.npz",
        pairs=ord_rows(edges[:, :2].astype(np.int64)) if len(edges) else np.empty((0, 2), np.int64),
        pair_sims=edges[:, 2],
        dropped=dropped.reshape(-1, 2),
        dropped_sims=sims,
        labels=labels,
    )
    shutil.rmtree(root, ignore_errors=True)
    print(
        json.dumps(
            {
                "records": len(labels),
                "columns_s": columns_done - started,
                "run_s": run_done - columns_done,
                "in_process_s": finished - started,
                "columns_steps_worker_s": dict(column_times),
                "run_steps_s": run_times,
                "dropped": int(table.num_rows),
            }
        )
    )


# --------------------------------------------------------------------------------------------- peers


def _union_find(n: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(x) for x in range(n)], np.int64)


def _peer_child(side: str, folder: str, out: str, rensa_bands: int) -> None:
    started = time.perf_counter()
    texts = pq.read_table(Path(folder) / "texts.parquet", columns=["text"])["text"].to_pylist()
    read = time.perf_counter()
    grams = [shingles(t) for t in texts]
    shingled = time.perf_counter()
    pairs: list[tuple[int, int]] = []
    if side == "datasketch":
        from datasketch import MinHash, MinHashLSH

        lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
        hashes = []
        for g in grams:
            m = MinHash(num_perm=NUM_PERM)
            m.update_batch([s.encode() for s in g])
            hashes.append(m)
        signed = time.perf_counter()
        with lsh.insertion_session() as session:
            for i, m in enumerate(hashes):
                if grams[i]:
                    session.insert(i, m)
        for i, m in enumerate(hashes):
            if grams[i]:
                pairs += [(i, j) for j in lsh.query(m) if j > i]
        bands = {"bands": lsh.b, "rows": lsh.r}
    else:
        from rensa import RMinHash, RMinHashLSH

        hashes = RMinHash.from_token_sets([sorted(g) for g in grams], NUM_PERM, 42)
        signed = time.perf_counter()
        lsh = RMinHashLSH(THRESHOLD, NUM_PERM, rensa_bands)
        lsh.insert_many(hashes)
        for i, found in enumerate(lsh.query_all(hashes)):
            if grams[i]:
                pairs += [(i, j) for j in found if j > i and grams[j]]
        bands = {"bands": rensa_bands, "rows": NUM_PERM // rensa_bands}
    queried = time.perf_counter()
    labels = _union_find(len(texts), pairs)
    finished = time.perf_counter()
    np.savez(Path(out) / "result.npz", pairs=np.array(pairs, np.int64).reshape(-1, 2), labels=labels)
    print(
        json.dumps(
            {
                "records": len(texts),
                "read_s": read - started,
                "shingle_s": shingled - read,
                "signature_s": signed - shingled,
                "lsh_s": queried - signed,
                "union_find_s": finished - queried,
                "in_process_s": finished - started,
                **bands,
            }
        )
    )


# --------------------------------------------------------------------------------------------- running sides

SIDES = ("tunelake", "datasketch", "rensa")
REFERENCE = "tunelake-ref"  # --compare-src: tunelake from another source tree, in the same runs


def installed(side: str) -> bool:
    return side.startswith("tunelake") or importlib.util.find_spec(side) is not None


def run_side(side: str, folder: Path, workdir: Path, tag: str, args) -> Measured:
    out = workdir / f"out-{side}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = None
    if side.startswith("tunelake"):
        cmd = [sys.executable, __file__, "_tunelake", str(folder), str(out), str(args.workers)]
        if side == REFERENCE:  # the same stage from another source tree (e.g. a copy of src before a change)
            env = {**os.environ, "PYTHONPATH": str(args.compare_src)}
    else:
        cmd = [sys.executable, __file__, "_peer", side, str(folder), str(out), str(args.rensa_bands)]
    m = run_measured(cmd, workdir / f"{side}-{tag}.log", env=env)
    _check(m, side)
    m.extra = json.loads(m.log.read_text().strip().splitlines()[-1])
    with np.load(out / "result.npz") as result:
        m.extra["result"] = {k: result[k] for k in result.files}
    shutil.rmtree(out, ignore_errors=True)
    return m


class Truth:
    """Exact Jaccard of any pair of records, on Python sets (cached per record)."""

    def __init__(self, folder: Path):
        self.texts = pq.read_table(folder / "texts.parquet", columns=["text"])["text"].to_pylist()
        planted = pq.read_table(folder / "planted.parquet")
        self.planted = np.c_[planted["a"].to_numpy(), planted["b"].to_numpy()]
        self.planted_sims = planted["jaccard"].to_numpy()
        self._sets: dict[int, set] = {}
        self._pairs: dict[tuple[int, int], float] = {}

    def of(self, a: int, b: int) -> float:
        key = (a, b) if a < b else (b, a)
        if key not in self._pairs:
            sets = [self._sets.get(x) or self._sets.setdefault(x, shingles(self.texts[x])) for x in key]
            self._pairs[key] = jaccard(*sets)
        return self._pairs[key]

    def many(self, pairs: np.ndarray) -> np.ndarray:
        return np.array([self.of(int(a), int(b)) for a, b in pairs], np.float64)


def accuracy(truth: Truth, result: dict, brute: dict | None) -> dict:
    """Recall (same cluster, and pair reported) on planted pairs by band, on the brute-force sample; precision of
    the reported pairs (and of tunelake's dropped -> kept pairs)."""
    labels, pairs = result["labels"], result["pairs"]
    reported = set(map(tuple, np.sort(pairs, axis=1).tolist())) if len(pairs) else set()
    out: dict = {}
    for name, lo, hi in (("J >= 0.8", THRESHOLD, 1.01), *BANDS[2:]):
        sel = (truth.planted_sims >= lo) & (truth.planted_sims < hi)
        p = truth.planted[sel]
        same = labels[p[:, 0]] == labels[p[:, 1]]
        direct = np.array([tuple(sorted(x)) in reported for x in p.tolist()], bool)
        out[f"recall {name}"] = {"pairs": int(sel.sum()), "clustered": _share(same), "reported": _share(direct)}
    below = truth.planted_sims < THRESHOLD
    p = truth.planted[below]
    out["planted J < 0.8 clustered"] = _share(labels[p[:, 0]] == labels[p[:, 1]])
    if brute is not None and brute["pairs"]:
        bp = np.array([[a, b] for a, b, _ in brute["pairs"]], np.int64)
        out["recall brute-force sample"] = {
            "records": len(brute["sample"]),
            "pairs": len(bp),
            "clustered": _share(labels[bp[:, 0]] == labels[bp[:, 1]]),
        }
    sims = truth.many(pairs)
    out["precision reported"] = {
        "pairs": len(pairs),
        "share J >= 0.8": _share(sims >= THRESHOLD),
        "below 0.7": int((sims < 0.7).sum()),
    }
    if "dropped" in result:
        dropped = result["dropped"]
        dsims = truth.many(dropped)
        out["precision dropped -> kept"] = {
            "pairs": len(dropped),
            "share J >= 0.8": _share(dsims >= THRESHOLD),
            "max |reported J - exact J|": float(np.abs(np.round(dsims, 3) - result["dropped_sims"]).max())
            if len(dropped)
            else 0.0,
        }
        if len(pairs):
            out["precision reported"]["max |stage J - exact J|"] = float(np.abs(sims - result["pair_sims"]).max())
    return out


def _share(mask: np.ndarray) -> float | None:
    return float(mask.mean()) if len(mask) else None


# --------------------------------------------------------------------------------------------- report


def _summary(ms: list[Measured], n: int) -> dict:
    med = statistics.median
    wall = med(m.wall for m in ms)
    return {
        "runs": len(ms),
        "wall_s": wall,
        "records_per_s": n / wall,
        "cpu_s": med(m.cpu_s for m in ms),
        "tree_mb": med(m.tree_mb for m in ms),
        "max_proc_mb": med(m.max_proc_mb for m in ms),
        "all_walls": [round(m.wall, 2) for m in ms],
        "in_process": {
            k: med(m.extra[k] for m in ms) for k, v in ms[0].extra.items() if k.endswith("_s") and isinstance(v, float)
        },
    }


def report(meta: dict, sides: dict[str, list[Measured]], truth: Truth, brute: dict | None) -> dict:
    n = meta["params"]["records"]
    summary = {side: _summary(ms, n) for side, ms in sides.items()}
    print(
        f"\ncorpus: {n:,} records ({meta['mean_words']} words on average), {meta['families']:,} planted families "
        f"({meta['planted_records']:,} records), {meta['planted_pairs']:,} planted pairs by exact J: "
        f"{meta['planted_pairs_by_jaccard']}"
    )
    runs = len(next(iter(sides.values())))
    print(f"runs: {runs}, medians; wall time is the whole child process\n")
    head = f"{'':12} {'wall s':>8} {'records/s':>10} {'CPU s':>7} {'tree MiB':>9} {'max proc MiB':>13}"
    head += "  in-process steps (s)"
    print(head)
    print("-" * len(head))
    for side, s in summary.items():
        steps = ", ".join(f"{k[:-2]} {v:.2f}" for k, v in s["in_process"].items())
        print(
            f"{side:12} {s['wall_s']:8.2f} {s['records_per_s']:10,.0f} {s['cpu_s']:7.2f} {s['tree_mb']:9,.0f} "
            f"{s['max_proc_mb']:13,.0f}  {steps}"
        )
    for side in ("datasketch", "rensa"):
        if side in sides:
            b = sides[side][0].extra
            summary[side]["banding"] = f"{b['bands']} x {b['rows']}"
            print(f"{side} banding: {b['bands']} bands x {b['rows']} rows")
    met = {True: "met", False: "NOT met"}
    ratios = {}
    if "tunelake" in summary:
        tl = summary["tunelake"]
        if REFERENCE in summary:
            r = summary[REFERENCE]["wall_s"] / tl["wall_s"]
            cpu = summary[REFERENCE]["cpu_s"] / tl["cpu_s"]
            ratios[REFERENCE] = {"wall": r, "cpu": cpu}
            print(f"ratio tunelake / {REFERENCE} records/s: {r:.2f}; in CPU seconds: {cpu:.2f}")
            mine, ref = sides["tunelake"][0].extra["result"], sides[REFERENCE][0].extra["result"]
            same = all(np.array_equal(mine[k], ref[k]) for k in ("labels", "dropped", "dropped_sims", "pairs"))
            print(f"tunelake and {REFERENCE} give the same clusters, drops and verified edges: {same}")
        for side, target in (("datasketch", 6.0), ("rensa", 1.2)):
            if side in summary:
                r = summary[side]["wall_s"] / tl["wall_s"]
                cpu = summary[side]["cpu_s"] / tl["cpu_s"]
                ratios[side] = {"wall": r, "cpu": cpu}
                print(
                    f"ratio tunelake / {side} records/s: {r:.2f} (target >= {target:g}: {met[r >= target]}); "
                    f"in CPU seconds: {cpu:.2f}"
                )
        steps = statistics.median  # the stage's own split of its time, medians over runs
        ex = [m.extra for m in sides["tunelake"]]
        print(
            f"\ntunelake in process: columns (signatures, on the pool, its start included) "
            f"{steps(e['columns_s'] for e in ex):.2f} s, run (clustering, in one worker) "
            f"{steps(e['run_s'] for e in ex):.2f} s"
        )
        keys = ex[0]["columns_steps_worker_s"]
        print(
            "  columns, summed over workers: "
            + ", ".join(f"{k} {steps(e['columns_steps_worker_s'][k] for e in ex):.2f}" for k in keys)
        )
        keys = ex[0]["run_steps_s"]
        print(
            "  run: "
            + ", ".join(f"{k} {steps(e['run_steps_s'][k] for e in ex):.2f}" for k in keys if "count" not in k)
        )
        print("  " + ", ".join(f"{k} {ex[0]['run_steps_s'][k]:,.0f}" for k in keys if "count" in k))
    print("\naccuracy (first run of each side; J is exact, from Python sets):")
    acc = {}
    for side, ms in sides.items():
        acc[side] = accuracy(truth, ms[0].extra["result"], brute)
        a = acc[side]
        rec = a["recall J >= 0.8"]
        line = (
            f"  {side:11} recall J>=0.8 {rec['clustered']:.4f} (pairs reported {rec['reported']:.4f}, of "
            f"{rec['pairs']:,}); 0.8-0.9 {a['recall 0.8-0.9']['clustered']:.4f}; 0.9-1.0 "
            f"{a['recall 0.9-1.0']['clustered']:.4f}"
        )
        if "recall brute-force sample" in a:
            b = a["recall brute-force sample"]
            line += f"; brute-force sample {b['clustered']:.4f} of {b['pairs']} pairs"
        print(line)
        p = a["precision reported"]
        line = (
            f"  {'':11} precision: {p['share J >= 0.8']:.4f} of {p['pairs']:,} reported pairs have J >= 0.8 "
            f"({p['below 0.7']:,} below 0.7)"
        )
        if "precision dropped -> kept" in a:
            d = a["precision dropped -> kept"]
            line += f"; dropped -> kept {d['share J >= 0.8']:.4f} of {d['pairs']:,}"
            line += f"; max |stage J - exact J| {p.get('max |stage J - exact J|', 0):.2g}"
        line += f"; planted pairs J < 0.8 put in one cluster: {a['planted J < 0.8 clustered']:.4f}"
        print(line)
    if "tunelake" in acc:
        t = acc["tunelake"]
        print(
            f"targets: recall >= 0.99 at J >= 0.8: {met[t['recall J >= 0.8']['clustered'] >= 0.99]}; precision 1.0: "
            f"{met[t['precision reported']['share J >= 0.8'] == 1.0]}"
        )
    return {"records": n, **summary, "ratios": ratios, "accuracy": acc}


def scale(args, workdir: Path) -> dict:
    """tunelake alone at 100k, 200k and 400k records (median of --runs each): records/s should stay flat."""
    rows = {}
    for n in (100_000, 200_000, 400_000):
        folder = generate(n, workdir, args.seed, args.chunk)
        ms = [run_side("tunelake", folder, workdir, f"scale-{n}-{r}", args) for r in range(args.runs)]
        s = _summary(ms, n)
        ex = [m.extra for m in ms]
        s["columns_s"] = statistics.median(e["columns_s"] for e in ex)
        s["run_s"] = statistics.median(e["run_s"] for e in ex)
        s["candidate_pairs"] = ex[0]["run_steps_s"]["candidate pairs[staged] (count)"]
        rows[n] = s
        print(
            f"scale {n:>9,}: wall {s['wall_s']:7.2f} s, {s['records_per_s']:9,.0f} records/s, columns "
            f"{s['columns_s']:.2f} s ({n / s['columns_s']:,.0f}/s), run {s['run_s']:.2f} s ({n / s['run_s']:,.0f}/s), "
            f"tree {s['tree_mb']:,.0f} MiB, {s['candidate_pairs']:,} candidate pairs  (walls {s['all_walls']})",
            flush=True,
        )
    return rows


def profile(folder: Path, workdir: Path, top: int) -> None:
    """tunelake with workers=1 under cProfile (the pool's work in this process)."""
    import pstats

    out = workdir / "out-profile"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    prof = workdir / "dedup.prof"
    cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), __file__, "_tunelake", str(folder), str(out), "1"]
    m = run_measured(cmd, workdir / "profile.log")
    _check(m, "profiled tunelake")
    print(f"\nprofile: tunelake, workers=1, {m.wall:.1f} s under cProfile; saved to {prof}")
    print(m.log.read_text().strip().splitlines()[-1])
    for key in ("tottime", "cumulative"):
        print(f"\n--- top {top} by {key} ---")
        pstats.Stats(str(prof)).strip_dirs().sort_stats(key).print_stats(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, help="records to generate (default 200,000; 20,000 with --quick)")
    ap.add_argument("--runs", type=int, help="measured runs of each side (default 3; 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="a fast smoke run")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/tunelake-bench-dedup"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=10_000, help="records per chunk (a build's 8 MiB is ~12k here)")
    ap.add_argument("--workers", type=int, default=2, help="tunelake's LocalEngine workers (default 2)")
    ap.add_argument("--rensa-bands", type=int, default=16, help="rensa's num_bands (it has no default; 16 x 8)")
    ap.add_argument("--no-peers", action="store_true", help="tunelake only")
    ap.add_argument(
        "--compare-src",
        type=Path,
        help="also run tunelake from this source tree (a copy of src/ before a change) as side tunelake-ref",
    )
    ap.add_argument("--scale", action="store_true", help="also tunelake alone at 100k, 200k and 400k records")
    ap.add_argument("--no-brute", action="store_true", help="skip the brute-force recall sample")
    ap.add_argument("--profile", action="store_true", help="also profile tunelake with workers=1")
    ap.add_argument("--top", type=int, default=30, help="functions listed by --profile")
    args = ap.parse_args()
    records = args.records or (20_000 if args.quick else 200_000)
    args.runs = args.runs or (1 if args.quick else 3)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    folder = generate(records, workdir, args.seed, args.chunk)
    meta = json.loads((folder / "params.json").read_text())
    print(f"corpus: {folder} (generated in {meta['seconds']} s, maybe earlier)", flush=True)
    brute = None
    if not args.no_brute:
        # In a child: the parent stays small, as every side is forked from it (and inherits its peak RSS).
        m = run_measured([sys.executable, __file__, "_brute", str(folder), str(args.seed)], workdir / "brute.log")
        _check(m, "brute force")
        brute = json.loads((folder / "brute.json").read_text())
    if brute:
        print(f"brute-force sample: {len(brute['sample'])} records, {len(brute['pairs'])} pairs with J >= 0.8")
    env = environment()
    sides = ["tunelake"] + ([REFERENCE] if args.compare_src else []) + ([] if args.no_peers else list(SIDES[1:]))
    for side in list(sides):
        if not installed(side):
            print(f"{side} is not installed (pip install {side}, or pip install -e .[bench]): its side is skipped")
            sides.remove(side)
    measured: dict[str, list[Measured]] = {side: [] for side in sides}
    for run in range(args.runs):  # alternate the sides so drift in the machine hits them alike
        for side in sides:
            measured[side].append(run_side(side, folder, workdir, str(run), args))
        walls = ", ".join(f"{side} {ms[-1].wall:.2f} s" for side, ms in measured.items())
        print(f"run {run + 1}/{args.runs}: {walls}", flush=True)
    truth = Truth(folder)
    results = report(meta, measured, truth, brute)
    results["corpus"] = meta
    results["environment"] = env
    print(f"environment at start: {env}" + ("  (busy machine: timings are noisy)" if env["load_avg_1m"] > 0.5 else ""))
    if args.scale:
        print(f"\nscale (tunelake alone, medians of {args.runs}):")
        results["scale"] = scale(args, workdir)
    out = workdir / f"results-n{records}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x)))
    print(f"\nresults: {out}")
    if args.profile:
        profile(folder, workdir, args.top)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_tunelake":
        _tunelake_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_brute":
        brute_force(Path(sys.argv[2]), int(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_peer":
        _peer_child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        main()
