// Original file: proto/control.proto

import type * as grpc from '@grpc/grpc-js'
import type { MethodDefinition } from '@grpc/proto-loader'
import type { CoordinatorMessageIn as _nodespeed_control_v1_CoordinatorMessageIn, CoordinatorMessage as _nodespeed_control_v1_CoordinatorMessage } from '../../../nodespeed/control/v1/CoordinatorMessage.js';
import type { WorkerMessageIn as _nodespeed_control_v1_WorkerMessageIn, WorkerMessage as _nodespeed_control_v1_WorkerMessage } from '../../../nodespeed/control/v1/WorkerMessage.js';

export interface ControlClient extends grpc.Client {
  Connect(metadata: grpc.Metadata, options?: grpc.CallOptions): grpc.ClientDuplexStream<_nodespeed_control_v1_WorkerMessageIn, _nodespeed_control_v1_CoordinatorMessage>;
  Connect(options?: grpc.CallOptions): grpc.ClientDuplexStream<_nodespeed_control_v1_WorkerMessageIn, _nodespeed_control_v1_CoordinatorMessage>;
  connect(metadata: grpc.Metadata, options?: grpc.CallOptions): grpc.ClientDuplexStream<_nodespeed_control_v1_WorkerMessageIn, _nodespeed_control_v1_CoordinatorMessage>;
  connect(options?: grpc.CallOptions): grpc.ClientDuplexStream<_nodespeed_control_v1_WorkerMessageIn, _nodespeed_control_v1_CoordinatorMessage>;
  
}

export interface ControlHandlers extends grpc.UntypedServiceImplementation {
  Connect: grpc.handleBidiStreamingCall<_nodespeed_control_v1_WorkerMessage, _nodespeed_control_v1_CoordinatorMessageIn>;
  
}

export interface ControlDefinition extends grpc.ServiceDefinition {
  Connect: MethodDefinition<_nodespeed_control_v1_WorkerMessageIn, _nodespeed_control_v1_CoordinatorMessageIn, _nodespeed_control_v1_WorkerMessage, _nodespeed_control_v1_CoordinatorMessage>
}
