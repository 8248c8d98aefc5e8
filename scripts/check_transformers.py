#!/usr/bin/env python3
"""Holds a `wick export --format transformers` directory to wick itself.

    python check_transformers.py prepare EXPORT_DIR SOURCES TARGETS INPUT.json [--n 16]
    python check_transformers.py compare EXPORT_DIR INPUT.json WICK_LOGITS.safetensors
    python check_transformers.py generate EXPORT_DIR SOURCES WICK_GREEDY OUT [--n 200]

`prepare` tokenizes the first N sentence pairs with the exported tokenizer (which appends
`</s>` to the source) into one batch with right padding on both sides, target inputs starting
with `<s>`, and writes it for wick's `logits` example. `compare` runs the same batch through
`MarianMTModel` and checks every logit at a real target position against wick's (max |Δ|
≤ 1e-4). `generate` decodes the first N sources greedily with `model.generate`, each with wick's output
length limit, and counts the lines equal to `wick translate --beam 1` (≥ 99% required).
"""
import argparse
import collections
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, MarianMTModel


def target_tokenizer(d):
    d = Path(d)
    return AutoTokenizer.from_pretrained(d / "target_tokenizer" if (d / "target_tokenizer").exists() else d)


def prepare(a):
    tok = AutoTokenizer.from_pretrained(a.export_dir)
    tgt_tok = target_tokenizer(a.export_dir)
    src = Path(a.sources).read_text(encoding="utf-8").splitlines()[: a.n]
    tgt = Path(a.targets).read_text(encoding="utf-8").splitlines()[: a.n]
    s = [tok(x)["input_ids"] for x in src]                       # … </s>
    t = [[1] + tgt_tok(x, add_special_tokens=False)["input_ids"] for x in tgt]  # <s> …
    S, T = max(map(len, s)), max(map(len, t))
    batch = {
        "src": [r + [0] * (S - len(r)) for r in s],
        "src_mask": [[1] * len(r) + [0] * (S - len(r)) for r in s],
        "tgt_in": [r + [0] * (T - len(r)) for r in t],
        "tgt_len": [len(r) for r in t],
    }
    Path(a.input).write_text(json.dumps(batch))
    print(f"batch of {len(s)}: sources {min(map(len, s))}-{S} tokens, targets {min(map(len, t))}-{T}")


def compare(a):
    batch = json.loads(Path(a.input).read_text())
    model = MarianMTModel.from_pretrained(a.export_dir).eval()
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(batch["src"]),
            attention_mask=torch.tensor(batch["src_mask"]),
            decoder_input_ids=torch.tensor(batch["tgt_in"]),
        ).logits
    wick = load_file(a.wick_logits)["logits"]
    if wick.shape != out.shape:
        sys.exit(f"shapes differ: wick {tuple(wick.shape)}, transformers {tuple(out.shape)}")
    worst = 0.0
    for i, n in enumerate(batch["tgt_len"]):
        worst = max(worst, (wick[i, :n] - out[i, :n]).abs().max().item())
    scale = wick.abs().max().item()
    print(json.dumps({"export": a.export_dir, "batch": list(out.shape), "max_abs_diff": worst, "max_abs_logit": scale}))
    if worst > 1e-4:
        sys.exit(f"logits differ by {worst:.3g} > 1e-4")


def generate(a):
    tok = AutoTokenizer.from_pretrained(a.export_dir)
    tgt_tok = target_tokenizer(a.export_dir)
    model = MarianMTModel.from_pretrained(a.export_dir).eval()
    src = Path(a.sources).read_text(encoding="utf-8").splitlines()[: a.n]
    wick = Path(a.wick_greedy).read_text(encoding="utf-8").splitlines()[: a.n]
    # wick stops a sentence after ⌊a · source tokens⌋ + b output tokens (the run's max_len_a
    # and max_len_b); generate takes one limit per call, so sentences sharing a limit go
    # together. One token more: the config's forced_eos_token_id makes the last one `</s>`.
    by_limit = collections.defaultdict(list)
    for i, s in enumerate(src):
        n = len(tok(s, add_special_tokens=False)["input_ids"])
        by_limit[int(a.max_len_a * n) + a.max_len_b].append(i)
    hyps = [None] * len(src)
    with torch.no_grad():
        for limit, rows in sorted(by_limit.items()):
            for j in range(0, len(rows), 32):
                chunk = rows[j : j + 32]
                batch = tok([src[i] for i in chunk], return_tensors="pt", padding=True)
                out = model.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=limit + 1)
                for i, h in zip(chunk, tgt_tok.batch_decode(out, skip_special_tokens=True)):
                    hyps[i] = h
    Path(a.out).write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    same = sum(h == w for h, w in zip(hyps, wick))
    print(json.dumps({"export": a.export_dir, "sentences": len(src), "greedy_equal_to_wick": same}))
    if same < 0.99 * len(src):
        sys.exit(f"only {same}/{len(src)} greedy outputs equal wick's")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    for x in ("export_dir", "sources", "targets", "input"):
        p.add_argument(x)
    p.add_argument("--n", type=int, default=16)
    p = sub.add_parser("compare")
    for x in ("export_dir", "input", "wick_logits"):
        p.add_argument(x)
    p = sub.add_parser("generate")
    for x in ("export_dir", "sources", "wick_greedy", "out"):
        p.add_argument(x)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--max-len-a", type=float, default=1.5)
    p.add_argument("--max-len-b", type=int, default=10)
    a = ap.parse_args()
    {"prepare": prepare, "compare": compare, "generate": generate}[a.cmd](a)


if __name__ == "__main__":
    main()
