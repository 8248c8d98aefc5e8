#!/usr/bin/env python3
"""Reference for `wick export --format ctranslate2`: builds the same model directory with
CTranslate2's own Python API (`TransformerSpec`, `validate`, `optimize`, `save`), from a wick
run directory, independently of wick's code.

It reads the run's config.toml, a safetensors checkpoint (numpy) and the tokenizer(s)
(Hugging Face `tokenizers`), fills a `TransformerSpec` the way CTranslate2's own converters
do (fused Q/K/V rows, fused K/V rows for the cross-attention), computes wick's sinusoid table
with the same formula in double precision, and lets CTranslate2 alias, quantize and
serialise. scripts/check_export.sh compares its output with wick's, byte for byte.

    python ct2_export.py RUN_DIR CHECKPOINT OUT_DIR [QUANTIZATION]
"""
import math
import sys
import tomllib
from pathlib import Path

import numpy as np
from ctranslate2.specs import transformer_spec
from safetensors.numpy import load_file
from tokenizers import Tokenizer


def positions(max_positions, d):
    """pe[p, 2i] = sin(p / 10000^(2i/d)), pe[p, 2i+1] = cos(…), computed in float64."""
    pe = np.zeros((max_positions, d), dtype=np.float32)
    for p in range(max_positions):
        for i in range(d // 2):
            angle = p / math.pow(10000.0, 2.0 * i / d)
            pe[p, 2 * i] = math.sin(angle)
            pe[p, 2 * i + 1] = math.cos(angle)
    return pe


def vocabulary(path):
    tok = Tokenizer.from_file(str(path))
    n = tok.get_vocab_size(with_added_tokens=True)
    return [tok.id_to_token(i) for i in range(n)]


def main():
    run, checkpoint, out = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    quantization = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] != "none" else None
    config = tomllib.loads((run / "config.toml").read_text())
    m = config["model"]
    assert m["arch"] == "transformer", m["arch"]
    w = load_file(str(checkpoint))
    d = m["d_model"]

    spec = transformer_spec.TransformerSpec.from_config(
        (m["encoder_layers"], m["decoder_layers"]),
        m["n_heads"],
        pre_norm=m["norm"] == "pre",
    )

    def linear(s, name):
        s.weight = w[f"{name}.weight"]
        s.bias = w[f"{name}.bias"]

    def norm(s, name):
        s.gamma = w[f"{name}.weight"]
        s.beta = w[f"{name}.bias"]

    tying = m["tie_embeddings"]
    src = w["embed.weight"] if tying == "all" else w["src_embed.weight"]
    tgt = w["embed.weight"] if tying == "all" else w["tgt_embed.weight"]
    spec.encoder.embeddings[0].weight = src
    spec.decoder.embeddings.weight = tgt
    spec.decoder.projection.weight = w["output_proj.weight"] if tying == "none" else tgt
    pe = positions(m["max_positions"], d)
    spec.encoder.position_encodings.encodings = pe
    spec.decoder.position_encodings.encodings = pe

    for i, layer in enumerate(spec.encoder.layer):
        p = f"encoder.layers.{i}"
        linear(layer.self_attention.linear[0], f"{p}.self_attn.qkv_proj")
        linear(layer.self_attention.linear[1], f"{p}.self_attn.out_proj")
        norm(layer.self_attention.layer_norm, f"{p}.self_attn_norm")
        linear(layer.ffn.linear_0, f"{p}.ffn.fc1")
        linear(layer.ffn.linear_1, f"{p}.ffn.fc2")
        norm(layer.ffn.layer_norm, f"{p}.ffn_norm")
    for i, layer in enumerate(spec.decoder.layer):
        p = f"decoder.layers.{i}"
        linear(layer.self_attention.linear[0], f"{p}.self_attn.qkv_proj")
        linear(layer.self_attention.linear[1], f"{p}.self_attn.out_proj")
        norm(layer.self_attention.layer_norm, f"{p}.self_attn_norm")
        linear(layer.attention.linear[0], f"{p}.cross_attn.q_proj")
        linear(layer.attention.linear[1], f"{p}.cross_attn.kv_proj")
        linear(layer.attention.linear[2], f"{p}.cross_attn.out_proj")
        norm(layer.attention.layer_norm, f"{p}.cross_attn_norm")
        linear(layer.ffn.linear_0, f"{p}.ffn.fc1")
        linear(layer.ffn.linear_1, f"{p}.ffn.fc2")
        norm(layer.ffn.layer_norm, f"{p}.ffn_norm")
    if m["norm"] == "pre":
        norm(spec.encoder.layer_norm, "encoder.final_norm")
        norm(spec.decoder.layer_norm, "decoder.final_norm")

    spec.config.add_source_eos = True
    spec.config.layer_norm_epsilon = m["layer_norm_eps"]
    if config["data"]["joint_vocab"]:
        src_vocab = tgt_vocab = vocabulary(run / "tokenizer.json")
    else:
        src_vocab = vocabulary(run / "tokenizer.src.json")
        tgt_vocab = vocabulary(run / "tokenizer.tgt.json")
    spec.register_source_vocabulary(src_vocab)
    spec.register_target_vocabulary(tgt_vocab)

    spec.validate()
    spec.optimize(quantization=quantization)
    Path(out).mkdir(parents=True, exist_ok=False)
    spec.save(out)


if __name__ == "__main__":
    main()
