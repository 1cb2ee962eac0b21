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
  /** Seconds, sent as Retry-After (429 and 503). */
  readonly retryAfter?: number;
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
export const rateLimited = (message: string, retryAfter?: number, field: string | null = null) =>
  new ApiError({ status: 429, type: "rate_limit_error", message, field, retryAfter });
export const unavailable = (message: string) => new ApiError({ status: 503, type: "unavailable_error", message, field: null });
export const internal = (message: string) => new ApiError({ status: 500, type: "server_error", message, field: null });

/** The same error with another message (paths redacted). */
export function withMessage(e: ApiError, message: string): ApiError {
  return message === e.message ? e : new ApiError({ status: e.status, type: e.type, message, field: e.field, retryAfter: e.retryAfter });
}

/**
 * Replace every file-system path under one of `roots` (the server's home, the model directory,
 * the temp directory, the working directory) with its last component, so an error body never
 * names where the server keeps its files. Paths are matched up to whitespace, a quote, a colon, a
 * comma, a semicolon or a closing bracket.
 */
export function redactPaths(message: string, roots: readonly string[]): string {
  let out = message;
  const sorted = [...new Set(roots.filter((r) => r && r.length > 1).map((r) => r.replace(/[\\/]+$/, "")))].sort((a, b) => b.length - a.length);
  for (const root of sorted) {
    const esc = root.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    out = out.replace(new RegExp(`${esc}(?:[\\\\/][^\\s'"\\\\\\]),;:]*)?`, "g"), (m) => {
      const tail = m.slice(root.length).split(/[\\/]/).filter(Boolean).pop();
      return tail ? `<${tail}>` : "<server path>";
    });
  }
  return out;
}

export function isApiError(e: unknown): e is ApiError {
  return e instanceof ApiError;
}

export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
