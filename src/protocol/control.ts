// The control plane's messages (proto/control.proto, package nodespeed.control.v1) as the
// coordinator and the workers use them: the generated types under their proto names (decoded: what
// a receiver gets; `...In`: what a sender may write), and each stream direction as a union on its
// oneof, so a `switch (m.msg)` narrows to the member that is set.
import type { CoordinatorMessage as CoordinatorMessageWire, CoordinatorMessageIn } from './generated/nodespeed/control/v1/CoordinatorMessage.js';
import type { WorkerMessage as WorkerMessageWire, WorkerMessageIn } from './generated/nodespeed/control/v1/WorkerMessage.js';

export type { Abort } from './generated/nodespeed/control/v1/Abort.js';
export type { Assignment } from './generated/nodespeed/control/v1/Assignment.js';
export type { Cancel } from './generated/nodespeed/control/v1/Cancel.js';
export type { ControlClient as ControlStub } from './generated/nodespeed/control/v1/Control.js';
export type { CommPeers } from './generated/nodespeed/control/v1/CommPeers.js';
export type { DeviceInfoIn } from './generated/nodespeed/control/v1/DeviceInfo.js';
export type { Heartbeat } from './generated/nodespeed/control/v1/Heartbeat.js';
export type { Join, JoinIn } from './generated/nodespeed/control/v1/Join.js';
export type { ReplicaLoad, ReplicaLoadIn } from './generated/nodespeed/control/v1/ReplicaLoad.js';
export type { Start } from './generated/nodespeed/control/v1/Start.js';
export type { Stop } from './generated/nodespeed/control/v1/Stop.js';
export type { Submit, SubmitIn } from './generated/nodespeed/control/v1/Submit.js';
export type { TokenUpdate, TokenUpdateIn } from './generated/nodespeed/control/v1/TokenUpdate.js';
export type { Tokens } from './generated/nodespeed/control/v1/Tokens.js';

/** A decoded oneof message as a union: `msg` names the member, and that member is set. */
type OneofUnion<T extends { msg?: string }> = {
  [K in NonNullable<T['msg']>]: { msg: K } & { [F in K]: NonNullable<T[F & keyof T]> };
}[NonNullable<T['msg']>];

/** Worker → coordinator, as the coordinator receives it. */
export type WorkerMessage = OneofUnion<WorkerMessageWire>;
/** Coordinator → worker, as the worker receives it. */
export type CoordinatorMessage = OneofUnion<CoordinatorMessageWire>;
/** What each side writes: one member set (proto defaults for the fields left out). */
export type OutgoingWorkerMessage = WorkerMessageIn;
export type OutgoingCoordinatorMessage = CoordinatorMessageIn;
