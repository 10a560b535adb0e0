"""Hugging Face transformers' eager forward as the batch-32 baseline of bench/moe/run.mjs.

usage: python3 hf_moe.py MODEL_DIR BATCH PROMPT NEW   -> one JSON line {"decode_tok_s", "prefill_s", ...}
bf16 on cuda:0, attn_implementation="eager", greedy generate with a KV cache, NEW tokens (no EOS
stop); decode throughput = BATCH * (NEW - 1) / (generate time - one prefill forward's time).
"""
import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM


def main():
    d, batch, prompt, new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, attn_implementation="eager").to("cuda").eval()
    vocab = model.config.vocab_size
    ids = torch.tensor([[3 + ((i * 31 + s * 7) % (vocab - 3)) for i in range(prompt)] for s in range(batch)], device="cuda")
    mask = torch.ones_like(ids)
    with torch.no_grad():
        model.generate(ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(input_ids=ids, attention_mask=mask)
        torch.cuda.synchronize()
        prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
        total = time.perf_counter() - t0
    n = out.shape[1] - prompt
    print(json.dumps({"decode_tok_s": batch * (n - 1) / (total - prefill), "prefill_s": prefill, "generate_s": total,
                      "new_tokens": n, "torch": torch.__version__, "gpu": torch.cuda.get_device_name()}))


if __name__ == "__main__":
    main()
