#!/usr/bin/env python3
"""PyTorch reference for wick's Transformer: writes golden fixtures for
crates/wick-model/tests/golden.rs.

An independent PyTorch implementation of the same architecture (fused QKV / KV projections,
√d-scaled embeddings, interleaved sinusoidal positions, post- or pre-norm, tied or untied
embeddings, key-padding and causal masks, label-smoothed cross-entropy normalised by target
tokens). It draws random weights, runs a batch with padding on both sides, and saves the
weights under wick's parameter names together with the inputs, the logits, the loss and the
gradient of every parameter.

    python -m venv .venv && .venv/bin/pip install torch safetensors
    .venv/bin/python scripts/reference/golden_transformer.py
"""
import json
import math
import pathlib

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates/wick-model/tests/fixtures"
PAD, BOS, EOS = 0, 1, 2
MASKED = -1e9


def sinusoid(n, d):
    pe = torch.zeros(n, d, dtype=torch.float64)
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(d // 2, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, 2 * i / d)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle)
    return pe.float()


class Ref:
    def __init__(self, cfg, vocab, gen):
        self.cfg, self.vocab = cfg, vocab
        d, ff = cfg["d_model"], cfg["d_ff"]
        self.p = {}

        def rnd(name, *shape, scale=0.3, offset=0.0):
            self.p[name] = (offset + scale * torch.randn(*shape, generator=gen)).requires_grad_()

        def linear(name, d_in, d_out):
            rnd(f"{name}.weight", d_out, d_in)
            rnd(f"{name}.bias", d_out, scale=0.1)

        def norm(name):
            rnd(f"{name}.weight", d, scale=0.1, offset=1.0)
            rnd(f"{name}.bias", d, scale=0.1)

        if cfg["tie_embeddings"] == "all":
            rnd("embed.weight", vocab, d)
        else:
            rnd("src_embed.weight", vocab, d)
            rnd("tgt_embed.weight", vocab, d)
            if cfg["tie_embeddings"] == "none":
                rnd("output_proj.weight", vocab, d)
        for i in range(cfg["encoder_layers"]):
            pre = f"encoder.layers.{i}"
            linear(f"{pre}.self_attn.qkv_proj", d, 3 * d)
            linear(f"{pre}.self_attn.out_proj", d, d)
            norm(f"{pre}.self_attn_norm")
            linear(f"{pre}.ffn.fc1", d, ff)
            linear(f"{pre}.ffn.fc2", ff, d)
            norm(f"{pre}.ffn_norm")
        for i in range(cfg["decoder_layers"]):
            pre = f"decoder.layers.{i}"
            linear(f"{pre}.self_attn.qkv_proj", d, 3 * d)
            linear(f"{pre}.self_attn.out_proj", d, d)
            norm(f"{pre}.self_attn_norm")
            linear(f"{pre}.cross_attn.q_proj", d, d)
            linear(f"{pre}.cross_attn.kv_proj", d, 2 * d)
            linear(f"{pre}.cross_attn.out_proj", d, d)
            norm(f"{pre}.cross_attn_norm")
            linear(f"{pre}.ffn.fc1", d, ff)
            linear(f"{pre}.ffn.fc2", ff, d)
            norm(f"{pre}.ffn_norm")
        if cfg["norm"] == "pre":
            norm("encoder.final_norm")
            norm("decoder.final_norm")

    def lin(self, name, x):
        return x @ self.p[f"{name}.weight"].T + self.p[f"{name}.bias"]

    def ln(self, name, x):
        return F.layer_norm(x, (x.shape[-1],), self.p[f"{name}.weight"], self.p[f"{name}.bias"], self.cfg["layer_norm_eps"])

    def attend(self, q, k, v, bias):
        b, tq, d = q.shape
        h = self.cfg["n_heads"]
        dk = d // h
        split = lambda x: x.view(x.shape[0], x.shape[1], h, dk).transpose(1, 2)
        q, k, v = split(q), split(k), split(v)
        scores = q @ k.transpose(-1, -2) / math.sqrt(dk) + bias
        probs = scores.softmax(-1)
        return (probs @ v).transpose(1, 2).reshape(b, tq, d), probs

    def block(self, x, norm_name, f):
        if self.cfg["norm"] == "pre":
            return x + f(self.ln(norm_name, x))
        return self.ln(norm_name, x + f(x))

    def embeds(self):
        c = self.cfg["tie_embeddings"]
        if c == "all":
            e = self.p["embed.weight"]
            return e, e, e
        out = self.p["output_proj.weight"] if c == "none" else self.p["tgt_embed.weight"]
        return self.p["src_embed.weight"], self.p["tgt_embed.weight"], out

    def forward(self, src, src_mask, tgt_in):
        d = self.cfg["d_model"]
        src_e, tgt_e, out_w = self.embeds()
        pe = sinusoid(self.cfg["max_positions"], d)
        src_bias = ((1.0 - src_mask) * MASKED)[:, None, None, :]
        x = src_e[src] * math.sqrt(d) + pe[: src.shape[1]]
        for i in range(self.cfg["encoder_layers"]):
            pre = f"encoder.layers.{i}"

            def sa(y, pre=pre):
                q, k, v = self.lin(f"{pre}.self_attn.qkv_proj", y).split(d, -1)
                return self.lin(f"{pre}.self_attn.out_proj", self.attend(q, k, v, src_bias)[0])

            x = self.block(x, f"{pre}.self_attn_norm", sa)
            x = self.block(x, f"{pre}.ffn_norm", lambda y, pre=pre: self.lin(f"{pre}.ffn.fc2", torch.relu(self.lin(f"{pre}.ffn.fc1", y))))
        if self.cfg["norm"] == "pre":
            x = self.ln("encoder.final_norm", x)
        memory = x
        t = tgt_in.shape[1]
        causal = torch.triu(torch.full((t, t), MASKED), diagonal=1)[None, None]
        y = tgt_e[tgt_in] * math.sqrt(d) + pe[:t]
        for i in range(self.cfg["decoder_layers"]):
            pre = f"decoder.layers.{i}"

            def sa(z, pre=pre):
                q, k, v = self.lin(f"{pre}.self_attn.qkv_proj", z).split(d, -1)
                return self.lin(f"{pre}.self_attn.out_proj", self.attend(q, k, v, causal)[0])

            def ca(z, pre=pre):
                q = self.lin(f"{pre}.cross_attn.q_proj", z)
                k, v = self.lin(f"{pre}.cross_attn.kv_proj", memory).split(d, -1)
                return self.lin(f"{pre}.cross_attn.out_proj", self.attend(q, k, v, src_bias)[0])

            y = self.block(y, f"{pre}.self_attn_norm", sa)
            y = self.block(y, f"{pre}.cross_attn_norm", ca)
            y = self.block(y, f"{pre}.ffn_norm", lambda z, pre=pre: self.lin(f"{pre}.ffn.fc2", torch.relu(self.lin(f"{pre}.ffn.fc1", z))))
        if self.cfg["norm"] == "pre":
            y = self.ln("decoder.final_norm", y)
        return y @ out_w.T


def make(name, cfg, seed):
    gen = torch.Generator().manual_seed(seed)
    vocab = 23
    model = Ref(cfg, vocab, gen)
    # Source rows of lengths 6, 4, 2 (incl. </s>), target rows of lengths 5, 3, 1.
    src_rows = [[5, 9, 11, 17, 4, EOS], [8, 8, 21, EOS], [13, EOS]]
    tgt_rows = [[7, 12, 19, 6], [22, 10], []]
    s, t = 6, 5
    src = torch.full((3, s), PAD, dtype=torch.long)
    src_mask = torch.zeros(3, s)
    tgt_in = torch.full((3, t), PAD, dtype=torch.long)
    tgt_out = torch.full((3, t), PAD, dtype=torch.long)
    tgt_mask = torch.zeros(3, t)
    for r, row in enumerate(src_rows):
        src[r, : len(row)] = torch.tensor(row)
        src_mask[r, : len(row)] = 1
    for r, row in enumerate(tgt_rows):
        tin, tout = [BOS] + row, row + [EOS]
        tgt_in[r, : len(tin)] = torch.tensor(tin)
        tgt_out[r, : len(tout)] = torch.tensor(tout)
        tgt_mask[r, : len(tout)] = 1
    logits = model.forward(src, src_mask, tgt_in)
    eps = 0.1
    loss = F.cross_entropy(logits.reshape(-1, vocab), tgt_out.reshape(-1), ignore_index=PAD, label_smoothing=eps, reduction="sum") / tgt_mask.sum()
    loss.backward()
    tensors = {k: v.detach().contiguous() for k, v in model.p.items()}
    tensors.update({f"grad.{k}": v.grad.contiguous() for k, v in model.p.items()})
    tensors.update({
        "input.src": src, "input.src_mask": src_mask, "input.tgt_in": tgt_in,
        "input.tgt_out": tgt_out, "input.tgt_mask": tgt_mask,
        "expected.logits": logits.detach().contiguous(), "expected.loss": loss.detach().reshape(1),
    })
    meta = {"config": json.dumps(cfg), "vocab": str(vocab), "label_smoothing": str(eps), "torch": torch.__version__}
    OUT.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(OUT / f"{name}.safetensors"), metadata=meta)
    print(name, "loss", loss.item())


BASE = dict(d_model=16, n_heads=2, encoder_layers=2, decoder_layers=2, d_ff=24, dropout=0.0,
            attention_dropout=0.0, activation_dropout=0.0, max_positions=32, layer_norm_eps=1e-5)
make("golden_post_tied", dict(BASE, norm="post", tie_embeddings="all"), 0)
make("golden_pre_untied", dict(BASE, norm="pre", tie_embeddings="none"), 1)
make("golden_post_decoder", dict(BASE, norm="post", tie_embeddings="decoder"), 2)
