"""PyTorch references for test/gpu/quant-check.mjs and families-quant.mjs: logits of every position of
one prompt with the quantized numerics nodespeed runs (docs/QUANTIZATION.md), computed by transformers
in float32 (eager attention, as the fixtures' HF logits were made) on weights quantized the same way:
  int8: every decoder linear and the LM head W -> q * s, s = amax(row) / 127, q = round(W / s)
        clamped to +-127 (ties to even, as torch.round), f32 arithmetic (W8A16: inputs unquantized);
  fp8:  every decoder linear W -> e4m3(W / s) * s, s = amax(row) / 448, and each input row x of
        those linears, rounded to bf16 first (what a bf16 engine quantizes: ours, vLLM's dynamic
        per-token fp8), -> e4m3(x / t) * t, t = max(amax(x) / 448, 1 / (448 * 512)) (W8A8, per
        token); the LM head unquantized;
  fp8a32: the same from the f32 input rows: a second fp8 computation as valid as the first, whose
        distance to it shows how far bf16-level input rounding alone moves W8A8 logits;
plus HF's own bf16 forward ("bf16") and float32 ("f32"), and the fp8 KV
cache (nodespeed's --kv-cache-dtype fp8, as vLLM keeps it: one scale per layer, 1.0 unless the
checkpoint has k_scale / v_scale): every key and value row the attention stores, after its bias,
norm and RoPE, -> e4m3(k / s) * s (round to nearest even, saturating at 448), and the attention
reads only those (the prompt's own tokens too), through a transformers cache whose update quantizes:
  kv8:     f32 weights + the fp8 KV cache (s = 1);
  fp8+kv8: the fp8 weights and activations above + the fp8 KV cache (s = 1);
  kv8cal:  f32 weights + the fp8 KV cache with s = amax / 448 of each layer's keys (values) of the
           prompt (vLLM's --calculate-kv-scales), to show what scale 1 costs on these values;
  fp8+kv8cal: the fp8 weights and activations + that calibrated cache.
  A calibrated cache is as precise as scale 1 (E4M3's relative step does not depend on the scale
  above its smallest normal) but rounds every element differently: the two losses side by side show
  how much one rounding draw of the cache moves the loss at a prompt.
Attention: eager, as test/fixtures/hf-reference's logits were made. transformers' default SDPA
implementation silently drops Gemma 2's attention logit soft-capping (its sdpa_attention_forward
never reads `softcap`), which made a different model of every Gemma 2 checkpoint; the bf16 mode
keeps SDPA (what a user of HF gets) except where the config soft-caps attention scores.
The fp8 KV modes print, per mode, the keys' and values' amax and the fraction of elements below
2^-6 (E4M3's smallest normal: with s = 1 those lose relative precision as subnormals).
Mixtures of experts as nodespeed's CUDA backend runs them: the router and the shared expert's gate
stay float; the routed experts (transformers' 3D expert tensors [E, out, in]) and the shared expert
have their weights quantized per row like every linear, and their inputs never quantized (the CUDA
expert kernels hold them dequantized in the compute dtype).

usage: python3 quant_reference.py MODEL_DIR IDS_JSON OUT_DIR MODE[,MODE...]
  (modes: bf16 f32 int8 fp8 fp8a32 kv8 fp8+kv8 kv8cal fp8+kv8cal)
Writes OUT_DIR/<mode>.bin: little-endian float32 logits [n, vocab]; IDS_JSON holding a list of
prompts (lists of ids): OUT_DIR/<mode>-<i>.bin for prompt i. Prints one JSON line.
"""
import json
import os
import sys

import torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

E4M3_MIN_NORMAL = 2.0 ** -6


def quantize_rows(w, qmax):
    amax = w.abs().amax(dim=1, keepdim=True)
    s = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    return s


def int8_weight(w):
    s = quantize_rows(w, 127.0)
    return torch.clamp(torch.round(w / s), -127, 127) * s


def fp8_weight(w):
    s = quantize_rows(w, 448.0)
    return (w / s).to(torch.float8_e4m3fn).to(torch.float32) * s


def fp8_act(x, from_bf16=True):
    if from_bf16:
        x = x.to(torch.bfloat16).to(torch.float32)
    t = torch.clamp(x.abs().amax(dim=-1, keepdim=True) / 448.0, min=1.0 / (448.0 * 512.0))
    return (x / t).to(torch.float8_e4m3fn).to(torch.float32) * t


def e4m3(x, s):
    return (x / s).clamp(-448.0, 448.0).to(torch.float8_e4m3fn).to(x.dtype) * s


