# Hugging Face (transformers 5 / tokenizers) reading what `nodespeed model init` writes: the
# tokenizers must give our ids, HF's forward over the tiny checkpoint our CPU engine's logits, and
# the preset configs HF's parameter counts. Inputs from make.mjs (see there). Seen 2026-11-23 with
# transformers 5.17 / tokenizers 0.23: all ids and decodes equal, logits within 3e-7, counts equal.
import json, os, shutil, tempfile
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast
root = os.path.dirname(os.path.abspath(__file__))
ours = json.load(open(os.path.join(root, 'ours.json')))
res = {'tokenizers': {}, 'logits': [], 'presets': {}}
for name, cases in ours['tokenizers'].items():
    tok = AutoTokenizer.from_pretrained(os.path.join(root, name))
    rows = []
    for c in cases:
        ids = tok(c['text'])['input_ids']
        rows.append({'text': c['text'], 'same_ids': ids == c['ids'], 'hf': ids, 'ours': c['ids'],
                     'decode_same': tok.decode(ids, skip_special_tokens=True) == c['decoded']})
    res['tokenizers'][name] = {'class': type(tok).__name__, 'len': len(tok), 'all_same': all(r['same_ids'] and r['decode_same'] for r in rows),
                               'bad': [r for r in rows if not (r['same_ids'] and r['decode_same'])]}
model = AutoModelForCausalLM.from_pretrained(os.path.join(root, 'tiny'), dtype=torch.bfloat16).float().eval()
res['rope'] = str(getattr(model.config, 'rope_parameters', None))
with torch.no_grad():
    for c in ours['logits']:
        lg = model(torch.tensor([c['ids']])).logits[0, -1]
        d = (lg - torch.tensor(c['last'])).abs().max().item()
        res['logits'].append({'n': len(c['ids']), 'max_abs_diff': d, 'argmax_same': int(lg.argmax()) == int(torch.tensor(c['last']).argmax())})
for p, n in ours['presets'].items():
    d = tempfile.mkdtemp(); shutil.copy(os.path.join(root, 'presets', p + '.json'), os.path.join(d, 'config.json'))
    cfg = AutoConfig.from_pretrained(d)
    with torch.device('meta'):
        m = AutoModelForCausalLM.from_config(cfg)
    hf_n = sum(t.numel() for t in m.parameters())
    res['presets'][p] = {'ours': n, 'hf': hf_n, 'same': hf_n == n, 'rope': str(cfg.rope_parameters), 'dtype': str(cfg.dtype)}
print(json.dumps(res, indent=1))
