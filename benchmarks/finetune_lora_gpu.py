"""bf16 LoRA fine-tuning of a mid-size Llama-architecture LM (random weights): peak memory and steps/s.

Builds a randomly initialised Llama of the chosen size in a temporary folder (nothing downloaded)
with a word-level tokenizer, writes synthetic subtitles (random word sequences, 6 random labels),
and runs ``mer finetune text --lora`` through the library (``finetune_text``): bf16 weights, bf16
autocast, LoRA on q/k/v/o, optional gradient checkpointing. Reports optimiser steps per second
and the peak CUDA memory. The labels are random, so only speed and memory mean anything here.

    python benchmarks/finetune_lora_gpu.py --size 1b --device cuda            # GPU
    python benchmarks/finetune_lora_gpu.py --size tiny --device cpu --steps 4  # code-path check on CPU

Last lines: ``lora_steps_per_s: X`` and ``lora_peak_gib: Y``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = {  # hidden, intermediate, layers, heads, kv heads
    "tiny": (64, 128, 2, 4, 2),
    "1b": (2048, 5632, 22, 32, 4),  # TinyLlama-1.1B shape
    "3b": (3200, 8640, 26, 32, 32),  # OpenLLaMA-3B shape
    "7b": (4096, 11008, 32, 32, 32),  # Llama-2-7B shape
}


def build(root: Path, size: str, vocab: int, seed: int = 0) -> tuple[Path, list[str]]:
    """A random Llama of ``size`` saved in bf16 plus a WordLevel tokenizer of ``vocab`` words."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(vocab - 3)]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *words])},
                                     unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                            model_max_length=4096).save_pretrained(root)
    hidden, inter, layers, heads, kv = SIZES[size]
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=4096,
                      bos_token_id=1, eos_token_id=2)
    with torch.device("cpu"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(root)
    return root, words


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="1b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=60, help="optimiser steps timed (one epoch)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=48, help="words per synthetic subtitle")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--vocab", type=int, default=32000)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch
    from mer.finetune.data import SplitConfig
    from mer.finetune.text import TextFinetuneConfig, finetune_text
    from mer.finetune.train import TrainConfig

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        model_dir, words = build(root / "model", args.size, args.vocab)
        print(f"built {args.size} Llama in {time.perf_counter() - t0:.0f} s", flush=True)
        rng = np.random.default_rng(0)
        n = args.steps * args.batch_size
        classes = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
        with open(root / "clips.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["name", "text"])
            for i in range(n):
                w.writerow([f"c{i}", " ".join(rng.choice(words, args.tokens))])
        with open(root / "labels.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["name", "discrete"])
            for i in range(n):
                w.writerow([f"c{i}", classes[int(rng.integers(len(classes)))]])
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        rec = finetune_text(root / "clips.csv", root / "labels.csv", root / "out",
                            TextFinetuneConfig(model=str(model_dir), pooling="last", lora=True, lora_rank=args.rank,
                                               lora_alpha=2 * args.rank, lora_targets="q_proj,k_proj,v_proj,o_proj",
                                               gradient_checkpointing=args.gradient_checkpointing, max_tokens=512),
                            SplitConfig(val_fraction=0.0, classes=classes),
                            TrainConfig(epochs=1, batch_size=args.batch_size, lr=1e-4, device=args.device),
                            progress=False)
        peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else float("nan")
        steps_s = rec["steps"] / rec["train_seconds"]
        summary = {"size": args.size, "device": args.device, "dtype": rec["dtype"], "steps": rec["steps"],
                   "batch_size": args.batch_size, "tokens": args.tokens + 1, "rank": args.rank,
                   "gradient_checkpointing": args.gradient_checkpointing, "train_seconds": rec["train_seconds"],
                   "steps_per_s": round(steps_s, 3), "peak_gib": round(peak, 2),
                   "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
        print(json.dumps(summary, indent=2))
        print(f"lora_steps_per_s: {steps_s:.3f}")
        print(f"lora_peak_gib: {peak:.2f}")


if __name__ == "__main__":
    main()
