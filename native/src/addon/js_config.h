// Reading JS arguments into engine.h structs, with errors that name the field.
#pragma once

#include <napi.h>

#include "engine.h"

namespace ns::addon {

// ShardConfigJS (camelCase of ns::ShardConfig, plus device: 'cpu' | 'cuda') → ShardConfig.
ShardConfig ParseShardConfig(const Napi::Object& js, std::string* device);
// quantized: also the storage types of quantized matrices ('i8', 'f8e4m3'), for loadTensor.
DType ParseDType(const Napi::Value& v, const std::string& field, bool quantized = false);
WeightFormat ParseWeightFormat(const Napi::Value& v, const std::string& field);
const char* DTypeName(DType d);
// A non-negative integer seed from a number or a bigint.
uint64_t ParseSeed(const Napi::Value& v, const std::string& field);
// StepSeq.sampling (SamplingExtrasJS): min-p, penalties, prompt length, logit bias, logprobs into
// `p`; the bias list is stored in `bias` (p points into it). Errors name `field`.
void ParseSamplingExtras(const Napi::Value& v, SamplingParams* p, std::vector<LogitBias>* bias, const std::string& field);
// The logprobs of a step (StepOutput's lists) as {sampled, topIds, top}, or undefined when none.
Napi::Value LogprobsToJs(Napi::Env env, const StepOutput& out);

}  // namespace ns::addon
