#!/usr/bin/env python3
"""Builds data/toy/ from the Tatoeba eng-fra subset in ../shared/data/tatoeba/.

Deterministic: within each of the source's splits (which already keep every English sentence
in one split only), pairs with at most MAX_WORDS words on both sides are ordered by the
SHA-256 of the line and the first N are kept (all of them for train), then written back in
that hash order: train.tsv.gz (gzip without a file name or time stamp, so the bytes are
the same on every run), dev.tsv and test.tsv.

    python3 scripts/make_toy_data.py [--shared ../shared]
"""
import argparse
import gzip
import hashlib
import pathlib

MAX_WORDS = 10
# None: every pair that qualifies.
SIZES = {"train": None, "dev": 500, "test": 1000}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--out", default="data/toy")
    args = ap.parse_args()
    src_dir = pathlib.Path(args.shared) / "data" / "tatoeba"
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in SIZES.items():
        with gzip.open(src_dir / f"eng-fra.{split}.tsv.gz", "rt", encoding="utf-8") as f:
            lines = [l.rstrip("\n") for l in f]
        keep = []
        for line in lines:
            en, fr = line.split("\t")
            if len(en.split()) <= MAX_WORDS and len(fr.split()) <= MAX_WORDS:
                keep.append(line)
        keep.sort(key=lambda l: hashlib.sha256(l.encode("utf-8")).hexdigest())
        if n is not None:
            keep = keep[:n]
            assert len(keep) == n, (split, len(keep))
        text = ("\n".join(keep) + "\n").encode("utf-8")
        if split == "train":
            with open(out / "train.tsv.gz", "wb") as raw:
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
                    gz.write(text)
        else:
            (out / f"{split}.tsv").write_bytes(text)
        print(split, len(keep))


if __name__ == "__main__":
    main()
