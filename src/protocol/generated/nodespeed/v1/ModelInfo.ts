// Original file: proto/inference.proto


export interface ModelInfoIn {
  'name'?: (string);
  'path'?: (string);
  'architecture'?: (string);
  'contextLength'?: (number);
  'vocabSize'?: (number);
  'numLayers'?: (number);
  'dtype'?: (string);
}

export interface ModelInfo {
  'name': (string);
  'path': (string);
  'architecture': (string);
  'contextLength': (number);
  'vocabSize': (number);
  'numLayers': (number);
  'dtype': (string);
}
