#!/usr/bin/env python3
"""PyTorch reference for wick's RNN encoder-decoders (arch = "rnn"): writes golden fixtures
for crates/wick-model/tests/model/golden.rs.

Written the way PyTorch users write these models, independently of wick's code: the encoder
is one bidirectional `nn.GRU`/`nn.LSTM` over packed sequences (so padding is skipped by
PyTorch's packing, not by wick's masking), the decoder a loop over `nn.GRUCell`/`nn.LSTMCell`
stacks with each attention scoring function written from its paper's formula, label-smoothed
cross-entropy normalised by target tokens. It draws random weights, runs a batch with padding
on both sides, and saves the weights under wick's parameter names with the inputs, the
logits, the loss and the gradient of every parameter.

    python -m venv .venv && .venv/bin/pip install torch safetensors
    .venv/bin/python scripts/reference/golden_rnn.py
"""
import json
import pathlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates/wick-model/tests/fixtures"
PAD, BOS, EOS = 0, 1, 2
E, H, LAYERS = 12, 16, 2


class Ref(nn.Module):
    def __init__(self, cfg, vocab):
        super().__init__()
        self.cfg = cfg
        cell, att = cfg["cell"], cfg["attention"]
        rnn = nn.GRU if cell == "gru" else nn.LSTM
        cell_t = nn.GRUCell if cell == "gru" else nn.LSTMCell
        self.src_embed = nn.Embedding(vocab, E)
        self.tgt_embed = nn.Embedding(vocab, E)  # also the output layer (tie "decoder")
        self.out_bias = nn.Parameter(torch.zeros(vocab))
        self.encoder = rnn(E, H // 2, num_layers=LAYERS, bidirectional=True, batch_first=True)
        self.bridge_h = nn.Linear(H, H)
        self.bridge_c = nn.Linear(H, H) if cell == "lstm" else None
        luong = att != "bahdanau"
        feed = luong and cfg["input_feeding"]
        conditional = cfg.get("conditional", False)
        d_in = (H if conditional else E + H) if not luong else (2 * E if feed else E)
        # Nematus' conditional GRU: a first cell over the previous word queries the attention.
        self.first = cell_t(E, H) if conditional else None
        self.decoder = nn.ModuleList(
            [cell_t(d_in if i == 0 else H, H) for i in range(LAYERS)])
        self.key = None if att == "luong_dot" else nn.Linear(H, H, bias=False)
        additive = att in ("bahdanau", "luong_concat")
        self.query = nn.Linear(H, H, bias=False) if additive else None
        self.v = nn.Parameter(torch.randn(1, H)) if additive else None
        self.combine = nn.Linear(2 * H + E if not luong else 2 * H, E)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.4 * torch.randn_like(p))

    def wick_params(self):
        """Parameters under wick's names."""
        p = {"src_embed.weight": self.src_embed.weight, "tgt_embed.weight": self.tgt_embed.weight,
             "output.bias": self.out_bias,
             "bridge.h.weight": self.bridge_h.weight, "bridge.h.bias": self.bridge_h.bias,
             "combine.weight": self.combine.weight, "combine.bias": self.combine.bias}
        if self.bridge_c is not None:
            p["bridge.c.weight"] = self.bridge_c.weight
            p["bridge.c.bias"] = self.bridge_c.bias
        for layer in range(LAYERS):
            for direction, suffix in (("forward", ""), ("backward", "_reverse")):
                for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    p[f"encoder.layers.{layer}.{direction}.{kind}"] = getattr(
                        self.encoder, f"{kind}_l{layer}{suffix}")
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                p[f"decoder.layers.{layer}.{kind}"] = getattr(self.decoder[layer], kind)
        if self.first is not None:
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                p[f"decoder.conditional.{kind}"] = getattr(self.first, kind)
        if self.key is not None:
            p["attention.key.weight"] = self.key.weight
        if self.query is not None:
            p["attention.query.weight"] = self.query.weight
            p["attention.v"] = self.v
        return p

    def score(self, q, states, keys):
        """q (b, H), states/keys (b, s, H) → scores (b, s), by the papers' formulas."""
        att = self.cfg["attention"]
        if att in ("bahdanau", "luong_concat"):
            return (torch.tanh(self.query(q)[:, None, :] + keys) * self.v).sum(-1)
        if att == "luong_dot":
            return torch.einsum("bh,bsh->bs", q, states)
        return torch.einsum("bh,bsh->bs", q, keys)  # general: qᵀ (W h̄)

    def forward(self, src, src_len, tgt_in):
        lstm = self.cfg["cell"] == "lstm"
        packed = pack_padded_sequence(self.src_embed(src), src_len, batch_first=True,
                                      enforce_sorted=False)
        out, last = self.encoder(packed)
        states, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
        h_n = last[0] if lstm else last
        h0 = torch.tanh(self.bridge_h(torch.cat([h_n[-2], h_n[-1]], -1)))
        c0 = torch.tanh(self.bridge_c(torch.cat([last[1][-2], last[1][-1]], -1))) if lstm else None
        keys = self.key(states) if self.key is not None else states
        pad = torch.arange(src.shape[1])[None, :] >= src_len[:, None]
        hs = [h0] * LAYERS
        cs = [c0] * LAYERS
        luong = self.cfg["attention"] != "bahdanau"
        feed = torch.zeros(src.shape[0], E) if luong and self.cfg["input_feeding"] else None

        def attend(q):
            probs = torch.softmax(self.score(q, states, keys).masked_fill(pad, float("-inf")), -1)
            return torch.einsum("bs,bsh->bh", probs, states)

        def stack(x):
            for i, cell in enumerate(self.decoder):
                if lstm:
                    hs[i], cs[i] = cell(x, (hs[i], cs[i]))
                else:
                    hs[i] = cell(x, hs[i])
                x = hs[i]
            return x

        outs = []
        for t in range(tgt_in.shape[1]):
            emb = self.tgt_embed(tgt_in[:, t])
            if luong:
                h = stack(emb if feed is None else torch.cat([emb, feed], -1))
                o = torch.tanh(self.combine(torch.cat([h, attend(h)], -1)))
                if feed is not None:
                    feed = o
            elif self.first is not None:
                # s' = cell₁(E y, s₀); c = attend(s'); the first layer goes on from s' over c.
                if lstm:
                    hs[0], cs[0] = self.first(emb, (hs[0], cs[0]))
                else:
                    hs[0] = self.first(emb, hs[0])
                c = attend(hs[0])
                h = stack(c)
                o = torch.tanh(self.combine(torch.cat([h, c, emb], -1)))
            else:
                c = attend(hs[-1])
                h = stack(torch.cat([emb, c], -1))
                o = torch.tanh(self.combine(torch.cat([h, c, emb], -1)))
            outs.append(o)
        return torch.stack(outs, 1) @ self.tgt_embed.weight.T + self.out_bias