class Fp8KvCache(DynamicCache):
    """The fp8 KV cache: what the attention stores (and then reads) is e4m3(k / s) * s, e4m3(v / s) * s.
    calibrate: s = amax / 448 of the layer's first update (the prompt), else 1.0. Keeps statistics."""

    def __init__(self, config, calibrate, stats):
        try:
            super().__init__(config=config)
        except TypeError:
            super().__init__()
        self.calibrate, self.stats, self.scales = calibrate, stats, {}

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        out = []
        for kind, x in (("k", key_states), ("v", value_states)):
            amax = x.abs().max().item()
            s = self.scales.setdefault((kind, layer_idx), max(amax, 1e-12) / 448.0 if self.calibrate else 1.0)
            st = self.stats.setdefault(kind, {"amax": 0.0, "below_min_normal": 0, "n": 0})
            st["amax"] = max(st["amax"], amax)
            st["below_min_normal"] += int((x.abs() < E4M3_MIN_NORMAL * s).sum().item())
            st["n"] += x.numel()
            out.append(e4m3(x, s))
        return super().update(out[0], out[1], layer_idx, *args, **kwargs)


def is_router(name):
    return name.endswith(".gate") or name.endswith("shared_expert_gate")


def is_expert(name):
    return ".experts." in name or ".shared_expert." in name


def linears(model, head):
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and ((".layers." in name and not is_router(name)) or (head and name == "lm_head")):
            yield name, m


def expert_tensors(model):
    """The routed experts' 3D weights [E, out, in] (quantized per (expert, output row))."""
    for name, m in model.named_modules():
        if type(m).__name__.endswith("Experts"):
            for pname, p in m.named_parameters(recurse=False):
                if p.dim() == 3:
                    yield f"{name}.{pname}", p


def attention(model_dir, dtype):
    """eager for the f32 references (the fixtures' implementation); bf16: transformers' default unless
    the model soft-caps attention scores, which SDPA ignores without a word."""
    if dtype == torch.float32 or getattr(AutoConfig.from_pretrained(model_dir), "attn_logit_softcapping", None):
        return {"attn_implementation": "eager"}
    return {}


def main():
    model_dir, ids_path, out_dir = sys.argv[1:4]
    modes = sys.argv[4].split(",")
    prompts = json.load(open(ids_path))
    many = isinstance(prompts[0], list)
    prompts = prompts if many else [prompts]
    os.makedirs(out_dir, exist_ok=True)
    info = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "modes": modes}

    def run(model, mode):
        kv = "kv8" in mode
        stats = {}
        for i, p in enumerate(prompts):
            ids = torch.tensor([p], device="cuda")
            extra = {"past_key_values": Fp8KvCache(model.config, mode.endswith("kv8cal"), stats), "use_cache": True} if kv else {}
            with torch.no_grad():
                logits = model(ids, **extra).logits[0].float().cpu()
            logits.numpy().astype("<f4").tofile(os.path.join(out_dir, (f"{mode}-{i}" if many else mode) + ".bin"))
        if kv:
            info.setdefault("kv", {})[mode] = {k: {"amax": v["amax"], "below_min_normal": v["below_min_normal"] / max(v["n"], 1)}
                                               for k, v in stats.items()}

    if "bf16" in modes:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, **attention(model_dir, torch.bfloat16)).to("cuda").eval()
        run(model, "bf16")
        del model
        torch.cuda.empty_cache()
    rest = [m for m in modes if m != "bf16"]
    if rest:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **attention(model_dir, torch.float32)).to("cuda").eval()
        if model.config.tie_word_embeddings:  # int8 quantizes the head as its own copy of the embedding
            model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
        originals = {name: m.weight.detach().to(torch.bfloat16) for name, m in linears(model, True)}  # exact: bf16 checkpoints
        experts = {name: (p, p.detach().to(torch.bfloat16)) for name, p in expert_tensors(model)}
        hooks = []
        for mode in rest:
            weights = "fp8" if mode.startswith("fp8") else "int8" if mode == "int8" else "f32"  # kv8, kv8cal: f32 weights
            for h in hooks:
                h.remove()
            hooks = []
            with torch.no_grad():
                for name, m in linears(model, True):
                    w = originals[name].to(torch.float32)
                    if weights == "int8":
                        w = int8_weight(w)
                    elif weights == "fp8" and name != "lm_head":
                        w = fp8_weight(w)
                    m.weight.copy_(w)
                for name, (p, orig) in experts.items():
                    w = orig.to(torch.float32)
                    shape = w.shape
                    w = w.reshape(-1, shape[-1])
                    w = int8_weight(w) if weights == "int8" else fp8_weight(w) if weights == "fp8" else w
                    p.copy_(w.reshape(shape))
            if weights == "fp8":
                from_bf16 = mode != "fp8a32"
                for name, m in linears(model, False):
                    if not is_expert(name):
                        hooks.append(m.register_forward_pre_hook(lambda _m, args: (fp8_act(args[0], from_bf16),)))
            try:
                run(model, mode)
            except Exception as e:  # the other modes still come back; the caller reports this one's files missing
                if "kv8" not in mode:
                    raise
                info.setdefault("errors", {})[mode] = f"{type(e).__name__}: {e}"
    print(json.dumps(info))


if __name__ == "__main__":
    main()
