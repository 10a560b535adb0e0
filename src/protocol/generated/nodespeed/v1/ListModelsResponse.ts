// Original file: proto/inference.proto

import type { ModelInfoIn as _nodespeed_v1_ModelInfoIn, ModelInfo as _nodespeed_v1_ModelInfo } from '../../nodespeed/v1/ModelInfo.js';

export interface ListModelsResponseIn {
  'models'?: (_nodespeed_v1_ModelInfoIn)[];
}

export interface ListModelsResponse {
  'models': (_nodespeed_v1_ModelInfo)[];
}