def make(name, cfg, seed):
    torch.manual_seed(seed)
    vocab, eps = 29, 0.1
    model = Ref(cfg, vocab)
    src_rows = [[5, 9, 11, 17, 4, 8, EOS], [8, 8, 21, EOS], [13, EOS]]
    tgt_rows = [[7, 12, 19, 6], [22, 10], [3]]

    src = torch.tensor([r + [PAD] * (7 - len(r)) for r in src_rows])
    src_len = torch.tensor([len(r) for r in src_rows])
    src_mask = (torch.arange(7)[None, :] < src_len[:, None]).float()
    tgt_in = torch.tensor([[BOS] + r + [PAD] * (4 - len(r)) for r in tgt_rows])
    tgt_out = torch.tensor([r + [EOS] + [PAD] * (4 - len(r)) for r in tgt_rows])
    tgt_mask = (tgt_out != PAD).float()

    logits = model(src, src_len, tgt_in)
    loss = F.cross_entropy(logits.reshape(-1, vocab), tgt_out.reshape(-1), ignore_index=PAD,
                           label_smoothing=eps, reduction="sum") / tgt_mask.sum()
    loss.backward()
    params = model.wick_params()
    tensors = {k: v.detach().contiguous() for k, v in params.items()}
    tensors.update({f"grad.{k}": v.grad.contiguous() for k, v in params.items()})
    tensors.update({
        "input.src": src.to(torch.int64), "input.src_mask": src_mask,
        "input.tgt_in": tgt_in.to(torch.int64), "input.tgt_out": tgt_out.to(torch.int64),
        "input.tgt_mask": tgt_mask,
        "expected.logits": logits.detach().contiguous(), "expected.loss": loss.detach().reshape(1),
    })
    full = {"arch": "rnn", "embedding_dim": E, "hidden_size": H, "encoder_layers": LAYERS,
            "decoder_layers": LAYERS, "bridge": True, "dropout": 0.0,
            "tie_embeddings": "decoder", **cfg}
    meta = {"config": json.dumps(full), "vocab": str(vocab), "label_smoothing": str(eps),
            "torch": torch.__version__}
    save_file(tensors, str(OUT / f"{name}.safetensors"), metadata=meta)
    print(f"{name}: loss {loss.item():.6f}")


if __name__ == "__main__":
    make("golden_rnn_gru_bahdanau", {"cell": "gru", "attention": "bahdanau", "input_feeding": True}, 1)
    make("golden_rnn_lstm_bahdanau", {"cell": "lstm", "attention": "bahdanau", "input_feeding": True}, 2)
    make("golden_rnn_gru_luong_dot", {"cell": "gru", "attention": "luong_dot", "input_feeding": False}, 3)
    make("golden_rnn_lstm_luong_general", {"cell": "lstm", "attention": "luong_general", "input_feeding": True}, 4)
    make("golden_rnn_gru_luong_concat", {"cell": "gru", "attention": "luong_concat", "input_feeding": True}, 5)
    make("golden_rnn_lstm_luong_dot", {"cell": "lstm", "attention": "luong_dot", "input_feeding": True}, 6)
    make("golden_rnn_gru_conditional", {"cell": "gru", "attention": "bahdanau", "input_feeding": True,
                                        "conditional": True}, 7)
    make("golden_rnn_lstm_conditional", {"cell": "lstm", "attention": "bahdanau", "input_feeding": True,
                                         "conditional": True}, 8)
