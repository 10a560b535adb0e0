"""HF transformers eager baseline for bench/decode/run.mjs, plus the device-to-device copy bandwidth.

usage: python3 hf_generate.py MODEL_DIR PROMPT_LEN NEW_TOKENS BATCH[,BATCH...]
       python3 hf_generate.py --copy-only   (only {"gpu", "copy"}: the roofline of a run without HF)
Prints one JSON object: copy bandwidth (bytes read + written per second), peak bf16 matmul FLOP/s
and, where torch can run it, peak E4M3 matmul FLOP/s (bench/serve's rooflines) and, per batch size,
the generate() wall time, the prefill time alone, and decode tokens/s = batch * (new - 1) /
(generate - prefill). Greedy, no EOS stop (min_new_tokens = new tokens).
"""
import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM


def copy_bandwidth():
    n = 1 << 30  # 1 GiB of bf16 per buffer, far over L2
    src = torch.randn(n // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(20):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    times.sort()
    t = times[len(times) // 2]
    return {"bytes_moved": 2 * n, "median_s": t, "bytes_per_s": 2 * n / t}


def matmul_flops():
    """Peak dense bf16 matmul FLOP/s as torch reaches it (8192^3, median of 20): the compute roof."""
    n = 8192
    a = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    for _ in range(3):
        a @ b
    times = []
    for _ in range(20):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        a @ b
        e1.record()
        torch.cuda.synchronize()
        times.append(e0.elapsed_time(e1) / 1e3)
    times.sort()
    return {"n": n, "median_s": times[len(times) // 2], "flops_per_s": 2 * n ** 3 / times[len(times) // 2]}


def matmul_fp8_flops():
    """Peak dense E4M3 matmul FLOP/s (torch._scaled_mm, unit scales, bf16 out, 8192^3, median of 20): the
    compute roof of W8A8 prefill. None where torch or the GPU has no FP8 GEMM."""
    try:
        n = 8192
        a = torch.randn(n, n, device="cuda").to(torch.float8_e4m3fn)
        b = torch.randn(n, n, device="cuda").to(torch.float8_e4m3fn).t()  # column-major, as _scaled_mm wants it
        one = torch.ones((), device="cuda")
        for _ in range(3):
            torch._scaled_mm(a, b, one, one, out_dtype=torch.bfloat16)
        times = []
        for _ in range(20):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            torch._scaled_mm(a, b, one, one, out_dtype=torch.bfloat16)
            e1.record()
            torch.cuda.synchronize()
            times.append(e0.elapsed_time(e1) / 1e3)
        times.sort()
        return {"n": n, "median_s": times[len(times) // 2], "flops_per_s": 2 * n ** 3 / times[len(times) // 2]}
    except Exception as e:  # noqa: BLE001 (an old torch or a GPU without FP8: no number)
        print(json.dumps({"matmul_fp8": f"unavailable: {e}"}), file=sys.stderr)
        return None


def main():
    if sys.argv[1:] == ["--copy-only"]:
        print(json.dumps({"gpu": torch.cuda.get_device_name(), "copy": copy_bandwidth()}))
        return
    model_dir, prompt_len, new_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    batches = [int(b) for b in sys.argv[4].split(",")]
    out = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "copy": copy_bandwidth(), "matmul": matmul_flops(),
           "matmul_fp8": matmul_fp8_flops()}
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation="eager")
    model = model.to("cuda").eval()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    out["hf"] = {}
    for b in batches:
        ids = torch.randint(2, vocab, (b, prompt_len), generator=g).to("cuda")
        mask = torch.ones_like(ids)
        kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        with torch.no_grad():
            model.generate(ids, attention_mask=mask, **dict(kw, max_new_tokens=4, min_new_tokens=4))  # warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(ids, attention_mask=mask)
            torch.cuda.synchronize()
            prefill = time.perf_counter() - t0
            t0 = time.perf_counter()
            gen = model.generate(ids, attention_mask=mask, **kw)
            torch.cuda.synchronize()
            total = time.perf_counter() - t0
        assert gen.shape[1] == prompt_len + new_tokens, gen.shape
        out["hf"][str(b)] = {
            "batch": b, "generate_s": total, "prefill_s": prefill,
            "decode_tok_s": b * (new_tokens - 1) / (total - prefill),
            "e2e_tok_s": b * new_tokens / total,
        }
        print(json.dumps({"hf_batch": b, **out["hf"][str(b)]}), file=sys.stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
