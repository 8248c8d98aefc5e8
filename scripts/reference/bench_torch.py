#!/usr/bin/env python3
"""PyTorch side of `scripts/bench_vs_pytorch.sh`: the benchmark presets of `wick bench`
written the way a PyTorch user would write them (nn.Linear, nn.LayerNorm, F.cross_entropy
with label smoothing, torch.optim.Adam, eager mode), on exactly the shapes wick times. The
`rnn` preset is a bidirectional nn.GRU encoder over the whole sequence (oneDNN/MKL kernels)
and a decoder loop over nn.GRUCell with Bahdanau attention; `conv` is ConvS2S with nn.Conv1d,
F.glu and weight normalisation (torch.nn.utils.parametrizations.weight_norm).

    python scripts/reference/bench_torch.py train --preset tiny [--steps 10] [--threads 2]
    python scripts/reference/bench_torch.py decode --preset tiny [--repeats 3]
    python scripts/reference/bench_torch.py matmul --shapes WICK_JSON [--repeats 7]

Prints one JSON object with the keys `wick bench … --json` uses (tgt_tokens_per_s,
ms_per_step, peak_rss_mb, working_memory_mb, params; for decode: sentences_per_s,
tokens_per_s). `matmul` reads the JSON of `wick bench matmul --json` and times the same
products with torch.mm on operands of the same layout (transposed views where wick has them),
printing the same JSON with PyTorch's times. Working memory is peak RSS minus the RSS after `import torch`, because
importing torch maps several hundred MB of libraries before any model exists.
"""
import argparse
import json
import math
import resource
import statistics
import time


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


import torch  # noqa: E402  (after rss_mb so the import itself can be measured)
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

RSS_AFTER_IMPORT = rss_mb()

# d_model, heads, layers (each side), d_ff, vocabulary: the same table as wick's `Preset`.
PRESETS = {
    "tiny": (128, 4, 2, 512, 8000),
    "small": (256, 8, 3, 1024, 8000),
    "base": (512, 8, 6, 2048, 16000),
}
# embedding, hidden, vocabulary; ConvS2S also encoder and decoder layers and kernel width.
RNN_PRESET = (128, 256, 8000)
CONV_PRESET = (256, 256, 8000, 4, 3, 3)
MASKED = -1e9


def sinusoid(n, d):
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(d // 2, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, 2 * i / d)
    pe = torch.zeros(n, d, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle)
    return pe.float()


class Attention(nn.Module):
    def __init__(self, d, h, fused_qkv):
        super().__init__()
        self.h, self.dk = h, d // h
        if fused_qkv:
            self.qkv = nn.Linear(d, 3 * d)
        else:
            self.q = nn.Linear(d, d)
            self.kv = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)

    def split(self, x):
        b, t, _ = x.shape
        return x.view(b, t, self.h, self.dk).transpose(1, 2)

    def attend(self, q, k, v, bias):
        # (b, h, tq, dk) · (b, h, dk, tk): the plain path, faster than
        # scaled_dot_product_attention on CPU at these lengths (see ../shared/notes).
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.dk)
        if bias is not None:
            scores = scores + bias
        out = scores.softmax(-1) @ v
        b, _, tq, _ = out.shape
        return self.out(out.transpose(1, 2).reshape(b, tq, self.h * self.dk))

    def self_attn(self, x, bias, cache=None):
        q, k, v = self.qkv(x).chunk(3, -1)
        q, k, v = self.split(q), self.split(k), self.split(v)
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], 2)
                v = torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
        return self.attend(q, k, v, bias)

    def memory_kv(self, memory):
        k, v = self.kv(memory).chunk(2, -1)
        return self.split(k), self.split(v)

    def cross_attn(self, x, kv, bias):
        return self.attend(self.split(self.q(x)), kv[0], kv[1], bias)


class EncoderLayer(nn.Module):
    def __init__(self, d, h, ff, p):
        super().__init__()
        self.attn = Attention(d, h, True)
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, ff), nn.Linear(ff, d)
        self.drop = nn.Dropout(p)

    def forward(self, x, bias):
        x = self.n1(x + self.drop(self.attn.self_attn(x, bias)))
        return self.n2(x + self.drop(self.fc2(F.relu(self.fc1(x)))))


