// Errors a request can meet on any API, with the HTTP status and OpenAI error type each maps to
// (gRPC maps the same kinds to its status codes).
export type ApiErrorKind = 'invalid' | 'unauthenticated' | 'not_found' | 'method' | 'too_large' | 'busy' | 'unavailable' | 'internal';

const HTTP: Record<ApiErrorKind, { status: number; type: string; code: string | null }> = {
  invalid: { status: 400, type: 'invalid_request_error', code: null },
  unauthenticated: { status: 401, type: 'authentication_error', code: 'invalid_api_key' },
  not_found: { status: 404, type: 'invalid_request_error', code: 'model_not_found' },
  method: { status: 405, type: 'invalid_request_error', code: 'method_not_allowed' },
  too_large: { status: 413, type: 'invalid_request_error', code: 'request_too_large' },
  busy: { status: 429, type: 'rate_limit_error', code: 'queue_full' },
  unavailable: { status: 503, type: 'service_unavailable_error', code: 'no_replica' },
  internal: { status: 500, type: 'server_error', code: null },
};

export class ApiError extends Error {
  constructor(readonly kind: ApiErrorKind, message: string, readonly param: string | null = null) {
    super(message);
    this.name = 'ApiError';
  }

  static invalid(param: string | null, message: string): ApiError {
    return new ApiError('invalid', message, param);
  }

  get status(): number {
    return HTTP[this.kind].status;
  }

  /** OpenAI's error body. */
  toJSON(): { error: { message: string; type: string; param: string | null; code: string | null } } {
    const h = HTTP[this.kind];
    return { error: { message: this.message, type: h.type, param: this.param, code: h.code } };
  }
}
