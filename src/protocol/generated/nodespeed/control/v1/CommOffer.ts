// Original file: proto/control.proto

import type { Long } from '@grpc/proto-loader';

/**
 * Communicator rendezvous: every member of a group offers a blob (TCP: its listen address; NCCL:
 * rank 0 the unique id), the coordinator answers every member with all blobs in rank order.
 */
export interface CommOfferIn {
  'epoch'?: (number | string | Long);
  'group'?: (string);
  'groupRank'?: (number);
  'groupSize'?: (number);
  'payload'?: (Buffer | Uint8Array | string);
}

/**
 * Communicator rendezvous: every member of a group offers a blob (TCP: its listen address; NCCL:
 * rank 0 the unique id), the coordinator answers every member with all blobs in rank order.
 */
export interface CommOffer {
  'epoch': (string);
  'group': (string);
  'groupRank': (number);
  'groupSize': (number);
  'payload': (Buffer);
}
