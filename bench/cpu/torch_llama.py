#!/usr/bin/python3
"""PyTorch CPU baseline for bench/cpu: a plain Llama forward (no transformers) over the same HF
safetensors weights, fp32 compute, a preallocated KV cache, greedy decode of a batch.

Prints one JSON line: {"prefill_tok_s", "decode_tok_s", "torch", "threads"}.
Run with Debian's torch: /usr/bin/python3 bench/cpu/torch_llama.py --model DIR --batch B ...
"""
import argparse
import json
import math
import os
import struct
import time

import numpy as np
import torch


def load_safetensors(model_dir):
    files = []
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors = {}
    for name in files:
        with open(os.path.join(model_dir, name), "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
            blob = f.read()
        for key, t in header.items():
            if key == "__metadata__":
                continue
            a, b = t["data_offsets"]
            raw = np.frombuffer(blob[a:b], dtype={"F32": np.float32, "BF16": np.uint16, "F16": np.float16}[t["dtype"]])
            if t["dtype"] == "BF16":
                raw = (raw.astype(np.uint32) << 16).view(np.float32)
            tensors[key] = torch.from_numpy(raw.astype(np.float32).reshape(t["shape"]))
    return tensors


def scale_inv_freq(inv, rp):
    """transformers' ROPE_INIT_FUNCTIONS for 'linear' and 'llama3' (modeling_rope_utils.py)."""
    kind = rp.get("rope_type", rp.get("type", "default"))
    if kind == "linear":
        return inv / rp["factor"]
    if kind == "llama3":
        factor, low, high = rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"]
        old = rp["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old / low, old / high
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled)
    return inv


class Llama:
    def __init__(self, model_dir, max_seq, batch):
        with open(os.path.join(model_dir, "config.json")) as f:
            c = json.load(f)
        self.H = c["hidden_size"]
        self.nh = c["num_attention_heads"]
        self.nkv = c.get("num_key_value_heads", self.nh)
        self.D = c.get("head_dim") or self.H // self.nh
        self.L = c["num_hidden_layers"]
        self.eps = c.get("rms_norm_eps", 1e-5)
        rp = c.get("rope_parameters") or c.get("rope_scaling") or {}
        theta = rp.get("rope_theta", c.get("rope_theta", 10000.0))
        w = load_safetensors(model_dir)
        self.w = w
        self.embed = w["model.embed_tokens.weight"]
        self.head = w.get("lm_head.weight", self.embed)
        inv = 1.0 / (theta ** (torch.arange(0, self.D, 2).float() / self.D))
        inv = scale_inv_freq(inv, rp)
        ang = torch.outer(torch.arange(max_seq).float(), inv)
        self.cos = torch.cat([ang.cos(), ang.cos()], -1)
        self.sin = torch.cat([ang.sin(), ang.sin()], -1)
        self.k = torch.zeros(self.L, batch, self.nkv, max_seq, self.D)
        self.v = torch.zeros(self.L, batch, self.nkv, max_seq, self.D)

    def norm(self, x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    def proj(self, h, name):
        y = h @ self.w[name + ".weight"].T
        bias = self.w.get(name + ".bias")  # qwen2's q/k/v biases
        return y if bias is None else y + bias

    def rope(self, x, pos, n):
        cos, sin = self.cos[pos:pos + n], self.sin[pos:pos + n]
        x1, x2 = x[..., : self.D // 2], x[..., self.D // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    @torch.no_grad()
    def forward(self, tokens, pos):
        B, T = tokens.shape
        x = self.embed[tokens]
        for l in range(self.L):
            p = f"model.layers.{l}."
            h = self.norm(x, self.w[p + "input_layernorm.weight"])
            q = self.proj(h, p + "self_attn.q_proj").view(B, T, self.nh, self.D).transpose(1, 2)
            k = self.proj(h, p + "self_attn.k_proj").view(B, T, self.nkv, self.D).transpose(1, 2)
            v = self.proj(h, p + "self_attn.v_proj").view(B, T, self.nkv, self.D).transpose(1, 2)
            q, k = self.rope(q, pos, T), self.rope(k, pos, T)
            self.k[l, :, :, pos:pos + T] = k
            self.v[l, :, :, pos:pos + T] = v
            K = self.k[l, :, :, : pos + T].repeat_interleave(self.nh // self.nkv, 1)
            V = self.v[l, :, :, : pos + T].repeat_interleave(self.nh // self.nkv, 1)
            s = (q @ K.transpose(-1, -2)) / math.sqrt(self.D)
            mask = torch.full((T, pos + T), float("-inf")).triu(pos + 1)
            a = torch.softmax(s + mask, -1) @ V
            x = x + a.transpose(1, 2).reshape(B, T, -1) @ self.w[p + "self_attn.o_proj.weight"].T
            h = self.norm(x, self.w[p + "post_attention_layernorm.weight"])
            g = torch.nn.functional.silu(h @ self.w[p + "mlp.gate_proj.weight"].T) * (h @ self.w[p + "mlp.up_proj.weight"].T)
            x = x + g @ self.w[p + "mlp.down_proj.weight"].T
        x = self.norm(x[:, -1], self.w["model.norm.weight"])
        return x @ self.head.T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs; the best is reported")
    ap.add_argument("--check", help="comma-separated prompt ids: print the greedy continuation and exit")
    ap.add_argument("--logits", help="comma-separated prompt ids: print the last position's logits and exit")
    a = ap.parse_args()
    if a.logits:
        ids = [int(t) for t in a.logits.split(",")]
        m = Llama(a.model, len(ids), 1)
        print(json.dumps(m.forward(torch.tensor([ids]), 0)[0].tolist()))
        return
    if a.check:
        ids = [int(t) for t in a.check.split(",")]
        m = Llama(a.model, len(ids) + 16, 1)
        out = [int(m.forward(torch.tensor([ids]), 0).argmax(-1))]
        for i in range(15):
            out.append(int(m.forward(torch.tensor([[out[-1]]]), len(ids) + i).argmax(-1)))
        print(json.dumps(out))
        return
    torch.set_num_threads(a.threads)
    m = Llama(a.model, a.prompt + a.steps + 1, a.batch)
    vocab = m.embed.shape[0]
    tokens = (torch.arange(a.batch * a.prompt).view(a.batch, a.prompt) * 17 + 3) % vocab
    m.forward(tokens, 0)  # warm-up (first-call allocations); each timed run overwrites the cache
    best_prefill = best_decode = 0.0
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        logits = m.forward(tokens, 0)
        prefill = time.perf_counter() - t0
        nxt = logits.argmax(-1, keepdim=True)
        t0 = time.perf_counter()
        for i in range(a.steps):
            nxt = m.forward(nxt, a.prompt + i).argmax(-1, keepdim=True)
        decode = time.perf_counter() - t0
        best_prefill = max(best_prefill, a.batch * a.prompt / prefill)
        best_decode = max(best_decode, a.batch * a.steps / decode)
    print(json.dumps({"prefill_tok_s": best_prefill, "decode_tok_s": best_decode,
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
