// Original file: proto/control.proto


export interface PeerIn {
  'rank'?: (number);
  'host'?: (string);
  'listenAddresses'?: (string)[];
}

export interface Peer {
  'rank': (number);
  'host': (string);
  'listenAddresses': (string)[];
}
