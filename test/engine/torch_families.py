#!/usr/bin/python3
"""A plain PyTorch forward of every model family nodespeed serves (no transformers: Debian's
python3-torch), written from transformers' modeling code, for test/engine/families.test.ts until
(and beside) the fixtures transformers itself makes (test/fixtures/hf-reference/make_families.py).

usage: torch_families.py make FAMILY DIR      random checkpoint in Hugging Face naming (f32)
       torch_families.py run DIR IDS[;IDS...] N  JSON list of {"logits": last-position logits, "greedy": N tokens}

The greedy decode is incremental as transformers' generate is: one forward of the prompt, then one
token a step over the cached keys/values; dynamic and longrope frequencies follow the sequence's
length at each step (transformers recomputes them from max(position) + 1), cached keys keep theirs.
"""
import json
import math
import os
import shutil
import struct
import sys
import zlib

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench", "cpu"))
from torch_llama import load_safetensors  # noqa: E402  (bf16 / f32 safetensors, sharded or not)

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER_DIR = os.path.join(HERE, "..", "fixtures", "hf-reference", "tiny-llama-gqa-f32")

BASE = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=0,
            eos_token_id=1, tie_word_embeddings=False, dtype="float32")


def rp(kind="default", theta=10000.0, **kw):
    return {"rope_type": kind, "rope_theta": theta, **kw}


FAMILIES = {
    "qwen3": dict(BASE, model_type="qwen3", rope_parameters=rp(theta=1e6)),
    "gemma2": dict(BASE, model_type="gemma2", tie_word_embeddings=True, hidden_activation="gelu_pytorch_tanh",
                   query_pre_attn_scalar=24, sliding_window=12, attn_logit_softcapping=0.5, final_logit_softcapping=1.0,
                   layer_types=["sliding_attention", "full_attention"] * 2, rope_parameters=rp()),
    "gemma3_text": dict(BASE, model_type="gemma3_text", tie_word_embeddings=True, hidden_activation="gelu_pytorch_tanh",
                        query_pre_attn_scalar=20, sliding_window=12,
                        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
                        rope_parameters={"sliding_attention": rp(), "full_attention": rp("linear", 1e6, factor=2.0)}),
    "phi3": dict({k: v for k, v in BASE.items() if k != "head_dim"}, model_type="phi3", max_position_embeddings=128,
                 original_max_position_embeddings=32, partial_rotary_factor=0.75,
                 rope_parameters=rp("longrope", short_factor=[1.0, 1.02, 1.05, 1.1, 1.2, 1.3],
                                    long_factor=[1.0, 1.5, 2.5, 4.0, 6.0, 8.0])),
    "llama_bias_yarn": dict(BASE, model_type="llama", attention_bias=True, mlp_bias=True, max_position_embeddings=128,
                            rope_parameters=rp("yarn", factor=4.0, original_max_position_embeddings=32)),
    "llama_dynamic": dict(BASE, model_type="llama", max_position_embeddings=32, rope_parameters=rp("dynamic", factor=4.0)),
    "mistral": dict(BASE, model_type="mistral", sliding_window=12, rope_parameters=rp()),
    "qwen2_swa": dict(BASE, model_type="qwen2", use_sliding_window=True, sliding_window=12, max_window_layers=2,
                      rope_parameters=rp()),
    "mixtral": dict(BASE, model_type="mixtral", num_local_experts=4, num_experts_per_tok=2, intermediate_size=96,
                    rope_parameters=rp()),
    "qwen3_moe": dict(BASE, model_type="qwen3_moe", num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                      norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], rope_parameters=rp(theta=1e6)),
    "qwen2_moe": dict(BASE, model_type="qwen2_moe", num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=64, norm_topk_prob=False, decoder_sparse_step=1,
                      mlp_only_layers=[], rope_parameters=rp()),
}
GEMMA = ("gemma2", "gemma3_text")


