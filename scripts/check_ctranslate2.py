#!/usr/bin/env python3
"""Translates sentences with an exported CTranslate2 model the way its README says, and
compares the outputs line by line with wick's for the same sentences.

    python check_ctranslate2.py EXPORT_DIR SOURCES WICK_OUTPUT OUT [--beam N] [--alpha A]
        [--max-len-a A --max-len-b B] [--compute-type T] [--min-agree F] [--exact-first N]

Each sentence gets wick's own output limit, ⌊a · source tokens⌋ + b (sentences sharing a
limit are translated as one batch). Writes CTranslate2's translations to OUT and prints the
share of lines equal to wick's; exits 1 below --min-agree, or if any of the first
--exact-first lines differ.
"""
import argparse
import collections
import json
import sys
import time
from pathlib import Path

import ctranslate2
from tokenizers import Tokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("export_dir")
    ap.add_argument("sources")
    ap.add_argument("wick_output")
    ap.add_argument("out")
    ap.add_argument("--beam", type=int, default=1)
    ap.add_argument("--alpha", type=float, default=0.0)
    ap.add_argument("--max-len-a", type=float, default=1.5)
    ap.add_argument("--max-len-b", type=int, default=10)
    ap.add_argument("--compute-type", default="default")
    ap.add_argument("--min-agree", type=float, default=0.0)
    ap.add_argument("--exact-first", type=int, default=0)
    args = ap.parse_args()

    d = Path(args.export_dir)
    if (d / "tokenizer.json").exists():
        src_tok = tgt_tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    else:
        src_tok = Tokenizer.from_file(str(d / "tokenizer.src.json"))
        tgt_tok = Tokenizer.from_file(str(d / "tokenizer.tgt.json"))
    translator = ctranslate2.Translator(
        str(d), device="cpu", compute_type=args.compute_type, inter_threads=1, intra_threads=2
    )
    sources = Path(args.sources).read_text(encoding="utf-8").splitlines()
    tokens = [src_tok.encode(s, add_special_tokens=False).tokens for s in sources]
    by_limit = collections.defaultdict(list)
    for i, t in enumerate(tokens):
        by_limit[int(args.max_len_a * len(t)) + args.max_len_b].append(i)
    hyps = [None] * len(sources)
    start = time.perf_counter()
    for limit, rows in sorted(by_limit.items()):
        results = translator.translate_batch(
            [tokens[i] for i in rows],
            beam_size=args.beam,
            length_penalty=args.alpha,
            max_decoding_length=limit,
            min_decoding_length=0,
            max_batch_size=64,
        )
        for i, r in zip(rows, results):
            hyps[i] = tgt_tok.decode([tgt_tok.token_to_id(t) for t in r.hypotheses[0]])
    seconds = time.perf_counter() - start
    Path(args.out).write_text("".join(h + "\n" for h in hyps), encoding="utf-8")

    wick = Path(args.wick_output).read_text(encoding="utf-8").splitlines()
    if len(wick) != len(hyps):
        sys.exit(f"{args.wick_output}: {len(wick)} lines for {len(hyps)} sources")
    same = [a == b for a, b in zip(hyps, wick)]
    agree = sum(same) / len(same)
    first_diff = [i + 1 for i, s in enumerate(same) if not s][:5]
    print(json.dumps({
        "export": str(d), "beam": args.beam, "alpha": args.alpha,
        "compute_type": args.compute_type, "sentences": len(hyps),
        "equal_to_wick": sum(same), "agreement": round(agree, 4),
        "first_differing_lines": first_diff, "ctranslate2_seconds": round(seconds, 3),
    }))
    if agree < args.min_agree:
        sys.exit(f"agreement {agree:.4f} < {args.min_agree}")
    if not all(same[: args.exact_first]):
        sys.exit(f"the first {args.exact_first} lines must be equal; line {first_diff[0]} differs")


if __name__ == "__main__":
    main()
