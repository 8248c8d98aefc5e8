#!/usr/bin/env python3
"""Times CTranslate2 on the same work as `wick bench decode`, for scripts/bench_vs_ctranslate2.sh.

    python bench_ctranslate2.py EXPORT_DIR SOURCES --beam 1 --beam 5 [--inter 2 --intra 1]
        [--max-batch-size 32] [--alpha 1.0] [--max-len-a 1.5 --max-len-b 10] [--refs REFS]
        [--hyp-prefix PREFIX]
    python bench_ctranslate2.py EXPORT_DIR --fixed 64 24 24 --beam 1 --beam 5 ...

With SOURCES: the sentences of a file, tokenized with the export's tokenizer and translated
in one `translate_batch` call (CTranslate2 sorts them by length and cuts batches of
--max-batch-size examples, spread over --inter workers of --intra threads each), timed from
text to output tokens as `wick bench decode` times from text to output ids. The length limit
is wick's for the longest source (CTranslate2 takes one per call). With --refs, BLEU and chrF2
of each output (sacrebleu, default signatures), not timed.

With --fixed B S T: B random sources of S tokens decoded for exactly T tokens each
(`min_decoding_length` = `max_decoding_length` = T), as `wick bench decode --preset` does.

Prints one JSON object per beam: sentences/s, output tokens/s, seconds (best of --repeats).
"""
import argparse
import json
import random
import resource
import time
from pathlib import Path

import ctranslate2
from tokenizers import Tokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("export_dir")
    ap.add_argument("sources", nargs="?")
    ap.add_argument("--fixed", type=int, nargs=3, metavar=("B", "S", "T"))
    ap.add_argument("--beam", type=int, action="append", required=True)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--max-len-a", type=float, default=1.5)
    ap.add_argument("--max-len-b", type=int, default=10)
    ap.add_argument("--inter", type=int, default=2)
    ap.add_argument("--intra", type=int, default=1)
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--compute-type", default="default")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--refs")
    ap.add_argument("--hyp-prefix")
    a = ap.parse_args()

    d = Path(a.export_dir)
    tok_file = d / "tokenizer.json" if (d / "tokenizer.json").exists() else d / "tokenizer.src.json"
    src_tok = Tokenizer.from_file(str(tok_file))
    tgt_file = d / "tokenizer.tgt.json"
    tgt_tok = Tokenizer.from_file(str(tgt_file)) if tgt_file.exists() else src_tok
    translator = ctranslate2.Translator(
        str(d), device="cpu", compute_type=a.compute_type,
        inter_threads=a.inter, intra_threads=a.intra,
    )

    if a.fixed:
        b, s, t = a.fixed
        vocab = src_tok.get_vocab_size()
        rng = random.Random(1)
        sources = [[src_tok.id_to_token(rng.randrange(4, vocab)) for _ in range(s)] for _ in range(b)]
    else:
        texts = Path(a.sources).read_text(encoding="utf-8").splitlines()

    for beam in a.beam:
        best, hyps = None, None
        for _ in range(a.repeats):
            start = time.perf_counter()
            if a.fixed:
                results = translator.translate_batch(
                    sources, beam_size=beam, max_batch_size=a.max_batch_size,
                    min_decoding_length=t, max_decoding_length=t,
                )
                n_sent = len(sources)
            else:
                tokens = [src_tok.encode(x, add_special_tokens=False).tokens for x in texts]
                limit = max(int(a.max_len_a * len(x)) + a.max_len_b for x in tokens)
                results = translator.translate_batch(
                    tokens, beam_size=beam, length_penalty=a.alpha,
                    max_batch_size=a.max_batch_size, max_decoding_length=limit,
                    min_decoding_length=0,
                )
                n_sent = len(texts)
            seconds = time.perf_counter() - start
            if best is None or seconds < best:
                best = seconds
            hyps = [r.hypotheses[0] for r in results]
        out_tokens = sum(len(h) for h in hyps)
        report = {
            "engine": "ctranslate2", "version": ctranslate2.__version__,
            "export": str(d), "beam": beam, "compute_type": a.compute_type,
            "inter_threads": a.inter, "intra_threads": a.intra,
            "max_batch_size": a.max_batch_size, "sentences": n_sent,
            "output_tokens": out_tokens, "seconds": round(best, 4),
            "sentences_per_s": round(n_sent / best, 2),
            "tokens_per_s": round(out_tokens / best, 1),
        }
        if not a.fixed:
            text = [tgt_tok.decode([tgt_tok.token_to_id(t) for t in h]) for h in hyps]
            if a.hyp_prefix:
                Path(f"{a.hyp_prefix}.beam{beam}.txt").write_text("".join(x + "\n" for x in text), encoding="utf-8")
            if a.refs:
                import sacrebleu
                refs = Path(a.refs).read_text(encoding="utf-8").splitlines()
                report["bleu"] = round(sacrebleu.corpus_bleu(text, [refs]).score, 2)
                report["chrf"] = round(sacrebleu.corpus_chrf(text, [refs]).score, 2)
        report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
