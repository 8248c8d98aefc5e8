#!/usr/bin/env python3
"""Generates crates/wick-metrics/tests/fixtures/sacrebleu.json: corpora of hypotheses and
references scored by sacreBLEU itself, for tests/sacrebleu.rs.

    python -m venv .venv && .venv/bin/pip install sacrebleu==2.6.0
    .venv/bin/python scripts/reference/sacrebleu_fixtures.py

Cases are drawn with a fixed seed from varied material: unicode scripts and emoji, runs of
punctuation, numbers with separators, HTML entities, hyphens, empty hypotheses, hypotheses
longer than their references, single words, repeated n-grams, and 1–3 references.
"""
import json
import pathlib
import random

import sacrebleu
from sacrebleu.metrics import BLEU, CHRF

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates/wick-metrics/tests/fixtures/sacrebleu.json"

SENTENCES = [
    "The cat sat on the mat.",
    "Ein Mann fährt Fahrrad.",
    "Zwei Hunde spielen im Schnee.",
    "Où est la gare ? Près de l'hôtel, à 1,5 km.",
    "She paid $1,000.50 for 3-4 tickets!!!",
    "Wait... what?! (No way.)",
    "It's a well-known fact -- isn't it?",
    "&quot;Quoted&quot; &amp; escaped &lt;tags&gt; here.",
    "日本語のテキストと English mixed.",
    "Emoji 🦀 and 🚀 are fine; aren't they?",
    "Ελληνικά γράμματα, και αριθμοί 3.14159.",
    "Наш поезд отправляется в 10:45.",
    "e-mail me at someone@example.com / now",
    "A very very very very long repeated repeated sentence sentence.",
    "Numbers: 1,000; 2.000,5; 10-12; 3/4.",
    "Tabs\tand   multiple   spaces.",
    "<skipped> segment with a hy-\nphen.",
    "«Guillemets» — dashes – and … ellipses",
    "Hello",
    "yes",
    "Ünïcödé wörds everywhere.",
    "The year was 1999-2000, the price $5.",
]


def perturb(rng, s):
    words = s.split()
    op = rng.randrange(9)
    if op == 0 or not words:
        return s
    if op == 1:
        return ""
    if op == 2:
        del words[rng.randrange(len(words))]
    elif op == 3 and len(words) > 1:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    elif op == 4:
        words.insert(rng.randrange(len(words) + 1), rng.choice(["the", "a", "!", ",", "1,000", "Fahrrad"]))
    elif op == 5:
        return s + " " + s
    elif op == 6:
        return rng.choice(words)
    elif op == 7:
        return s.lower()
    elif op == 8:
        return " ".join(words[: max(1, len(words) // 2)])
    return " ".join(words)


def main():
    rng = random.Random(20261122)
    cases = []
    for _ in range(300):
        n_seg = rng.randint(1, 6)
        n_refs = rng.choice([1, 1, 1, 2, 3])
        refs = [[] for _ in range(n_refs)]
        hyps = []
        for _ in range(n_seg):
            base = rng.choice(SENTENCES)
            for r in refs:
                r.append(perturb(rng, base) or base)
            hyps.append(perturb(rng, base))
        case = {"hyps": hyps, "refs": refs, "bleu": {}, "chrf": {}}
        for tok in ["13a", "intl", "char", "none"]:
            for lc in [False, True]:
                m = BLEU(tokenize=tok, lowercase=lc)
                s = m.corpus_score(hyps, refs)
                case["bleu"][f"{tok}{'-lc' if lc else ''}"] = {
                    "score": round(s.score, 6),
                    "hyp_len": s.sys_len, "ref_len": s.ref_len, "signature": str(m.get_signature()),
                }
        for wo in [0, 2]:
            for lc in [False, True]:
                m = CHRF(word_order=wo, lowercase=lc)
                s = m.corpus_score(hyps, refs)
                case["chrf"][f"{wo}{'-lc' if lc else ''}"] = {"score": round(s.score, 6), "signature": str(m.get_signature())}
        cases.append(case)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"sacrebleu": sacrebleu.__version__, "cases": cases}, ensure_ascii=False, separators=(",", ":")))
    print(f"{len(cases)} cases, sacrebleu {sacrebleu.__version__} -> {OUT}")


if __name__ == "__main__":
    main()
