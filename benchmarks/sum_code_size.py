"""Exported code size of row sums: the .text bytes of model.o for the host and the Cortex-M4.

    PYTHONPATH=. python benchmarks/sum_code_size.py

Sums of one row of 1,000, of ten rows of 900..999 (ten run lengths: one summing loop each) and of
one row of 100,000 (split into halves: functions), exported to each target; the sizes come from
binutils' `size -A` (`arm-none-eabi-size` for the Cortex-M4). Run it from two checkouts
(PYTHONPATH) to compare two ways of emitting the sums.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import tinycomp as tc
from tinycomp.nn import Layer, Tensor, concat

TARGETS = {"host": "size", "thumbv7em-none-eabihf": "arm-none-eabi-size"}
CASES = {"1 row of 1000": [1000], "10 rows 900..999": list(range(900, 1000, 11)), "1 row of 100000": [100_000]}


class Sums(Layer):
    def __init__(self, lengths: list[int]):
        self.lengths = lengths

    def forward(self, x: Tensor) -> Tensor:
        return concat([x[:, :k].sum(axis=-1, keepdims=True) for k in self.lengths], axis=-1)


def text_bytes(target: str, lengths: list[int]) -> int:
    with tempfile.TemporaryDirectory() as folder:
        tc.export(Sums(lengths), Path(folder), input_shape=(None, max(lengths)), target=target)
        listing = subprocess.run([TARGETS[target], "-A", str(Path(folder) / "model.o")], capture_output=True,
                                 text=True, check=True).stdout
    return sum(int(line.split()[1]) for line in listing.splitlines() if line.startswith(".text"))


def main() -> None:
    targets = [t for t, tool in TARGETS.items() if shutil.which(tool)]
    for label, lengths in CASES.items():
        print(f"{label:18} " + "; ".join(f"{t} .text {text_bytes(t, lengths):,} B" for t in targets))


if __name__ == "__main__":
    main()
