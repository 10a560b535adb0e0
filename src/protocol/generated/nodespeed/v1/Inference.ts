// Original file: proto/inference.proto

import type * as grpc from '@grpc/grpc-js'
import type { MethodDefinition } from '@grpc/proto-loader'
import type { ClusterStatusRequestIn as _nodespeed_v1_ClusterStatusRequestIn, ClusterStatusRequest as _nodespeed_v1_ClusterStatusRequest } from '../../nodespeed/v1/ClusterStatusRequest.js';
import type { ClusterStatusResponseIn as _nodespeed_v1_ClusterStatusResponseIn, ClusterStatusResponse as _nodespeed_v1_ClusterStatusResponse } from '../../nodespeed/v1/ClusterStatusResponse.js';
import type { CompleteResponseIn as _nodespeed_v1_CompleteResponseIn, CompleteResponse as _nodespeed_v1_CompleteResponse } from '../../nodespeed/v1/CompleteResponse.js';
import type { GenerateRequestIn as _nodespeed_v1_GenerateRequestIn, GenerateRequest as _nodespeed_v1_GenerateRequest } from '../../nodespeed/v1/GenerateRequest.js';
import type { GenerateResponseIn as _nodespeed_v1_GenerateResponseIn, GenerateResponse as _nodespeed_v1_GenerateResponse } from '../../nodespeed/v1/GenerateResponse.js';
import type { ListModelsRequestIn as _nodespeed_v1_ListModelsRequestIn, ListModelsRequest as _nodespeed_v1_ListModelsRequest } from '../../nodespeed/v1/ListModelsRequest.js';
import type { ListModelsResponseIn as _nodespeed_v1_ListModelsResponseIn, ListModelsResponse as _nodespeed_v1_ListModelsResponse } from '../../nodespeed/v1/ListModelsResponse.js';

export interface InferenceClient extends grpc.Client {
  ClusterStatus(argument: _nodespeed_v1_ClusterStatusRequestIn, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_nodespeed_v1_ClusterStatusResponse>): grpc.ClientUnaryCall;
  ClusterStatus(argument: _nodespeed_v1_ClusterStatusRequestIn, metadata: grpc.Metadata, callback: grpc.requestCallback<_nodespeed_v1_ClusterStatusResponse>): grpc.ClientUnaryCall;
  ClusterStatus(argument: _nodespeed_v1_ClusterStatusRequestIn, options: grpc.CallOptions, callback: grpc.requestCallback<_nodespeed_v1_ClusterStatusResponse>): grpc.ClientUnaryCall;
  ClusterStatus(argument: _nodespeed_v1_ClusterStatusRequestIn, callback: grpc.requestCallback<_nodespeed_v1_ClusterStatusResponse>): grpc.ClientUnaryCall;
  clusterStatus(argument: _nodespeed_v1_ClusterStatusRequestIn, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_nodespeed_v1_ClusterStatusResponse>): grpc.ClientUnaryCall;
  clusterStatus(argument: _nodespeed_v1_ClusterStatusRequestIn, metadata: grpc.Metadata, callback: grpc.requestCallback<_nodespeed_v1_ClusterStatusResponse>): grpc.ClientUnaryCall;
  clusterStatus(argument: _nodespeed_v1_ClusterStatusRequestIn, options: grpc.CallOptions, callback: grpc.requestCallback<_nodespeed_v1_ClusterStatusResponse>): grpc.ClientUnaryCall;
  clusterStatus(argument: _nodespeed_v1_ClusterStatusRequestIn, callback: grpc.requestCallback<_nodespeed_v1_ClusterStatusResponse>): grpc.ClientUnaryCall;
  
  /**
   * The same generation, answered once when it is finished.
   */
  Complete(argument: _nodespeed_v1_GenerateRequestIn, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_nodespeed_v1_CompleteResponse>): grpc.ClientUnaryCall;
  Complete(argument: _nodespeed_v1_GenerateRequestIn, metadata: grpc.Metadata, callback: grpc.requestCallback<_nodespeed_v1_CompleteResponse>): grpc.ClientUnaryCall;
  Complete(argument: _nodespeed_v1_GenerateRequestIn, options: grpc.CallOptions, callback: grpc.requestCallback<_nodespeed_v1_CompleteResponse>): grpc.ClientUnaryCall;
  Complete(argument: _nodespeed_v1_GenerateRequestIn, callback: grpc.requestCallback<_nodespeed_v1_CompleteResponse>): grpc.ClientUnaryCall;
  /**
   * The same generation, answered once when it is finished.
   */
  complete(argument: _nodespeed_v1_GenerateRequestIn, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_nodespeed_v1_CompleteResponse>): grpc.ClientUnaryCall;
  complete(argument: _nodespeed_v1_GenerateRequestIn, metadata: grpc.Metadata, callback: grpc.requestCallback<_nodespeed_v1_CompleteResponse>): grpc.ClientUnaryCall;
  complete(argument: _nodespeed_v1_GenerateRequestIn, options: grpc.CallOptions, callback: grpc.requestCallback<_nodespeed_v1_CompleteResponse>): grpc.ClientUnaryCall;
  complete(argument: _nodespeed_v1_GenerateRequestIn, callback: grpc.requestCallback<_nodespeed_v1_CompleteResponse>): grpc.ClientUnaryCall;
  
