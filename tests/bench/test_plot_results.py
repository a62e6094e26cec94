"""benchmarks/plot_results.py: rows of several `tinycomp bench --json` runs merged into one picture."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from tests.bench.scripts import load_script
from tinycomp.bench.report import Row


def row(model: str, batch: int, engine: str, us: float, vs: float | None) -> Row:
    return Row(model, batch, engine, 1, 10, us, us * 1.1, batch / us * 1e6, 1.0, None, vs)


def write_run(path: Path, rows: list[Row]) -> str:
    path.write_text(json.dumps({"rows": [asdict(r) for r in rows]}))
    return str(path)


def test_points_of_several_runs_take_the_median_of_their_medians_and_ratios(tmp_path):
    runs = [write_run(tmp_path / f"{i}.json", [row("mlp", 1, "compiled", us, vs), row("block", 32, "numpy", 9e3, 1.0)])
            for i, (us, vs) in enumerate([(10.0, 0.7), (30.0, 0.9), (12.0, 0.6)])]
    runs.append(write_run(tmp_path / "other.json", [row("block", 64, "compiled", 5e3, 0.5)]))
    merged = {(r.model, r.batch, r.engine): r for r in load_script("plot_results").merged_rows(runs)}
    assert set(merged) == {("mlp", 1, "compiled"), ("block", 32, "numpy"), ("block", 64, "compiled")}
    assert merged["mlp", 1, "compiled"].median_us == 12.0
    assert merged["mlp", 1, "compiled"].vs_numpy == 0.7  # the median ratio, never recomputed across runs
    assert merged["block", 64, "compiled"].median_us == 5e3


def test_the_merged_picture_is_drawn(tmp_path):
    pytest.importorskip("matplotlib", reason="the picture needs matplotlib (the bench extra)")
    runs = [write_run(tmp_path / "a.json", [row("block", b, e, b * 100.0 * (0.5 if e == "compiled" else 1),
                                                  0.5 if e == "compiled" else 1.0)
                                              for b in (8, 32) for e in ("numpy", "compiled")])]
    out = tmp_path / "plot.png"
    assert load_script("plot_results").main([str(out), *runs]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