class DecoderLayer(nn.Module):
    def __init__(self, d, h, ff, p):
        super().__init__()
        self.self_attn = Attention(d, h, True)
        self.cross = Attention(d, h, False)
        self.n1, self.n2, self.n3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, ff), nn.Linear(ff, d)
        self.drop = nn.Dropout(p)

    def forward(self, y, kv, self_bias, src_bias, cache=None):
        y = self.n1(y + self.drop(self.self_attn.self_attn(y, self_bias, cache)))
        y = self.n2(y + self.drop(self.cross.cross_attn(y, kv, src_bias)))
        return self.n3(y + self.drop(self.fc2(F.relu(self.fc1(y)))))


class Transformer(nn.Module):
    """Post-norm encoder-decoder, sinusoidal positions, one embedding shared by source,
    target and output projection, dropout on embeddings and sublayer outputs."""

    def __init__(self, d, h, layers, ff, vocab, p=0.1):
        super().__init__()
        self.d = d
        self.embed = nn.Embedding(vocab, d)
        nn.init.normal_(self.embed.weight, 0, d**-0.5)
        self.register_buffer("pe", sinusoid(256, d), persistent=False)
        self.enc = nn.ModuleList(EncoderLayer(d, h, ff, p) for _ in range(layers))
        self.dec = nn.ModuleList(DecoderLayer(d, h, ff, p) for _ in range(layers))
        self.drop = nn.Dropout(p)

    def embed_at(self, ids, start=0):
        t = ids.shape[1]
        return self.drop(self.embed(ids) * math.sqrt(self.d) + self.pe[start : start + t])

    def encode(self, src, src_mask):
        bias = ((1.0 - src_mask) * MASKED)[:, None, None, :]
        x = self.embed_at(src)
        for layer in self.enc:
            x = layer(x, bias)
        return x, bias

    def decode(self, memory, src_bias, tgt_in):
        t = tgt_in.shape[1]
        causal = torch.triu(torch.full((t, t), MASKED), diagonal=1)
        y = self.embed_at(tgt_in)
        for layer in self.dec:
            y = layer(y, layer.cross.memory_kv(memory), causal, src_bias)
        return y @ self.embed.weight.T

    @torch.no_grad()
    def greedy(self, src, src_mask, bos, steps):
        memory, src_bias = self.encode(src, src_mask)
        kvs = [layer.cross.memory_kv(memory) for layer in self.dec]
        caches = [{} for _ in self.dec]
        tok = torch.full((src.shape[0], 1), bos, dtype=torch.long)
        out = []
        for step in range(steps):
            y = self.embed_at(tok, step)
            for layer, kv, cache in zip(self.dec, kvs, caches):
                y = layer(y, kv, None, src_bias, cache)
            tok = (y[:, -1] @ self.embed.weight.T).argmax(-1, keepdim=True)
            out.append(tok)
        return torch.cat(out, 1)


