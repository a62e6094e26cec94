"""What each part of the bench's `lnmlp` costs: its four Linear(512, 512) alone, with GELU, with
LayerNorm, and whole, as bare native calls (one thread), timed in turn round after round.

    PYTHONPATH=. python benchmarks/lnmlp_parts.py [--batch 256] [--rounds 5]

The differences are what GELU and layer norm add to the GEMMs at their place in the model; the
GEMMs' GFLOP/s beside the bench's FMA peak tell how far the model's bound (`at the FMA peak` in
`tinycomp bench`) is from what its GEMMs reach.
"""

from __future__ import annotations

import argparse
import os
import timeit

os.environ["TINYCOMP_CACHE"] = "0"

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from tinycomp import nn  # noqa: E402
from tinycomp.bench.models import MODELS  # noqa: E402
from tinycomp.bench.runner import compiled_bare_call  # noqa: E402
from tinycomp.checks import positive_number  # noqa: E402

WIDTH, LAYERS = MODELS["lnmlp"].width, MODELS["lnmlp"].depth  # the bench model's
PARTS = {"linear": (False, False), "+gelu": (False, True), "+layer norm": (True, False), "lnmlp": (True, True)}


def build(layer_norm: bool, gelu: bool) -> nn.Sequential:
    nn.manual_seed(0)
    layers: list = []
    for _ in range(LAYERS):
        layers += [nn.LayerNorm(WIDTH)] if layer_norm else []
        layers.append(nn.Linear(WIDTH, WIDTH))
        layers += [nn.GELU()] if gelu else []
    model = nn.Sequential(*layers)
    model.eval()
    return model


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=positive_number(int), default=256)
    p.add_argument("--rounds", type=positive_number(int), default=5)
    args = p.parse_args(argv)
    threadpool_limits(1)
    x = np.random.default_rng(0).standard_normal((args.batch, WIDTH)).astype(np.float32)
    calls = {name: compiled_bare_call(build(*flags), x) for name, flags in PARTS.items()}
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, call in calls.items():
            times[name].append(min(timeit.repeat(call, number=20, repeat=5)) / 20 * 1e6)
    flops = 2 * args.batch * WIDTH * WIDTH * LAYERS
    for name, t in times.items():
        t.sort()
        gflops = flops / t[0] / 1e3
        print(f"{name:12s} min {t[0]:8.1f} us  median {t[len(t) // 2]:8.1f} us  {gflops:6.1f} GFLOP/s (GEMMs)")


if __name__ == "__main__":
    main()
