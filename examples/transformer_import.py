"""A transformer block written in PyTorch the way a student writes it (views, transposes, q @ k^T,
softmax, a GELU MLP, pre-norm residuals), brought into tinycomp two ways — read directly with
`from_torch`, and exported to ONNX by torch then read with `from_onnx` — compiled, checked
against torch, and timed.

    pip install -e '.[torch,onnx]' && python examples/transformer_import.py [--style nanogpt|nanogpt-flash]

`--style nanogpt` writes the block as nanoGPT does instead: one projection split into q, k and v,
a causal mask buffer cut to the input's length and applied with masked_fill; `nanogpt-flash` is
nanoGPT's path on torch 2, F.scaled_dot_product_attention(..., is_causal=True).

Prints, for each way in: the largest difference from torch's output, which fused kernels the
compiled model runs (one attention, two layer norms: tinycomp's passes find them in the imported
graph), and the median time of a batch against torch eager (one thread each).
"""

from __future__ import annotations

import argparse
import io
import time
import warnings

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

import tinycomp as tc
from tinycomp.interop import from_onnx, from_torch

EMBED, HEADS, SEQ, BATCH = 128, 4, 64, 32


class Block(nn.Module):
    def __init__(self, embed: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(embed), nn.LayerNorm(embed)
        self.q, self.k, self.v, self.out = (nn.Linear(embed, embed) for _ in range(4))
        self.up, self.down = nn.Linear(embed, 4 * embed), nn.Linear(4 * embed, embed)

    def forward(self, x):
        n, s, e = x.shape
        h = self.ln1(x)
        q, k, v = (p(h).view(n, s, self.heads, e // self.heads).transpose(1, 2) for p in (self.q, self.k, self.v))
        weights = torch.softmax(q @ k.transpose(-2, -1) / (e // self.heads) ** 0.5, dim=-1)
        x = x + self.out((weights @ v).transpose(1, 2).reshape(n, s, e))
        return x + self.down(torch.nn.functional.gelu(self.up(self.ln2(x))))


class NanoGPTBlock(nn.Module):
    """nanoGPT's Block: CausalSelfAttention (c_attn split into q, k, v; masked_fill of the `bias`
    buffer cut to T), then the MLP, each after a LayerNorm."""

    def __init__(self, embed: int, heads: int, context: int = 1024, flash: bool = False):
        super().__init__()
        self.heads, self.embed, self.flash = heads, embed, flash
        self.ln_1, self.ln_2 = nn.LayerNorm(embed), nn.LayerNorm(embed)
        self.c_attn, self.c_proj = nn.Linear(embed, 3 * embed), nn.Linear(embed, embed)
        self.c_fc, self.mlp_proj = nn.Linear(embed, 4 * embed), nn.Linear(4 * embed, embed)
        self.register_buffer("bias", torch.tril(torch.ones(context, context)).view(1, 1, context, context))

    def attention(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.embed, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        if self.flash:
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / (k.size(-1) ** 0.5))
            att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
            y = torch.softmax(att, dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))

    def forward(self, x):
        x = x + self.attention(self.ln_1(x))
        return x + self.mlp_proj(torch.nn.functional.gelu(self.c_fc(self.ln_2(x))))


def median_ms(fn, x, budget_s: float = 1.0) -> float:
    fn(x)
    times = []
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def onnx_bytes(module: nn.Module, sample: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(2, *sample),), buffer, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--style", choices=("student", "nanogpt", "nanogpt-flash"), default="student",
                        help="how the torch block is written (default: student)")
    style = parser.parse_args(argv).style
    torch.manual_seed(0)
    torch.set_num_threads(1)
    module = Block(EMBED, HEADS) if style == "student" else NanoGPTBlock(EMBED, HEADS, flash=style == "nanogpt-flash")
    module.eval()
    sample = (SEQ, EMBED)
    x = np.random.default_rng(0).standard_normal((BATCH, *sample)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()

    def torch_eager(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(a)).numpy()

    print(f"{type(module).__name__}(embed {EMBED}, {HEADS} heads) on ({BATCH}, {SEQ}, {EMBED}), one thread")
    with threadpool_limits(limits=1):
        torch_ms = median_ms(torch_eager, x)
        print(f"torch eager: {torch_ms:.2f} ms")
        for way, load in (("from_torch", lambda: from_torch(module, input_shape=(None, *sample))),
                          ("from_onnx", lambda: from_onnx(onnx_bytes(module, sample)))):
            start = time.perf_counter()
            model = load()
            imported_ms = (time.perf_counter() - start) * 1e3
            fast = tc.compile(model, input_shape=(None, *sample), threads=1)
            kernels = sorted(fast.graph.op(n) for n in fast.graph.nodes() if fast.graph.op(n) in
                             ("attention", "layer_norm", "linear", "elementwise"))
            diff = float(np.abs(fast(x).data - want).max())
            ms = median_ms(fast, x)
            print(f"{way}: imported in {imported_ms:.0f} ms, compiled in {fast.stats.compile_ms:.0f} ms; "
                  f"max |difference from torch| {diff:.2e}; kernels: "
                  + ", ".join(f"{kernels.count(k)} {k}" for k in dict.fromkeys(kernels)))
            print(f"{way}: compiled {ms:.2f} ms = {ms / torch_ms:.2f} x torch eager")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