class Rnn(nn.Module):
    """Bidirectional GRU encoder (each direction hidden/2), bridge, GRUCell decoder with
    Bahdanau attention before the step, tanh(W [s; c; e]) → output tied to the embedding."""

    def __init__(self, e, h, vocab, p=0.1):
        super().__init__()
        self.embed = nn.Embedding(vocab, e)
        self.encoder = nn.GRU(e, h // 2, batch_first=True, bidirectional=True)
        self.bridge = nn.Linear(h, h)
        self.cell = nn.GRUCell(e + h, h)
        self.key = nn.Linear(h, h, bias=False)
        self.query = nn.Linear(h, h, bias=False)
        self.v = nn.Parameter(torch.randn(h) * h**-0.5)
        self.combine = nn.Linear(2 * h + e, e)
        self.out_bias = nn.Parameter(torch.zeros(vocab))
        self.drop = nn.Dropout(p)

    def encode(self, src, src_mask):
        lengths = src_mask.sum(1).long()
        packed = nn.utils.rnn.pack_padded_sequence(self.drop(self.embed(src)), lengths, batch_first=True, enforce_sorted=False)
        out, last = self.encoder(packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
        h0 = torch.tanh(self.bridge(torch.cat([last[0], last[1]], -1)))
        return (states, self.key(states), h0), ((1.0 - src_mask) * MASKED)

    def step(self, memory, bias, emb, s):
        states, keys, _ = memory
        scores = (torch.tanh(keys + self.query(s)[:, None]) * self.v).sum(-1) + bias
        c = torch.bmm(torch.softmax(scores, -1)[:, None], states)[:, 0]
        s = self.cell(torch.cat([emb, c], -1), s)
        return torch.tanh(self.combine(self.drop(torch.cat([s, c, emb], -1)))), s

    def decode(self, memory, bias, tgt_in):
        emb = self.drop(self.embed(tgt_in))
        s = memory[2]
        outs = []
        for t in range(tgt_in.shape[1]):
            o, s = self.step(memory, bias, emb[:, t], s)
            outs.append(o)
        return torch.stack(outs, 1) @ self.embed.weight.T + self.out_bias

    @torch.no_grad()
    def greedy(self, src, src_mask, bos, steps):
        memory, bias = self.encode(src, src_mask)
        s = memory[2]
        tok = torch.full((src.shape[0],), bos, dtype=torch.long)
        out = []
        for _ in range(steps):
            o, s = self.step(memory, bias, self.embed(tok), s)
            tok = (o @ self.embed.weight.T + self.out_bias).argmax(-1)
            out.append(tok[:, None])
        return torch.cat(out, 1)


def wn(module):
    return nn.utils.parametrizations.weight_norm(module)


class ConvS2S(nn.Module):
    """fairseq's fconv: learned positions, weight-normalised Conv1d + GLU blocks with √½
    residuals, an attention in every decoder layer, output tied to the embedding."""

    def __init__(self, e, h, vocab, enc_layers, dec_layers, k, p=0.1):
        super().__init__()
        self.k, self.p = k, p
        self.embed = nn.Embedding(vocab, e)
        self.src_pos = nn.Embedding(256, e)
        self.tgt_pos = nn.Embedding(256, e)
        self.enc_in, self.enc_out = wn(nn.Linear(e, h)), wn(nn.Linear(h, e))
        self.dec_in, self.dec_out = wn(nn.Linear(e, h)), wn(nn.Linear(h, e))
        self.enc_convs = nn.ModuleList(wn(nn.Conv1d(h, 2 * h, k, padding=k // 2)) for _ in range(enc_layers))
        self.dec_convs = nn.ModuleList(wn(nn.Conv1d(h, 2 * h, k)) for _ in range(dec_layers))
        self.att_in = nn.ModuleList(wn(nn.Linear(h, e)) for _ in range(dec_layers))
        self.att_out = nn.ModuleList(wn(nn.Linear(e, h)) for _ in range(dec_layers))
        self.out_bias = nn.Parameter(torch.zeros(vocab))
        self.drop = nn.Dropout(p)

    def encode(self, src, src_mask):
        pos = torch.arange(src.shape[1])
        e = self.drop(self.embed(src) + self.src_pos(pos))
        x = self.enc_in(e)
        keep = src_mask[..., None]
        for conv in self.enc_convs:
            r = x
            x = F.glu(conv((self.drop(x) * keep).transpose(1, 2)), dim=1).transpose(1, 2)
            x = (x + r) * math.sqrt(0.5)
        z = self.enc_out(x) * keep
        scale = src_mask.sum(1).sqrt()[:, None, None]
        return (z, (z + e) * math.sqrt(0.5), scale), ((1.0 - src_mask) * MASKED)[:, None, :]

    def layers(self, memory, bias, g, x, windows=None):
        z, values, scale = memory
        for i, conv in enumerate(self.dec_convs):
            r = x
            x = self.drop(x).transpose(1, 2)
            if windows is None:
                x = F.pad(x, (self.k - 1, 0))
            else:
                windows[i] = x = torch.cat([windows[i], x], 2)[:, :, -self.k:]
            x = F.glu(conv(x), dim=1).transpose(1, 2)
            d = (self.att_in[i](x) + g) * math.sqrt(0.5)
            a = torch.softmax(torch.bmm(d, z.transpose(1, 2)) + bias, -1)
            c = torch.bmm(a, values) * scale
            x = (self.att_out[i](c) + x) * math.sqrt(0.5)
            x = (x + r) * math.sqrt(0.5)
        return self.drop(self.dec_out(x)) @ self.embed.weight.T + self.out_bias

    def decode(self, memory, bias, tgt_in):
        g = self.drop(self.embed(tgt_in) + self.tgt_pos(torch.arange(tgt_in.shape[1])))
        return self.layers(memory, bias, g, self.dec_in(g))

    @torch.no_grad()
    def greedy(self, src, src_mask, bos, steps):
        memory, bias = self.encode(src, src_mask)
        b = src.shape[0]
        windows = [torch.zeros(b, conv.in_channels, self.k - 1) for conv in self.dec_convs]
        tok = torch.full((b, 1), bos, dtype=torch.long)
        out = []
        for t in range(steps):
            g = self.embed(tok) + self.tgt_pos(torch.tensor([t]))
            tok = self.layers(memory, bias, g, self.dec_in(g), windows)[:, -1].argmax(-1, keepdim=True)
            out.append(tok)
        return torch.cat(out, 1)


def build(args):
    torch.manual_seed(3)
    if args.preset == "rnn":
        e, h, vocab = RNN_PRESET
        model = Rnn(e, h, vocab)
    elif args.preset == "conv":
        e, h, vocab, enc, dec, k = CONV_PRESET
        model = ConvS2S(e, h, vocab, enc, dec, k)
    else:
        d, h, layers, ff, vocab = PRESETS[args.preset]
        model = Transformer(d, h, layers, ff, vocab)
    params = sum(p.numel() for p in model.parameters())
    b, s, t = args.batch_size, args.src_len, args.tgt_len
    src = torch.randint(4, vocab, (b, s))
    return model, params, vocab, src, torch.ones(b, s), b, s, t


def train(args):
    model, params, vocab, src, src_mask, b, s, t = build(args)
    tgt_in = torch.randint(4, vocab, (b, t))
    tgt_out = torch.randint(4, vocab, (b, t))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    model.train()
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        memory, bias = model.encode(src, src_mask)
        logits = model.decode(memory, bias, tgt_in)
        loss = F.cross_entropy(logits.reshape(-1, vocab), tgt_out.reshape(-1), label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "impl": "pytorch",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "params": params,
        "ms_per_step": median * 1e3,
        "ms_per_step_min": min(times) * 1e3,
        "ms_per_step_max": max(times) * 1e3,
        "tgt_tokens_per_s": b * t / median,
        "peak_rss_mb": peak_rss_mb(),
        "working_memory_mb": peak_rss_mb() - RSS_AFTER_IMPORT,
    }


def decode(args):
    model, params, _, src, src_mask, b, _, _ = build(args)
    model.eval()
    best = math.inf
    for i in range(args.repeats + 1):  # the first run is untimed warm-up
        start = time.perf_counter()
        out = model.greedy(src, src_mask, 1, args.steps)
        if i > 0:
            best = min(best, time.perf_counter() - start)
    assert out.shape == (b, args.steps)
    return {
        "impl": "pytorch",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "params": params,
        "mode": "greedy",
        "sentences": b,
        "output_tokens": b * args.steps,
        "seconds": best,
        "sentences_per_s": b / best,
        "tokens_per_s": b * args.steps / best,
        "peak_rss_mb": peak_rss_mb(),
    }


def matmul(args):
    """Median time of each product of `wick bench matmul`, with torch.mm."""
    with open(args.shapes) as f:
        wick = json.load(f)
    products = []
    for p in wick["products"]:
        m, k, n = p["m"], p["k"], p["n"]
        lhs = torch.randn(k, m).t() if p["lhs_t"] else torch.randn(m, k)
        rhs = torch.randn(n, k).t() if p["rhs_t"] else torch.randn(k, n)
        times = []
        for i in range(args.repeats + 2):
            start = time.perf_counter()
            torch.mm(lhs, rhs)
            if i >= 2:
                times.append(time.perf_counter() - start)
        median = statistics.median(times)
        products.append({**p, "ms": median * 1e3, "gflops": 2 * m * k * n / median / 1e9})

    def per_step(pass_):
        return sum(p["ms"] * p["count"] for p in products if p["pass"] == pass_)

    flops = sum(2 * p["m"] * p["k"] * p["n"] * p["count"] for p in products)
    total = per_step("forward") + per_step("backward")
    return {
        "preset": wick["preset"],
        "threads": torch.get_num_threads(),
        "products": products,
        "forward_ms": per_step("forward"),
        "backward_ms": per_step("backward"),
        "total_ms": total,
        "gflops": flops / total / 1e6,
        "share_of_step_flops": wick["share_of_step_flops"],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["train", "decode", "matmul"])
    ap.add_argument("--shapes", help="matmul: the JSON printed by `wick bench matmul --json`")
    ap.add_argument("--preset", choices=list(PRESETS) + ["rnn", "conv"], default="tiny")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--src-len", type=int, default=24)
    ap.add_argument("--tgt-len", type=int, default=24)
    ap.add_argument("--steps", type=int, default=None, help="timed training steps (10) or decoded tokens (24)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=None, help="decode: 3, matmul: 7")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.what == "train":
        args.steps = args.steps or 10
        print(json.dumps(train(args)))
    elif args.what == "matmul":
        if not args.shapes:
            ap.error("matmul needs --shapes (the output of `wick bench matmul --json`)")
        args.repeats = args.repeats or 7
        print(json.dumps(matmul(args)))
    else:
        args.repeats = args.repeats or 3
        args.steps = args.steps or 24
        print(json.dumps(decode(args)))


if __name__ == "__main__":
    main()
