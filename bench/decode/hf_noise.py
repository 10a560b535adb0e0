"""Where HF transformers' own bf16 noise comes from, on the GPU (the bar of test/gpu's 7B-shape logits check).

usage: python3 bench/decode/hf_noise.py MODEL_DIR IDS_JSON [OURS_BIN] > out.json
Runs the prompt through HF in several numerics variants and prints, for every pair, the minimum
cosine over positions and the share of positions with the same top-1 token. Variants:
  f32        float32 weights and math (TF32 off): the exact function
  bf16       bf16, eager attention, PyTorch defaults: HF's usual bf16 forward
  bf16_norpr bf16, eager, cuBLAS reduced-precision reductions disallowed
  bf16_sdpa  bf16, PyTorch SDPA attention
  ours       our engine's logits for the same ids (float32 [n, vocab] file), when given
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM


def logits_of(model_dir, ids, dtype, attn="eager", rpr=True):
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = rpr
    torch.backends.cuda.matmul.allow_tf32 = False
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=attn).to("cuda").eval()
    with torch.no_grad():
        out = model(torch.tensor([ids], device="cuda")).logits[0].float().cpu()
    del model
    torch.cuda.empty_cache()
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = True
    return out


def compare(a, b):
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return {"minCos": round(cos.min().item(), 5), "top1": round((a.argmax(-1) == b.argmax(-1)).float().mean().item(), 4)}


def main():
    model_dir, ids_path = sys.argv[1:3]
    ids = json.load(open(ids_path))
    runs = {
        "bf16": logits_of(model_dir, ids, torch.bfloat16),
        "bf16_norpr": logits_of(model_dir, ids, torch.bfloat16, rpr=False),
        "bf16_sdpa": logits_of(model_dir, ids, torch.bfloat16, attn="sdpa"),
        "f32": logits_of(model_dir, ids, torch.float32),
    }
    if len(sys.argv) > 3:
        runs["ours"] = torch.from_numpy(__import__("numpy").fromfile(sys.argv[3], dtype="<f4")).view(len(ids), -1)
    names = list(runs)
    table = {f"{a} vs {b}": compare(runs[a], runs[b]) for i, a in enumerate(names) for b in names[i + 1:]}
    print(json.dumps({"torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "pairs": table}, indent=1))


if __name__ == "__main__":
    main()