class Spec:
    """The family switches, read from config.json the way transformers' classes read them."""

    def __init__(self, c):
        t = c["model_type"]
        self.c, self.t = c, t
        self.H, self.L, self.V = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
        self.nh, self.nkv = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
        self.D = c.get("head_dim") or self.H // self.nh
        self.eps = c["rms_norm_eps"]
        self.gemma = t in GEMMA
        self.qk_norm = t in ("qwen3", "qwen3_moe", "gemma3_text")
        self.qkv_bias = t in ("qwen2", "qwen2_moe") or (t in ("llama", "qwen3") and c.get("attention_bias", False))
        self.o_bias = t == "llama" and c.get("attention_bias", False)
        self.mlp_bias = c.get("mlp_bias", False)
        self.scale = (c.get("query_pre_attn_scalar", self.D) if self.gemma else self.D) ** -0.5
        self.attn_cap = c.get("attn_logit_softcapping") if self.gemma else None
        self.final_cap = c.get("final_logit_softcapping") if self.gemma else None
        self.window = c.get("sliding_window")
        if t in ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe") and not c.get("use_sliding_window"):
            self.window = None
        if "layer_types" in c:
            self.sliding = [x == "sliding_attention" for x in c["layer_types"]]
        elif t in ("qwen2", "qwen3"):
            self.sliding = [i >= c.get("max_window_layers", self.L) for i in range(self.L)]
        else:
            self.sliding = [True] * self.L
        if self.window is None:
            self.sliding = [False] * self.L
        prf = c.get("partial_rotary_factor", 1.0)
        self.rot = int(self.D * prf)
        params = c.get("rope_parameters") or {}
        if "full_attention" in params:
            self.rope_global, self.rope_local = params["full_attention"], params.get("sliding_attention", params["full_attention"])
        else:
            self.rope_global = self.rope_local = params
        self.orig_top = c.get("original_max_position_embeddings")
        self.moe = t in ("mixtral", "qwen3_moe", "qwen2_moe")
        if t == "mixtral":
            self.E, self.k, self.Ie, self.norm_topk = c["num_local_experts"], c["num_experts_per_tok"], c["intermediate_size"], True
        elif self.moe:
            self.E, self.k, self.Ie = c["num_experts"], c["num_experts_per_tok"], c["moe_intermediate_size"]
            self.norm_topk = c.get("norm_topk_prob", t == "qwen3_moe")
        self.shared = c.get("shared_expert_intermediate_size", 0) if t == "qwen2_moe" else 0

    def inv_freq(self, r, seq_len):
        """(inv_freq, attention_factor) as transformers' ROPE_INIT_FUNCTIONS compute them."""
        kind, theta, dim = r.get("rope_type", "default"), r.get("rope_theta", 10000.0), self.rot
        maxp = self.c["max_position_embeddings"]
        ar = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
        if kind == "dynamic":
            f = r["factor"]
            seq = max(seq_len, maxp)
            theta = theta * ((f * seq / maxp) - (f - 1)) ** (dim / (dim - 2))
        inv = 1.0 / (theta ** ar)
        att = 1.0
        if kind == "linear":
            inv = inv / r["factor"]
        elif kind == "yarn":
            f, orig = r["factor"], r.get("original_max_position_embeddings", maxp)
            att = r.get("attention_factor") or (0.1 * math.log(f) + 1.0)
            bf, bs = r.get("beta_fast") or 32, r.get("beta_slow") or 1

            def cdim(rot):
                return (dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(theta))
            low, high = max(math.floor(cdim(bf)), 0), min(math.ceil(cdim(bs)), dim - 1)
            if low == high:
                high += 0.001
            ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
            pos = theta ** ar
            keep = 1 - ramp
            inv = (1.0 / (f * pos)) * (1 - keep) + (1.0 / pos) * keep
        elif kind == "longrope":
            orig = self.orig_top or r["original_max_position_embeddings"]
            f = r.get("factor") or maxp / orig
            att = r.get("attention_factor") or (1.0 if f <= 1 else math.sqrt(1 + math.log(f) / math.log(orig)))
            ext = torch.tensor(r["long_factor"] if seq_len > orig else r["short_factor"], dtype=torch.float32)
            inv = 1.0 / (ext * theta ** ar)
        return inv, att


def norm(s, x, w):
    w = 1.0 + w if s.gemma else w
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + s.eps))


def act(s, g):
    return torch.nn.functional.gelu(g, approximate="tanh") if s.gemma else torch.nn.functional.silu(g)


def lin(w, p, x):
    y = x @ w[p + ".weight"].T
    b = w.get(p + ".bias")
    return y if b is None else y + b


def rope(s, x, pos, inv, att):
    ang = pos[:, None].float() * inv[None, :]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1) * att, torch.cat([ang.sin(), ang.sin()], -1) * att
    r, rest = x[..., : s.rot], x[..., s.rot:]
    half = s.rot // 2
    rot = torch.cat([-r[..., half:], r[..., :half]], -1)
    return torch.cat([r * cos + rot * sin, rest], -1)


