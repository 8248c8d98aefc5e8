#!/usr/bin/env python3
"""PyTorch reference for wick's AdamW: writes crates/wick-train/tests/fixtures/adamw.safetensors
for crates/wick-train/tests/optim.rs.

torch.optim.AdamW with two parameter groups as wick splits them (weight decay on tensors of
rank >= 2 only), gradients scaled before each step as wick's clipping does, a changing
learning rate, and parameters sized to cross wick's parallel chunk boundary (16,384 elements).
Saves the initial parameters, each step's raw gradients, learning rates and scales, and the
parameters and moments after the last step.

    python -m venv .venv && .venv/bin/pip install torch safetensors
    .venv/bin/python scripts/reference/golden_adamw.py
"""
import json
import pathlib

import torch
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates/wick-train/tests/fixtures"
BETAS, EPS, WEIGHT_DECAY = (0.9, 0.98), 1e-9, 0.1
LRS = [1e-3, 5e-3, 2e-2, 1e-2]
SCALES = [1.0, 0.5, 1.0, 0.25]


def main():
    gen = torch.Generator().manual_seed(7)
    shapes = {"w": (130, 131), "b": (131,), "g": (5, 3)}
    init = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
    params = {k: torch.nn.Parameter(v.clone()) for k, v in init.items()}
    decay = [p for p in params.values() if p.dim() >= 2]
    no_decay = [p for p in params.values() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": WEIGHT_DECAY},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=LRS[0],
        betas=BETAS,
        eps=EPS,
    )
    tensors = {f"init.{k}": v for k, v in init.items()}
    for t, (lr, scale) in enumerate(zip(LRS, SCALES)):
        for k, p in params.items():
            # Mixed magnitudes, some tiny, so that ε and the bias corrections matter.
            g = torch.randn(p.shape, generator=gen) * (10.0 ** torch.randint(-6, 2, p.shape, generator=gen))
            tensors[f"grad.{t}.{k}"] = g
            p.grad = g * scale
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
    for k, p in params.items():
        tensors[f"expected.{k}"] = p.detach().clone()
        state = opt.state[p]
        tensors[f"expected.{k}.m"] = state["exp_avg"].clone()
        tensors[f"expected.{k}.v"] = state["exp_avg_sq"].clone()
    meta = {
        "lrs": json.dumps(LRS),
        "scales": json.dumps(SCALES),
        "betas": json.dumps(BETAS),
        "eps": json.dumps(EPS),
        "weight_decay": json.dumps(WEIGHT_DECAY),
        "torch": torch.__version__,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT / "adamw.safetensors"), metadata=meta)
    print(f"wrote {OUT / 'adamw.safetensors'}")


if __name__ == "__main__":
    main()
