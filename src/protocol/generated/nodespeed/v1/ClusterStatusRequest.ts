// Original file: proto/inference.proto


export interface ClusterStatusRequestIn {
}

export interface ClusterStatusRequest {
}