  /**
   * Streams the continuation of a prompt. Each message carries the ids sampled since the previous
   * one, the text they settle (text that might still become a stop string is held back) and the
   * index of its first token in the whole generation, so a client can detect gaps and repeats.
   */
  Generate(argument: _nodespeed_v1_GenerateRequestIn, metadata: grpc.Metadata, options?: grpc.CallOptions): grpc.ClientReadableStream<_nodespeed_v1_GenerateResponse>;
  Generate(argument: _nodespeed_v1_GenerateRequestIn, options?: grpc.CallOptions): grpc.ClientReadableStream<_nodespeed_v1_GenerateResponse>;
  /**
   * Streams the continuation of a prompt. Each message carries the ids sampled since the previous
   * one, the text they settle (text that might still become a stop string is held back) and the
   * index of its first token in the whole generation, so a client can detect gaps and repeats.
   */
  generate(argument: _nodespeed_v1_GenerateRequestIn, metadata: grpc.Metadata, options?: grpc.CallOptions): grpc.ClientReadableStream<_nodespeed_v1_GenerateResponse>;
  generate(argument: _nodespeed_v1_GenerateRequestIn, options?: grpc.CallOptions): grpc.ClientReadableStream<_nodespeed_v1_GenerateResponse>;
  
  ListModels(argument: _nodespeed_v1_ListModelsRequestIn, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_nodespeed_v1_ListModelsResponse>): grpc.ClientUnaryCall;
  ListModels(argument: _nodespeed_v1_ListModelsRequestIn, metadata: grpc.Metadata, callback: grpc.requestCallback<_nodespeed_v1_ListModelsResponse>): grpc.ClientUnaryCall;
  ListModels(argument: _nodespeed_v1_ListModelsRequestIn, options: grpc.CallOptions, callback: grpc.requestCallback<_nodespeed_v1_ListModelsResponse>): grpc.ClientUnaryCall;
  ListModels(argument: _nodespeed_v1_ListModelsRequestIn, callback: grpc.requestCallback<_nodespeed_v1_ListModelsResponse>): grpc.ClientUnaryCall;
  listModels(argument: _nodespeed_v1_ListModelsRequestIn, metadata: grpc.Metadata, options: grpc.CallOptions, callback: grpc.requestCallback<_nodespeed_v1_ListModelsResponse>): grpc.ClientUnaryCall;
  listModels(argument: _nodespeed_v1_ListModelsRequestIn, metadata: grpc.Metadata, callback: grpc.requestCallback<_nodespeed_v1_ListModelsResponse>): grpc.ClientUnaryCall;
  listModels(argument: _nodespeed_v1_ListModelsRequestIn, options: grpc.CallOptions, callback: grpc.requestCallback<_nodespeed_v1_ListModelsResponse>): grpc.ClientUnaryCall;
  listModels(argument: _nodespeed_v1_ListModelsRequestIn, callback: grpc.requestCallback<_nodespeed_v1_ListModelsResponse>): grpc.ClientUnaryCall;
  
}

export interface InferenceHandlers extends grpc.UntypedServiceImplementation {
  ClusterStatus: grpc.handleUnaryCall<_nodespeed_v1_ClusterStatusRequest, _nodespeed_v1_ClusterStatusResponseIn>;
  
  /**
   * The same generation, answered once when it is finished.
   */
  Complete: grpc.handleUnaryCall<_nodespeed_v1_GenerateRequest, _nodespeed_v1_CompleteResponseIn>;
  
  /**
   * Streams the continuation of a prompt. Each message carries the ids sampled since the previous
   * one, the text they settle (text that might still become a stop string is held back) and the
   * index of its first token in the whole generation, so a client can detect gaps and repeats.
   */
  Generate: grpc.handleServerStreamingCall<_nodespeed_v1_GenerateRequest, _nodespeed_v1_GenerateResponseIn>;
  
  ListModels: grpc.handleUnaryCall<_nodespeed_v1_ListModelsRequest, _nodespeed_v1_ListModelsResponseIn>;
  
}

export interface InferenceDefinition extends grpc.ServiceDefinition {
  ClusterStatus: MethodDefinition<_nodespeed_v1_ClusterStatusRequestIn, _nodespeed_v1_ClusterStatusResponseIn, _nodespeed_v1_ClusterStatusRequest, _nodespeed_v1_ClusterStatusResponse>
  Complete: MethodDefinition<_nodespeed_v1_GenerateRequestIn, _nodespeed_v1_CompleteResponseIn, _nodespeed_v1_GenerateRequest, _nodespeed_v1_CompleteResponse>
  Generate: MethodDefinition<_nodespeed_v1_GenerateRequestIn, _nodespeed_v1_GenerateResponseIn, _nodespeed_v1_GenerateRequest, _nodespeed_v1_GenerateResponse>
  ListModels: MethodDefinition<_nodespeed_v1_ListModelsRequestIn, _nodespeed_v1_ListModelsResponseIn, _nodespeed_v1_ListModelsRequest, _nodespeed_v1_ListModelsResponse>
}
