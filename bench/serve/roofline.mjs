// The roofline of the concurrent-streams workload of bench/serve: S streams that all
// arrive at once, each a P-token prompt and N new tokens, served on one GPU with 16-bit weights
// and KV cache. Lower bound on its wall time = prefill FLOPs / peak matmul FLOP/s (every prompt
// token through every weight once, plus causal attention) + decode bytes / copy bandwidth (each of
// the N - 1 decode steps reads every weight once, except the embedding table, and every stream's
// whole KV cache so far). Ignores overlap of prefill and decode (both bounds are for the same
// device, so no schedule beats their sum by much) and assumes a perfect kernel at each end.
//   servingRoofline(cfg, { streams, promptLen, newTokens, bytesPerS, flopsPerS }) -> { ... }
// Quantized replicas (docs/QUANTIZATION.md) read fewer bytes: linearBytesPerElement for the decoder
// linears (1 for int8 / fp8, plus one f32 scale per row), headBytesPerElement for the LM head,
// kvBytesPerElement for the KV cache (1 for fp8); their prefill runs at the FLOP/s of their GEMMs
// (flopsPerS: the fp8 peak for W8A8).
// cfg: the ModelConfig of dist/model (hiddenSize, intermediateSize, numHeads, numKvHeads, headDim,
// vocabSize, numLayers, tieWordEmbeddings).

export function parameterCount(cfg) {
  const H = cfg.hiddenSize, qd = cfg.numHeads * cfg.headDim, kvd = cfg.numKvHeads * cfg.headDim;
  const perLayer = H * qd + 2 * H * kvd + qd * H + 3 * H * cfg.intermediateSize + 2 * H;
  const embed = cfg.vocabSize * H;
  const head = cfg.tieWordEmbeddings ? 0 : cfg.vocabSize * H;
  return { perLayer, layers: perLayer * cfg.numLayers, embed, head, total: perLayer * cfg.numLayers + embed + head + H };
}

export function servingRoofline(cfg, { streams: S, promptLen: P, newTokens: N, bytesPerS, flopsPerS, bytesPerElement = 2,
  linearBytesPerElement = bytesPerElement, headBytesPerElement = bytesPerElement, kvBytesPerElement = bytesPerElement }) {
  const p = parameterCount(cfg);
  // Read per decode step: every weight but the embedding table (one row of it); a tied head reads it
  // whole. Quantized linears also read their f32 row scales.
  const H = cfg.hiddenSize, norms = (2 * cfg.numLayers + 1) * H;
  const linear = p.layers - 2 * H * cfg.numLayers;
  const linearRows = cfg.numLayers * (cfg.numHeads * cfg.headDim + 2 * cfg.numKvHeads * cfg.headDim + H + 3 * cfg.intermediateSize);
  const head = cfg.tieWordEmbeddings ? p.embed : p.head;
  const scaleBytes = linearBytesPerElement < 2 ? 4 * linearRows : 0;
  const stepWeightBytes = linear * linearBytesPerElement + scaleBytes + head * headBytesPerElement + norms * bytesPerElement +
    (cfg.tieWordEmbeddings ? 0 : H * bytesPerElement);
  const kvBytesPerToken = 2 * cfg.numLayers * cfg.numKvHeads * cfg.headDim * kvBytesPerElement;
  const decodeSteps = N - 1;
  // Step k (1..N-1) attends over P + k positions of each stream.
  const kvTokensRead = S * (decodeSteps * P + (decodeSteps * (decodeSteps + 1)) / 2);
  const decodeBytes = decodeSteps * stepWeightBytes + kvTokensRead * kvBytesPerToken;
  // Prefill: 2 FLOPs per weight (the matmul weights, the head at the last position only) per token,
  // and QK^T + PV over the causal pairs.
  const matmulParams = p.layers - 2 * cfg.hiddenSize * cfg.numLayers;
  const prefillFlops = 2 * matmulParams * S * P + 2 * (p.head || p.embed) * S
    + 4 * cfg.numLayers * cfg.numHeads * cfg.headDim * S * (P * (P + 1)) / 2;
  const decodeS = bytesPerS ? decodeBytes / bytesPerS : null;
  const prefillS = flopsPerS ? prefillFlops / flopsPerS : null;
  const wallS = decodeS !== null && prefillS !== null ? decodeS + prefillS : null;
  return {
    stepWeightBytes, kvBytesPerToken, decodeBytes, prefillFlops, decodeS, prefillS, wallS,
    generatedTokS: wallS ? (S * N) / wallS : null,
  };
}
