"""torch modules more than one importer test brings in (from_torch directly, and through a torch
ONNX export). Import after `pytest.importorskip("torch")`."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class StudentBlock(nn.Module):
    """A pre-norm transformer block as a student writes it: views with sizes read from x.shape,
    transposes, q @ k^T, softmax (with `causal`, after masked_fill from a buffer), a tanh-GELU MLP,
    residual adds."""

    def __init__(self, embed: int = 16, heads: int = 2, causal: bool = False, context: int = 8):
        super().__init__()
        self.heads, self.causal = heads, causal
        if causal:  # as nanoGPT writes it: a buffer for the longest context, cut to the input's length
            self.register_buffer("mask", torch.tril(torch.ones(context, context)).view(1, 1, context, context))
        self.q, self.k, self.v, self.o = (nn.Linear(embed, embed) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(embed), nn.LayerNorm(embed)
        self.up, self.down = nn.Linear(embed, 4 * embed), nn.Linear(4 * embed, embed)

    def forward(self, x):
        n, s, e = x.shape
        y = self.ln1(x)
        q, k, v = (p(y).view(n, s, self.heads, e // self.heads).transpose(1, 2) for p in (self.q, self.k, self.v))
        scores = q @ k.transpose(-2, -1) / (e // self.heads) ** 0.5
        if self.causal:
            scores = scores.masked_fill(self.mask[:, :, :s, :s] == 0, float("-inf"))
        a = torch.softmax(scores, dim=-1) @ v
        x = x + self.o(a.transpose(1, 2).reshape(n, s, e))
        return x + self.down(F.gelu(self.up(self.ln2(x)), approximate="tanh"))


class FlattenThenLinear(nn.Module):
    """x.view(x.size(0), -1) then a Linear: (N, 3, 4) -> (N, 3)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        return self.fc(x.view(x.size(0), -1))


class NanoGPTAttention(nn.Module):
    """nanoGPT's CausalSelfAttention as it is written: one projection split into q, k and v, a causal
    buffer cut to the input's length and applied with masked_fill, the last position read out."""

    def __init__(self, embed: int = 16, heads: int = 2, context: int = 8, last: bool = False):
        super().__init__()
        self.c_attn, self.c_proj = nn.Linear(embed, 3 * embed), nn.Linear(embed, embed)
        self.heads, self.embed, self.last = heads, embed, last
        self.register_buffer("bias", torch.tril(torch.ones(context, context)).view(1, 1, context, context))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.embed, dim=2)
        k = k.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        q = q.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        v = v.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / (k.size(-1) ** 0.5))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        y = (F.softmax(att, dim=-1) @ v).transpose(1, 2).contiguous().view(B, T, C)
        y = self.c_proj(y)
        return y[:, -1, :] if self.last else y


class Head(nn.Module):
    """One head of the attention of Karpathy's "Let's build GPT": a causal buffer cut to the input's
    length, masked_fill, softmax, dropout."""

    def __init__(self, embed: int, size: int, context: int):
        super().__init__()
        self.key, self.query, self.value = (nn.Linear(embed, size, bias=False) for _ in range(3))
        self.register_buffer("tril", torch.tril(torch.ones(context, context)))
        self.dropout = nn.Dropout(0.1)

    def forward(self, x):
        B, T, C = x.shape
        k, q = self.key(x), self.query(x)
        wei = q @ k.transpose(-2, -1) * k.shape[-1] ** -0.5
        wei = wei.masked_fill(self.tril[:T, :T] == 0, float("-inf"))
        wei = self.dropout(F.softmax(wei, dim=-1))
        return wei @ self.value(x)


class KarpathyBlock(nn.Module):
    """The block of "Let's build GPT": heads joined with torch.cat, a projection, a ReLU MLP, pre-norm."""

    def __init__(self, embed: int = 16, heads: int = 4, context: int = 8):
        super().__init__()
        self.heads = nn.ModuleList([Head(embed, embed // heads, context) for _ in range(heads)])
        self.proj = nn.Linear(embed, embed)
        self.ffwd = nn.Sequential(nn.Linear(embed, 4 * embed), nn.ReLU(), nn.Linear(4 * embed, embed), nn.Dropout(0.1))
        self.ln1, self.ln2 = nn.LayerNorm(embed), nn.LayerNorm(embed)

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.proj(torch.cat([head(h) for head in self.heads], dim=-1))
        return x + self.ffwd(self.ln2(x))


class FlashAttention(nn.Module):
    """nanoGPT's attention on its flash path: F.scaled_dot_product_attention, causal (as nanoGPT calls
    it), or with a bool mask cut from a buffer, a float mask (added) and its own scale, or a bool
    mask computed from the input."""

    def __init__(self, embed: int = 16, heads: int = 2, mode: str = "causal"):
        super().__init__()
        self.c_attn, self.c_proj = nn.Linear(embed, 3 * embed), nn.Linear(embed, embed)
        self.heads, self.embed, self.mode = heads, embed, mode
        self.register_buffer("keep", (torch.rand(8, 8) < 0.7) | torch.eye(8, dtype=torch.bool))
        self.register_buffer("bias", torch.randn(8, 8))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.embed, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        if self.mode == "causal":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.1 if self.training else 0,
                                               is_causal=True)
        elif self.mode == "bool-mask":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.keep[:T, :T])
        elif self.mode == "float-mask":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias[:T, :T], scale=0.3)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=(x.sum(-1) > -3)[:, None, None, :])
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