def mlp(s, w, p, h):
    if s.t == "phi3":
        g, u = lin(w, p + "gate_up_proj", h).chunk(2, dim=-1)
        return lin(w, p + "down_proj", u * act(s, g))
    return lin(w, p + "down_proj", act(s, lin(w, p + "gate_proj", h)) * lin(w, p + "up_proj", h))


def moe(s, w, p, h):
    router = p.replace("mlp.", "block_sparse_moe.") if s.t == "mixtral" else p
    probs = torch.softmax(h @ w[router + "gate.weight"].T, dim=-1)
    top, idx = torch.topk(probs, s.k, dim=-1)
    if s.norm_topk:
        top = top / top.sum(-1, keepdim=True)
    out = torch.zeros_like(h)
    for t in range(h.shape[0]):
        for j in range(s.k):
            e = int(idx[t, j])
            if s.t == "mixtral":
                ep = p.replace("mlp.", "block_sparse_moe.") + f"experts.{e}."
                y = lin(w, ep + "w2", act(s, lin(w, ep + "w1", h[t])) * lin(w, ep + "w3", h[t]))
            else:
                y = mlp(s, w, p + f"experts.{e}.", h[t])
            out[t] += top[t, j] * y
    if s.shared:
        out = out + torch.sigmoid(h @ w[p + "shared_expert_gate.weight"].T) * mlp(s, w, p + "shared_expert.", h)
    return out


