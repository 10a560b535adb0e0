#!/usr/bin/python3
"""Emulated bf16 (f32 math, bf16 rounding at chosen sites) vs f32, per position of the 128-token prompt.
usage: /usr/bin/python3 bench/decode/bf16_rounding_sites.py MODEL_DIR SITES[/SITES...]
(SITES: comma list of resid,act,attn,logits,all; each /-separated set is one run vs exact f32).
Cheap (f32 speed): shows which rounding costs the top-1 agreement on a random checkpoint."""
import json, math, os, sys
import torch
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'cpu'))
from torch_llama import load_safetensors
d = sys.argv[1]; N = 128
c = json.load(open(d + '/config.json'))
H, nh, L, eps = c['hidden_size'], c['num_attention_heads'], c['num_hidden_layers'], c['rms_norm_eps']
nkv = c.get('num_key_value_heads', nh); D = H // nh; V = c['vocab_size']
x = 12345; ids = [1]
for _ in range(N - 1):
    x = (x * 1103515245 + 12345) % 2147483648; ids.append(3 + (x % (V - 3)))
w = load_safetensors(d)
head = w.get('lm_head.weight', w['model.embed_tokens.weight'])
inv = 1.0 / (10000.0 ** (torch.arange(0, D, 2).float() / D))
ang = torch.outer(torch.arange(N).float(), inv); emb = torch.cat([ang, ang], -1)
mask = torch.full((N, N), float('-inf')).triu(1)
def run(sites):
    R = lambda t, s: t.to(torch.bfloat16).float() if (s in sites or 'all' in sites) else t
    cos, sin = R(emb.cos(), 'act'), R(emb.sin(), 'act')
    def norm(h, g): return R(g * R(h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps), 'act'), 'act')
    def rope(t):
        t1, t2 = t[..., :D // 2], t[..., D // 2:]
        return R(R(t * cos, 'act') + R(torch.cat([-t2, t1], -1) * sin, 'act'), 'act')
    h = w['model.embed_tokens.weight'][torch.tensor(ids)]
    with torch.no_grad():
        for l in range(L):
            p = f'model.layers.{l}.'
            a = norm(h, w[p + 'input_layernorm.weight'])
            q = rope(R(a @ w[p + 'self_attn.q_proj.weight'].T, 'act').view(N, nh, D).transpose(0, 1))
            k = rope(R(a @ w[p + 'self_attn.k_proj.weight'].T, 'act').view(N, nkv, D).transpose(0, 1)).repeat_interleave(nh // nkv, 0)
            v = R(a @ w[p + 'self_attn.v_proj.weight'].T, 'act').view(N, nkv, D).transpose(0, 1).repeat_interleave(nh // nkv, 0)
            s = R(R(q @ k.transpose(-1, -2), 'attn') / math.sqrt(D), 'attn') + mask
            o = R(R(torch.softmax(s, -1), 'attn') @ v, 'attn')
            h = R(h + R(o.transpose(0, 1).reshape(N, H) @ w[p + 'self_attn.o_proj.weight'].T, 'act'), 'resid')
            a = norm(h, w[p + 'post_attention_layernorm.weight'])
            g = R(R(torch.nn.functional.silu(R(a @ w[p + 'mlp.gate_proj.weight'].T, 'act')), 'act') * R(a @ w[p + 'mlp.up_proj.weight'].T, 'act'), 'act')
            h = R(h + R(g @ w[p + 'mlp.down_proj.weight'].T, 'act'), 'resid')
        return R(norm(h, w['model.norm.weight']) @ head.T, 'logits'), h
ref, h0 = run(set())
for sites in sys.argv[2].split('/'):
    out, h1 = run(set(sites.split(',')))
    cs = torch.nn.functional.cosine_similarity(ref, out, dim=-1)
    print(json.dumps({'model': d.split('/')[-1], 'sites': sites, 'minCos': round(cs.min().item(), 5), 'top1': (ref.argmax(-1) == out.argmax(-1)).float().mean().item(),
      'hiddenMinCos': round(torch.nn.functional.cosine_similarity(h0, h1, dim=-1).min().item(), 6)}), flush=True)
