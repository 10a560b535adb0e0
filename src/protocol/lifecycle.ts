// One request's lifecycle, shared by the coordinator's request store and router and by a replica's
// scheduler (the shape of vLLM's RequestStatus): one status, the legal transitions in one table, and
// one FinishReason (the proto enum, the same value from the stop checker to the client).
//
//   queued ──▶ running ──▶ finished (FinishReason STOP or LENGTH)
//     ▲           │  ▲
//     └───────────┤  │       running → queued: its replica was lost; it is replayed from its
//                 ▼  │       prompt and the tokens already streamed
//              preempted
//   queued, running, preempted ──▶ failed | cancelled
import { FinishReason } from './generated/nodespeed/v1/FinishReason.js';

export { FinishReason };

export const RequestStatus = {
  /** Accepted and waiting: for a replica (coordinator) or for KV blocks (a replica's scheduler). */
  QUEUED: 'queued',
  /** Routed to a replica (coordinator); in its batch with its KV blocks reserved (scheduler). */
  RUNNING: 'running',
  /** Taken out of the batch to make room for another; it resumes by recomputing what it had. */
  PREEMPTED: 'preempted',
  /** Ended by the model or its limits: FinishReason STOP (EOS, a stop string) or LENGTH. */
  FINISHED: 'finished',
  /** Cannot complete: refused by its replica, no replica in time, the server stopping. */
  FAILED: 'failed',
  /** Its client went away or its deadline passed. */
  CANCELLED: 'cancelled',
} as const;
export type RequestStatus = (typeof RequestStatus)[keyof typeof RequestStatus];

const { QUEUED, RUNNING, PREEMPTED, FINISHED, FAILED, CANCELLED } = RequestStatus;

/** Every legal transition; a status missing here is terminal. */
const NEXT: Readonly<Record<RequestStatus, readonly RequestStatus[]>> = {
  [QUEUED]: [RUNNING, FAILED, CANCELLED],
  [RUNNING]: [QUEUED, PREEMPTED, FINISHED, FAILED, CANCELLED],
  [PREEMPTED]: [RUNNING, FAILED, CANCELLED],
  [FINISHED]: [],
  [FAILED]: [],
  [CANCELLED]: [],
};

/** finished, failed or cancelled: nothing more happens to the request. */
export function isFinished(s: RequestStatus): boolean {
  return s === FINISHED || s === FAILED || s === CANCELLED;
}

export function canTransition(from: RequestStatus, to: RequestStatus): boolean {
  return NEXT[from].includes(to);
}

/** `to`, when the lifecycle allows it from `from`; an illegal transition is a bug and throws. */
export function transition(from: RequestStatus, to: RequestStatus): RequestStatus {
  if (!canTransition(from, to)) throw new Error(`request lifecycle: no transition from ${from} to ${to}`);
  return to;
}

/** The short name of a finish reason, as the CLI's JSON and OpenAI's `finish_reason` write it. */
export function finishReasonText(r: FinishReason): 'stop' | 'length' | null {
  return r === FinishReason.FINISH_REASON_STOP ? 'stop' : r === FinishReason.FINISH_REASON_LENGTH ? 'length' : null;
}
