// Before any process starts: can this folder be served at all? The same checks a worker makes while
// loading (config.json, every tensor's presence, shape and dtype, the tokenizer), done once in the
// launching process from the safetensors headers only, so a broken checkpoint is one precise line
// instead of a worker's failure per rank.
import { checkTensor, loadModelConfig, loadTokenizer, openCheckpoint, planShard } from '../model/index.js';

/** Throws the first problem, naming the file and the tensor or field. */
export async function checkCheckpoint(dir: string): Promise<void> {
  const config = loadModelConfig(dir);
  const plan = planShard(config, { tpRank: 0, tpSize: 1, layerStart: 0, layerEnd: config.numLayers });
  const ckpt = await openCheckpoint(dir);
  try {
    for (const t of plan.tensors) checkTensor(ckpt, t, plan.dtype, plan.dtypeFrom);
  } finally {
    await ckpt.close();
  }
  await loadTokenizer(dir);
}
