// Original file: proto/control.proto


export interface LogitBiasIn {
  'token'?: (number);
  'bias'?: (number | string);
}

export interface LogitBias {
  'token': (number);
  'bias': (number);
}
