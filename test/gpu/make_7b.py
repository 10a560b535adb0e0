"""Fallback 7B-shape checkpoint for the GPU scripts when `nodespeed model init --preset 7b` is not
available: Llama-2-7B's config (hidden 4096, 32 layers, 32 heads, intermediate 11008, vocab
32000), random weights (HF's own init, seeded) made on the GPU, saved in bf16 with save_pretrained.

usage: python3 make_7b.py OUT_DIR
"""
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    out = sys.argv[1]
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out, max_shard_size="5GB")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
