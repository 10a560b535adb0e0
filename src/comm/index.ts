export { Comm, NcclComm, TcpComm, createNcclComm, createTcpComm, ncclUniqueId } from './comm.js';
export type { AddonComm, CommEncryption, CommKind, NcclCommOptions, ReduceDType, TcpCommOptions } from './comm.js';
export { formGroup } from './form-group.js';
export type { FormGroupOptions, GroupMemberInfo } from './form-group.js';
