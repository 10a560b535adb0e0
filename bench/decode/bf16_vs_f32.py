#!/usr/bin/python3
"""bf16 vs float32 compute of one Llama checkpoint, every position of a 128-token prompt (the
prompt of test/gpu/model-7b.test.ts). bf16 path follows HF transformers' LlamaForCausalLM in bf16:
bf16 weights and activations, RMSNorm and softmax in float32 then cast back, bf16 logits.
usage: /usr/bin/python3 bench/decode/bf16_vs_f32.py MODEL_DIR [N]   (CPU bf16 is slow: ~4 min for the 1b preset)"""
import json, math, os, sys, time
import torch
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'cpu'))
from torch_llama import load_safetensors

d = sys.argv[1]; N = int(sys.argv[2]) if len(sys.argv) > 2 else 128
c = json.load(open(d + '/config.json'))
H, nh, L, eps = c['hidden_size'], c['num_attention_heads'], c['num_hidden_layers'], c['rms_norm_eps']
nkv = c.get('num_key_value_heads', nh); D = H // nh
V = c['vocab_size']
x = 12345; ids = [1]
for _ in range(N - 1):
    x = (x * 1103515245 + 12345) % 2147483648; ids.append(3 + (x % (V - 3)))
W32 = load_safetensors(d)

def forward(dt):
    w = {k: v.to(dt) for k, v in W32.items()}
    head = w.get('lm_head.weight', w['model.embed_tokens.weight'])
    def norm(h, g):
        hf = h.float(); hf = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)
        return g * hf.to(dt)
    inv = 1.0 / (10000.0 ** (torch.arange(0, D, 2).float() / D))
    ang = torch.outer(torch.arange(N).float(), inv); emb = torch.cat([ang, ang], -1)
    cos, sin = emb.cos().to(dt), emb.sin().to(dt)
    def rope(t):
        t1, t2 = t[..., :D // 2], t[..., D // 2:]
        return t * cos + torch.cat([-t2, t1], -1) * sin
    mask = torch.full((N, N), float('-inf')).triu(1)
    h = w['model.embed_tokens.weight'][torch.tensor(ids)]
    with torch.no_grad():
        for l in range(L):
            p = f'model.layers.{l}.'
            a = norm(h, w[p + 'input_layernorm.weight'])
            q = rope((a @ w[p + 'self_attn.q_proj.weight'].T).view(N, nh, D).transpose(0, 1))
            k = rope((a @ w[p + 'self_attn.k_proj.weight'].T).view(N, nkv, D).transpose(0, 1)).repeat_interleave(nh // nkv, 0)
            v = (a @ w[p + 'self_attn.v_proj.weight'].T).view(N, nkv, D).transpose(0, 1).repeat_interleave(nh // nkv, 0)
            s = (q @ k.transpose(-1, -2)) / math.sqrt(D) + mask.to(dt)
            o = torch.softmax(s, -1, dtype=torch.float32).to(dt) @ v
            h = h + o.transpose(0, 1).reshape(N, H) @ w[p + 'self_attn.o_proj.weight'].T
            a = norm(h, w[p + 'post_attention_layernorm.weight'])
            g = torch.nn.functional.silu(a @ w[p + 'mlp.gate_proj.weight'].T) * (a @ w[p + 'mlp.up_proj.weight'].T)
            h = h + g @ w[p + 'mlp.down_proj.weight'].T
        out = norm(h, w['model.norm.weight']) @ head.T
    return out.float(), h.float()

t = time.time(); f32, h32 = forward(torch.float32); t1 = time.time() - t
t = time.time(); b16, h16 = forward(torch.bfloat16); t2 = time.time() - t
cos = torch.nn.functional.cosine_similarity(f32, b16, dim=-1)
top = (f32.argmax(-1) == b16.argmax(-1)).float().mean().item()
srt = f32.sort(-1, descending=True).values
gap = (srt[:, 0] - srt[:, 1])
ties = sum(int((r == r.max()).sum() > 1) for r in b16)
print(json.dumps({'model': d, 'positions': N, 'minCosine': round(cos.min().item(), 5), 'meanCosine': round(cos.mean().item(), 5),
  'top1Agreement': top, 'bf16LogitTiesAtTop': ties,
  'f32LogitStd': round(f32.std().item(), 4), 'f32Top1Top2GapMedian': round(gap.median().item(), 4),
  'residualRms': round(h32.pow(2).mean().sqrt().item(), 4),
  'finalHiddenCos': round(torch.nn.functional.cosine_similarity(h32, h16, dim=-1).min().item(), 5),
  'seconds': [round(t1, 1), round(t2, 1)], 'torch': torch.__version__}))
