"""HF transformers reference for test/gpu/model-7b.test.ts: logits of every position of one prompt.

usage: python3 hf_logits.py MODEL_DIR IDS_JSON OUT_BF16_BIN [OUT_F32_BIN]
Loads MODEL_DIR in bf16 on cuda:0 the way a user does (AutoModelForCausalLM defaults: SDPA attention,
PyTorch's default matmul settings), runs the prompt ids (a JSON list) in one
forward and writes the logits [n, vocab] as little-endian float32 to OUT_BF16_BIN; with a fourth
argument, does the same with the model loaded in float32 (the noise floor of bf16 itself).
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM


def logits_of(model_dir, ids, dtype, out_path):
    # transformers' default attention (SDPA). The eager implementation rounds the attention scores
    # to bf16 as well, a further rounding no fused kernel makes; bench/decode/hf_noise.py reports
    # both (eager vs SDPA alone: min cosine 0.9958, top-1 85% on the 7B shape, H200).
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    model = model.to("cuda").eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids], device="cuda")).logits[0].float().cpu()
    logits.numpy().astype("<f4").tofile(out_path)
    del model
    torch.cuda.empty_cache()
    return list(logits.shape)


def main():
    model_dir, ids_path, out_path = sys.argv[1:4]
    ids = json.load(open(ids_path))
    shape = logits_of(model_dir, ids, torch.bfloat16, out_path)
    if len(sys.argv) > 4:
        logits_of(model_dir, ids, torch.float32, sys.argv[4])
    print(json.dumps({"hf_logits": shape, "torch": torch.__version__, "gpu": torch.cuda.get_device_name()}))


if __name__ == "__main__":
    main()
