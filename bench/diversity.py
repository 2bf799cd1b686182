"""Diversity benchmark: what `silver.diversity` and `gold.select` add to a build, at 100k and 200k records.

Corpus (written once per size under --workdir, deterministic): SFT records from the 2,000 real Alpaca rows of
shared/data, each row the base of size/2,000 variants (its instruction with a variant number; its output with two
words substituted by nouns at places that move with the variant), so every base is a templated family: the stage's
costly case (every record in a cluster of 50 or 100, most pairs candidates). Each size is built twice in separate
processes, in the same run: the baseline (exact dedup only) and with `silver.diversity: {}` and
`gold.select: {size: --select}`. Printed: build seconds, each step's seconds (the manifest's), the largest
process's peak RSS (the build's own, or its workers'), and the diversity report's corpus line.

    PYTHONPATH=src python bench/diversity.py                 # 100k and 200k
    PYTHONPATH=src python bench/diversity.py --sizes 20000   # a smoke run
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
from pathlib import Path

import yaml

ALPACA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca" / "alpaca_sample_2000.json.gz"
NOUNS = ["apple", "river", "engine", "garden", "violin", "comet", "harbor", "pencil", "canyon", "lantern", "meadow"]

CHILD = """
import json, resource, sys, time
from tunelake.build import build
from tunelake.recipe import load_recipe
recipe, sha = load_recipe(sys.argv[1])
start = time.perf_counter()
manifest = build(recipe, sha)
seconds = time.perf_counter() - start
peak = max(resource.getrusage(r).ru_maxrss for r in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) // 1024
stages = {name: manifest["stages"][name]["seconds"] for name in ("exact_dedup", "diversity", "select")
          if name in manifest["stages"]}
print(json.dumps({"seconds": round(seconds, 2), "peak_mib": peak, "stages": stages,
                  "diversity": manifest.get("reports", {}).get("diversity", {}).get("corpus"),
                  "select": manifest.get("reports", {}).get("select")}))
"""


def corpus(path: Path, size: int) -> None:
    with gzip.open(ALPACA, "rt") as f:
        bases = json.load(f)
    with path.open("w") as out:
        for i in range(size):
            base, variant = bases[i % len(bases)], i // len(bases)
            words = base["output"].split() or ["empty"]
            words[(7 * variant) % len(words)] = NOUNS[variant % len(NOUNS)]
            words[(13 * variant + len(words) // 2) % len(words)] = NOUNS[-1 - variant % len(NOUNS)]
            row = {"instruction": f"{base['instruction']} (variant {variant})", "input": base["input"]}
            out.write(json.dumps({**row, "output": " ".join(words)}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 200_000])
    parser.add_argument("--select", type=int, default=1000, help="gold.select's size")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tunelake-bench-diversity"))
    args = parser.parse_args()
    for size in args.sizes:
        folder = args.workdir / str(size)
        folder.mkdir(parents=True, exist_ok=True)
        data = folder / "alpaca.jsonl"
        if not data.exists():
            corpus(data, size)
        for mode, extra in (
            ("baseline", {}),
            ("diversity+select", {"silver": {"diversity": {}}, "gold": {"select": {"size": args.select}}}),
        ):
            recipe = folder / f"{mode}.yaml"
            source = {"name": "alpaca", "path": str(data), "format": "alpaca", "license": "cc-by-nc-4.0"}
            lake = folder / f"lake-{mode}"
            subprocess.run(["rm", "-rf", str(lake)], check=True)
            recipe.write_text(yaml.safe_dump({"lake": str(lake), "sources": [source | {"origin": "human"}], **extra}))
            done = subprocess.run([sys.executable, "-c", CHILD, str(recipe)], capture_output=True, text=True)
            if done.returncode:
                sys.exit(done.stderr)
            print(size, mode, done.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
