/**
 * Errors that reach a client. Every one becomes the JSON body {error: {message, field, type}}
 * with its HTTP status; `field` names the offending input (a JSON path like "messages[1].role",
 * a form field, or a path parameter) or is null.
 */
import { Data } from "effect";

export type ErrorType =
  | "invalid_request_error"
  | "authentication_error"
  | "permission_error"
  | "not_found_error"
  | "conflict_error"
  | "payload_too_large"
  | "rate_limit_error"
  | "unavailable_error"
  | "server_error";

export class ApiError extends Data.TaggedError("ApiError")<{
  readonly status: 400 | 401 | 403 | 404 | 409 | 413 | 415 | 429 | 500 | 503;
  readonly type: ErrorType;
  readonly message: string;
  readonly field: string | null;
}> {
  /** The JSON error body. */
  body(): { error: { message: string; field: string | null; type: ErrorType } } {
    return { error: { message: this.message, field: this.field, type: this.type } };
  }
}

export const invalid = (message: string, field: string | null = null) => new ApiError({ status: 400, type: "invalid_request_error", message, field });
export const unauthorized = (message: string) => new ApiError({ status: 401, type: "authentication_error", message, field: null });
export const forbidden = (message: string) => new ApiError({ status: 403, type: "permission_error", message, field: null });
export const notFound = (message: string, field: string | null = null) => new ApiError({ status: 404, type: "not_found_error", message, field });
export const conflict = (message: string, field: string | null = null) => new ApiError({ status: 409, type: "conflict_error", message, field });
export const tooLarge = (message: string, field: string | null = null) => new ApiError({ status: 413, type: "payload_too_large", message, field });
export const unsupportedMedia = (message: string) => new ApiError({ status: 415, type: "invalid_request_error", message, field: null });
export const rateLimited = (message: string) => new ApiError({ status: 429, type: "rate_limit_error", message, field: null });
export const unavailable = (message: string) => new ApiError({ status: 503, type: "unavailable_error", message, field: null });
export const internal = (message: string) => new ApiError({ status: 500, type: "server_error", message, field: null });

export function isApiError(e: unknown): e is ApiError {
  return e instanceof ApiError;
}

export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