class Model:
    def __init__(self, d):
        self.s = Spec(json.load(open(os.path.join(d, "config.json"))))
        self.w = load_safetensors(d)
        self.cache = [([], []) for _ in range(self.s.L)]

    @torch.no_grad()
    def forward(self, ids, pos0):
        s, w = self.s, self.w
        T = len(ids)
        pos = torch.arange(pos0, pos0 + T)
        seq_len = pos0 + T
        x = w["model.embed_tokens.weight"][torch.tensor(ids)]
        if s.gemma:
            x = x * torch.tensor(s.H ** 0.5, dtype=torch.float32)
        for l in range(s.L):
            p = f"model.layers.{l}."
            a = p + "self_attn."
            h = norm(s, x, w[p + "input_layernorm.weight"])
            if s.t == "phi3":
                qkv = h @ w[a + "qkv_proj.weight"].T
                q, k, v = qkv.split([s.nh * s.D, s.nkv * s.D, s.nkv * s.D], -1)
            else:
                q, k, v = lin(w, a + "q_proj", h), lin(w, a + "k_proj", h), lin(w, a + "v_proj", h)
            q, k, v = q.view(T, s.nh, s.D), k.view(T, s.nkv, s.D), v.view(T, s.nkv, s.D)
            if s.qk_norm:
                q, k = norm(s, q, w[a + "q_norm.weight"]), norm(s, k, w[a + "k_norm.weight"])
            r = s.rope_local if s.sliding[l] else s.rope_global
            inv, att = s.inv_freq(r, seq_len)
            q = rope(s, q.transpose(0, 1), pos, inv, att)
            k = rope(s, k.transpose(0, 1), pos, inv, att)
            kc, vc = self.cache[l]
            kc.append(k)
            vc.append(v.transpose(0, 1))
            K = torch.cat(kc, 1).repeat_interleave(s.nh // s.nkv, 0)
            Vv = torch.cat(vc, 1).repeat_interleave(s.nh // s.nkv, 0)
            sc = (q @ K.transpose(-1, -2)) * s.scale
            if s.attn_cap:
                sc = torch.tanh(sc / s.attn_cap) * s.attn_cap
            kv = torch.arange(seq_len)
            allowed = kv[None, :] <= pos[:, None]
            if s.sliding[l]:
                allowed &= kv[None, :] > pos[:, None] - s.window
            sc = sc.masked_fill(~allowed, float("-inf"))
            o = (torch.softmax(sc, -1) @ Vv).transpose(0, 1).reshape(T, -1)
            o = lin(w, a + "o_proj", o)
            if s.gemma:
                x = x + norm(s, o, w[p + "post_attention_layernorm.weight"])
                h = norm(s, x, w[p + "pre_feedforward_layernorm.weight"])
            else:
                x = x + o
                h = norm(s, x, w[p + "post_attention_layernorm.weight"])
            m = moe(s, w, p + "mlp.", h) if s.moe else mlp(s, w, p + "mlp.", h)
            if s.gemma:
                m = norm(s, m, w[p + "post_feedforward_layernorm.weight"])
            x = x + m
        x = norm(s, x[-1], w["model.norm.weight"])
        head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
        logits = x @ head.T
        if s.final_cap:
            logits = torch.tanh(logits / s.final_cap) * s.final_cap
        return logits


def tensors_of(family, c):
    s = Spec(c)
    H, D, I = s.H, s.D, c["intermediate_size"]
    t = {"model.embed_tokens.weight": (s.V, H), "model.norm.weight": (H,)}
    if not c["tie_word_embeddings"]:
        t["lm_head.weight"] = (s.V, H)

    def dense(p, inter, bias):
        if s.t == "phi3":
            t[p + "gate_up_proj.weight"] = (2 * inter, H)
        else:
            t[p + "gate_proj.weight"], t[p + "up_proj.weight"] = (inter, H), (inter, H)
        t[p + "down_proj.weight"] = (H, inter)
        if bias:
            t[p + "gate_proj.bias"], t[p + "up_proj.bias"], t[p + "down_proj.bias"] = (inter,), (inter,), (H,)
    for l in range(s.L):
        p = f"model.layers.{l}."
        a = p + "self_attn."
        for n in ["input_layernorm", "post_attention_layernorm"] + (
                ["pre_feedforward_layernorm", "post_feedforward_layernorm"] if s.gemma else []):
            t[p + n + ".weight"] = (H,)
        if s.t == "phi3":
            t[a + "qkv_proj.weight"] = ((s.nh + 2 * s.nkv) * D, H)
        else:
            t[a + "q_proj.weight"], t[a + "k_proj.weight"], t[a + "v_proj.weight"] = (s.nh * D, H), (s.nkv * D, H), (s.nkv * D, H)
        if s.qkv_bias:
            t[a + "q_proj.bias"], t[a + "k_proj.bias"], t[a + "v_proj.bias"] = (s.nh * D,), (s.nkv * D,), (s.nkv * D,)
        if s.qk_norm:
            t[a + "q_norm.weight"], t[a + "k_norm.weight"] = (D,), (D,)
        t[a + "o_proj.weight"] = (H, s.nh * D)
        if s.o_bias:
            t[a + "o_proj.bias"] = (H,)
        if s.t == "mixtral":
            m = p + "block_sparse_moe."
            t[m + "gate.weight"] = (s.E, H)
            for e in range(s.E):
                t[m + f"experts.{e}.w1.weight"], t[m + f"experts.{e}.w3.weight"] = (s.Ie, H), (s.Ie, H)
                t[m + f"experts.{e}.w2.weight"] = (H, s.Ie)
        elif s.moe:
            t[p + "mlp.gate.weight"] = (s.E, H)
            for e in range(s.E):
                dense(p + f"mlp.experts.{e}.", s.Ie, False)
            if s.shared:
                dense(p + "mlp.shared_expert.", s.shared, False)
                t[p + "mlp.shared_expert_gate.weight"] = (1, H)
        else:
            dense(p + "mlp.", I, s.mlp_bias)
    return t


def make(family, d):
    c = FAMILIES[family]
    os.makedirs(d, exist_ok=True)
    gemma = c["model_type"] in GEMMA
    tensors = {}
    for name, shape in sorted(tensors_of(family, c).items()):
        g = torch.Generator()
        g.manual_seed(zlib.crc32(f"{family}/{name}".encode()))
        r = torch.randn(shape, generator=g)
        if len(shape) == 1 and "norm" in name:
            v = r * 0.1 if gemma else 1 + r * 0.1
        elif name.endswith(".bias"):
            v = r * 0.1
        elif name.endswith("gate.weight") and "shared" not in name:
            v = r * 0.3
        else:
            v = r * 0.08
        tensors[name] = v.contiguous().numpy().astype("<f4")
    header, off = {}, 0
    for name, a in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
    hj = json.dumps(header).encode()
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hj)) + hj)
        for a in tensors.values():
            f.write(a.tobytes())
    json.dump(c, open(os.path.join(d, "config.json"), "w"), indent=1)
    for n in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(os.path.join(TOKENIZER_DIR, n), os.path.join(d, n))


def run(d, ids, n):
    m = Model(d)
    logits = m.forward(ids, 0)
    out = {"logits": logits.tolist(), "greedy": []}
    tok, pos = int(logits.argmax()), len(ids)
    for _ in range(n):
        out["greedy"].append(tok)
        tok = int(m.forward([tok], pos).argmax())
        pos += 1
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "run":
        prompts = [[int(x) for x in p.split(",")] for p in sys.argv[3].split(";")]
        print(json.dumps([run(sys.argv[2], p, int(sys.argv[4])) for p in prompts]))
    else:
        sys.exit(__doc__)
