#!/usr/bin/env python3
"""PyTorch reference for wick's ConvS2S (arch = "conv"): writes golden fixtures for
crates/wick-model/tests/model/golden.rs.

Written as fairseq's `fconv` is, independently of wick's code: `F.conv1d` over
time-major-transposed inputs (centred padding in the encoder, k − 1 zeros on the left in the
decoder), `F.glu`, weight normalisation `w = g·v/‖v‖` per output channel, learned positions,
residuals scaled by √½, an attention in every decoder layer over z and (z + e)·√½ with the
context scaled by s·√(1/s), the encoder output's gradient scaled by 1/(2·decoder layers),
label-smoothed cross-entropy normalised by target tokens. Saves the weights under wick's
names (a convolution's `(out, in, k)` weight as wick's `(out, k·in)`, tap-major) with the
inputs, the logits, the loss and every parameter's gradient.

    python -m venv .venv && .venv/bin/pip install torch safetensors
    .venv/bin/python scripts/reference/golden_conv.py
"""
import json
import math
import pathlib

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates/wick-model/tests/fixtures"
PAD, BOS, EOS = 0, 1, 2
E, H, LAYERS, MAX_POS = 12, 16, 2, 32


class GradMultiply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def run(cfg, vocab, seed):
    gen = torch.Generator().manual_seed(seed)
    k = cfg["kernel_size"]
    p = {}  # PyTorch-shaped parameters

    def rnd(name, *shape, scale=0.4):
        p[name] = (scale * torch.randn(*shape, generator=gen)).requires_grad_()

    def wn_linear(name, d_in, d_out):
        rnd(f"{name}.weight_v", d_out, d_in)
        rnd(f"{name}.weight_g", d_out, 1)
        rnd(f"{name}.bias", d_out, scale=0.1)

    def wn_conv(name):
        rnd(f"{name}.weight_v", 2 * H, H, k)  # Conv1d layout (out, in, k)
        rnd(f"{name}.weight_g", 2 * H, 1, 1)
        rnd(f"{name}.bias", 2 * H, scale=0.1)

    rnd("src_embed.weight", vocab, E)
    rnd("tgt_embed.weight", vocab, E)
    rnd("src_positions.weight", MAX_POS, E)
    rnd("tgt_positions.weight", MAX_POS, E)
    rnd("output.bias", vocab, scale=0.1)
    for side in ("encoder", "decoder"):
        wn_linear(f"{side}.fc_in", E, H)
        wn_linear(f"{side}.fc_out", H, E)
    for layer in range(LAYERS):
        wn_conv(f"encoder.layers.{layer}")
        wn_conv(f"decoder.layers.{layer}.conv")
        wn_linear(f"decoder.layers.{layer}.attn_in", H, E)
        wn_linear(f"decoder.layers.{layer}.attn_out", E, H)

    def weight(name):
        v, g = p[f"{name}.weight_v"], p[f"{name}.weight_g"]
        dims = tuple(range(1, v.dim()))
        return g * v / v.pow(2).sum(dims, keepdim=True).sqrt()

    def linear(name, x):
        return F.linear(x, weight(name), p[f"{name}.bias"])

    def conv(name, x, left, right):
        """x (b, t, H) → GLU(conv1d) (b, t, H)."""
        y = F.conv1d(F.pad(x.transpose(1, 2), (left, right)), weight(name), p[f"{name}.bias"])
        return F.glu(y, dim=1).transpose(1, 2)

    src = torch.tensor([[5, 9, 11, 17, 4, 8, EOS], [8, 8, 21, EOS, PAD, PAD, PAD],
                        [13, EOS, PAD, PAD, PAD, PAD, PAD]])
    pad = src == PAD
    tgt_in = torch.tensor([[BOS, 7, 12, 19, 6], [BOS, 22, 10, PAD, PAD], [BOS, 3, PAD, PAD, PAD]])
    tgt_out = torch.tensor([[7, 12, 19, 6, EOS], [22, 10, EOS, PAD, PAD], [3, EOS, PAD, PAD, PAD]])
    half = math.sqrt(0.5)

    # Encoder.
    e = p["src_embed.weight"][src] + p["src_positions.weight"][: src.shape[1]]
    h = linear("encoder.fc_in", e)
    for layer in range(LAYERS):
        x = h.masked_fill(pad[..., None], 0.0)
        h = (conv(f"encoder.layers.{layer}", x, (k - 1) // 2, (k - 1) // 2) + h) * half
    z = linear("encoder.fc_out", h).masked_fill(pad[..., None], 0.0)
    z = GradMultiply.apply(z, 1.0 / (2.0 * LAYERS))
    values = (z + e) * half
    s = (~pad).sum(1).float()[:, None, None]

    # Decoder.
    g = p["tgt_embed.weight"][tgt_in] + p["tgt_positions.weight"][: tgt_in.shape[1]]
    h = linear("decoder.fc_in", g)
    for layer in range(LAYERS):
        name = f"decoder.layers.{layer}"
        x = conv(f"{name}.conv", h, k - 1, 0)
        d = (linear(f"{name}.attn_in", x) + g) * half
        scores = torch.bmm(d, z.transpose(1, 2)).masked_fill(pad[:, None, :], float("-inf"))
        c = torch.bmm(torch.softmax(scores, -1), values) * (s * s.rsqrt())
        x = (linear(f"{name}.attn_out", c) + x) * half
        h = (x + h) * half
    out = linear("decoder.fc_out", h)
    logits = out @ p["tgt_embed.weight"].T + p["output.bias"]
    return p, src, pad, tgt_in, tgt_out, logits


def make(name, cfg, seed):
    vocab, eps = 29, 0.1
    p, src, pad, tgt_in, tgt_out, logits = run(cfg, vocab, seed)
    tgt_mask = (tgt_out != PAD).float()
    loss = F.cross_entropy(logits.reshape(-1, vocab), tgt_out.reshape(-1), ignore_index=PAD,
                           label_smoothing=eps, reduction="sum") / tgt_mask.sum()
    loss.backward()

    def to_wick(t):
        # (out, in, k) → (out, k·in), tap-major; (out, 1, 1) → (out, 1).
        if t.dim() == 3 and t.shape[1:] == (1, 1):
            return t.reshape(t.shape[0], 1)
        if t.dim() == 3:
            return t.permute(0, 2, 1).reshape(t.shape[0], -1)
        return t

    tensors = {k: to_wick(v.detach()).contiguous() for k, v in p.items()}
    tensors.update({f"grad.{k}": to_wick(v.grad).contiguous() for k, v in p.items()})
    tensors.update({
        "input.src": src.to(torch.int64), "input.src_mask": (~pad).float(),
        "input.tgt_in": tgt_in.to(torch.int64), "input.tgt_out": tgt_out.to(torch.int64),
        "input.tgt_mask": tgt_mask,
        "expected.logits": logits.detach().contiguous(), "expected.loss": loss.detach().reshape(1),
    })
    full = {"arch": "conv", "embedding_dim": E, "hidden_size": H, "encoder_layers": LAYERS,
            "decoder_layers": LAYERS, "dropout": 0.0, "max_positions": MAX_POS,
            "tie_embeddings": "decoder", **cfg}
    meta = {"config": json.dumps(full), "vocab": str(vocab), "label_smoothing": str(eps),
            "torch": torch.__version__}
    save_file(tensors, str(OUT / f"{name}.safetensors"), metadata=meta)
    print(f"{name}: loss {loss.item():.6f}")


if __name__ == "__main__":
    make("golden_conv_k3", {"kernel_size": 3}, 1)
    make("golden_conv_k5", {"kernel_size": 5}, 2)
