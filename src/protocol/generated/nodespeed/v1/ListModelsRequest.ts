// Original file: proto/inference.proto


export interface ListModelsRequestIn {
}

export interface ListModelsRequest {
}
