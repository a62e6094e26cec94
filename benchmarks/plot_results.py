"""Draw one picture from several `tinycomp bench --json` runs (e.g. the MLP suite and a `block` sweep,
each run three times): `python benchmarks/plot_results.py OUT.png RUN.json [RUN.json ...]`.

`tinycomp bench --plot` draws the rows of the run it made; the README's figure covers models run by
separate commands, so this merges their rows. A (model, batch, engine) point measured in several runs
is drawn at the median of its runs' medians, and its speed-up at the median of its per-run ratios
(ratios are only meaningful within one run, so they are never recomputed across runs).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from statistics import median

from tinycomp.bench.report import Row, plot


def merged_rows(paths: list[str]) -> list[Row]:
    runs: dict[tuple[str, int, str], list[Row]] = defaultdict(list)
    for path in paths:
        with open(path) as f:
            for d in json.load(f)["rows"]:
                row = Row(**d)
                runs[(row.model, row.batch, row.engine)].append(row)
    rows = []
    for same in runs.values():
        ratios = [r.vs_numpy for r in same if r.vs_numpy is not None]
        rows.append(Row(**{**same[0].__dict__, "median_us": median(r.median_us for r in same),
                           "vs_numpy": median(ratios) if ratios else None}))
    return rows


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    why_not = plot(merged_rows(argv[1:]), argv[0])
    if why_not:
        print(f"no plot: {why_not}", file=sys.stderr)
        return 1
    print(f"plot written to {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
