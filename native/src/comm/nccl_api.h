// The few NCCL declarations we need, so the build needs no nccl.h and no libnccl: the library is
// dlopen'ed at run time (nccl_comm.cc). Types and values follow NCCL's public nccl.h (2.18-2.28).
//
// ncclConfig_t is a versioned, append-only struct: NCCL copies only `size` bytes of the caller's
// config and resets fields newer than `version` to their defaults. We therefore declare the
// prefix that every NCCL since 2.18 shares (size, magic, version, blocking, cgaClusterSize,
// minCTAs, maxCTAs, netName, splitShare), stamp it with version 2.18.0, and let a newer library
// (2.28 adds trafficClass, commName, collnetEnable, CTAPolicy, ...) default the rest. This is
// what NCCL_CONFIG_INITIALIZER of a 2.18 header produces, and it stays valid against any newer
// libnccl.so.2 without tracking each release's tail of fields.
#pragma once

#include <climits>
#include <cstddef>

extern "C" {

typedef struct ncclComm* ncclComm_t;

#define NS_NCCL_UNIQUE_ID_BYTES 128
typedef struct {
  char internal[NS_NCCL_UNIQUE_ID_BYTES];
} ncclUniqueId;

typedef enum {
  ncclSuccess = 0,
  ncclUnhandledCudaError = 1,
  ncclSystemError = 2,
  ncclInternalError = 3,
  ncclInvalidArgument = 4,
  ncclInvalidUsage = 5,
  ncclRemoteError = 6,
  ncclInProgress = 7,
  ncclNumResults = 8
} ncclResult_t;

typedef enum {
  ncclInt8 = 0, ncclChar = 0,
  ncclUint8 = 1,
  ncclInt32 = 2, ncclInt = 2,
  ncclUint32 = 3,
  ncclInt64 = 4,
  ncclUint64 = 5,
  ncclFloat16 = 6, ncclHalf = 6,
  ncclFloat32 = 7, ncclFloat = 7,
  ncclFloat64 = 8, ncclDouble = 8,
  ncclBfloat16 = 9
} ncclDataType_t;

typedef enum { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3, ncclAvg = 4 } ncclRedOp_t;

#define NS_NCCL_CONFIG_UNDEF_INT INT_MIN
#define NS_NCCL_API_MAGIC 0xcafebeefu
#define NS_NCCL_VERSION(X, Y, Z) (((X) <= 2 && (Y) <= 8) ? (X) * 1000 + (Y) * 100 + (Z) : (X) * 10000 + (Y) * 100 + (Z))

typedef struct {
  size_t size;            // sizeof this struct: how many bytes NCCL reads
  unsigned int magic;     // NS_NCCL_API_MAGIC
  unsigned int version;   // the header version this layout comes from
  int blocking;           // 0: every call may return ncclInProgress (we poll)
  int cgaClusterSize;
  int minCTAs;
  int maxCTAs;
  const char* netName;
  int splitShare;
} ncclConfig_t;

// NCCL_CONFIG_INITIALIZER of the 2.18 layout.
inline ncclConfig_t ns_nccl_config_initializer() {
  ncclConfig_t c;
  c.size = sizeof(ncclConfig_t);
  c.magic = NS_NCCL_API_MAGIC;
  c.version = NS_NCCL_VERSION(2, 18, 0);
  c.blocking = NS_NCCL_CONFIG_UNDEF_INT;
  c.cgaClusterSize = NS_NCCL_CONFIG_UNDEF_INT;
  c.minCTAs = NS_NCCL_CONFIG_UNDEF_INT;
  c.maxCTAs = NS_NCCL_CONFIG_UNDEF_INT;
  c.netName = nullptr;
  c.splitShare = NS_NCCL_CONFIG_UNDEF_INT;
  return c;
}

typedef struct CUstream_st* ns_cudaStream_t;  // same as cudaStream_t

// Function pointer types of the entry points we dlsym.
typedef ncclResult_t (*ncclGetVersion_fn)(int* version);
typedef ncclResult_t (*ncclGetUniqueId_fn)(ncclUniqueId* id);
typedef ncclResult_t (*ncclCommInitRankConfig_fn)(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank,
                                                  ncclConfig_t* config);
typedef ncclResult_t (*ncclCommGetAsyncError_fn)(ncclComm_t comm, ncclResult_t* async_error);
typedef ncclResult_t (*ncclCommAbort_fn)(ncclComm_t comm);
typedef const char* (*ncclGetErrorString_fn)(ncclResult_t result);
typedef const char* (*ncclGetLastError_fn)(ncclComm_t comm);
typedef ncclResult_t (*ncclAllReduce_fn)(const void* send, void* recv, size_t count, ncclDataType_t type,
                                         ncclRedOp_t op, ncclComm_t comm, ns_cudaStream_t stream);
typedef ncclResult_t (*ncclAllGather_fn)(const void* send, void* recv, size_t count, ncclDataType_t type,
                                         ncclComm_t comm, ns_cudaStream_t stream);
typedef ncclResult_t (*ncclBroadcast_fn)(const void* send, void* recv, size_t count, ncclDataType_t type,
                                         int root, ncclComm_t comm, ns_cudaStream_t stream);
typedef ncclResult_t (*ncclSend_fn)(const void* buf, size_t count, ncclDataType_t type, int peer,
                                    ncclComm_t comm, ns_cudaStream_t stream);
typedef ncclResult_t (*ncclRecv_fn)(void* buf, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                                    ns_cudaStream_t stream);
typedef ncclResult_t (*ncclGroupStart_fn)();
typedef ncclResult_t (*ncclGroupEnd_fn)();

}  // extern "C"
