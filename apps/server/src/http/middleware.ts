/** Authentication, scopes, per-key concurrency, body limits and the JSON error body. */
import type { Context, MiddlewareHandler } from "hono";
import { bodyLimit } from "hono/body-limit";
import { type Scope, allows } from "../auth.ts";
import { type ApiError, errorMessage, withMessage, forbidden, internal, isApiError, rateLimited, tooLarge, unauthorized } from "../errors.ts";
import type { AppEnv, ServerContext } from "./context.ts";
import { parseJson } from "./validate.ts";

export function errorResponse(c: Context, e: ApiError): Response {
  const headers: Record<string, string> = {};
  if (e.status === 401) headers["www-authenticate"] = 'Bearer realm="lowrank"';
  if (e.retryAfter !== undefined) headers["retry-after"] = String(Math.max(1, Math.ceil(e.retryAfter)));
  return c.json(e.body(), e.status, headers);
}

/** Hono's onError: ApiErrors keep their status; anything else is a 500 that does not leak internals. */
export function onError(ctx: ServerContext) {
  return (err: Error, c: Context): Response => {
    if (isApiError(err)) return errorResponse(c, withMessage(err, ctx.redact(err.message)));
    ctx.log(`error: ${c.req.method} ${c.req.path}: ${err.stack ?? errorMessage(err)}`);
    return errorResponse(c, internal("internal server error; see the server log"));
  };
}

/** Bearer token -> c.var.key, else 401. */
export function authenticate(ctx: ServerContext): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const h = c.req.header("authorization") ?? "";
    const m = /^Bearer\s+(\S+)\s*$/i.exec(h);
    if (!m) throw unauthorized(h ? "the Authorization header must be 'Bearer <key>'" : "missing API key: send 'Authorization: Bearer <key>'");
    const key = ctx.keys.authenticate(m[1]);
    if (!key) throw unauthorized("invalid or revoked API key");
    c.set("key", key);
    await next();
  };
}

export function requireScope(scope: Scope): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const key = c.get("key");
    if (!allows(key.scope, scope)) throw forbidden(`this key has scope '${key.scope}'; this endpoint needs '${scope}'`);
    await next();
  };
}

/**
 * At most key.max_concurrency requests in flight per key (429 beyond). A streamed response
 * counts until its body is finished or the client goes away.
 */
export function concurrency(): MiddlewareHandler<AppEnv> {
  const inflight = new Map<string, number>();
  return async (c, next) => {
    const key = c.get("key");
    const n = inflight.get(key.id) ?? 0;
    if (n >= key.max_concurrency) throw rateLimited(`this key already has ${n} requests in flight (limit ${key.max_concurrency}); wait for one to finish`);
    inflight.set(key.id, n + 1);
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      const left = (inflight.get(key.id) ?? 1) - 1;
      if (left > 0) inflight.set(key.id, left);
      else inflight.delete(key.id);
    };
    try {
      await next();
    } catch (e) {
      release();
      throw e;
    }
    const type = c.res.headers.get("content-type") ?? "";
    if (c.res.body && (type.startsWith("text/event-stream") || type.startsWith("application/x-tar"))) {
      c.res = new Response(onFinish(c.res.body, release), c.res);
    } else release();
  };
}

/** A pass-through stream that calls `done` once, when the source ends, fails or is cancelled. */
export function onFinish(src: ReadableStream<Uint8Array>, done: () => void): ReadableStream<Uint8Array> {
  const reader = src.getReader();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const { value, done: end } = await reader.read();
        if (end) {
          controller.close();
          done();
        } else controller.enqueue(value);
      } catch (e) {
        controller.error(e);
        done();
      }
    },
    async cancel(reason) {
      done();
      await reader.cancel(reason);
    },
  });
}

/** Bodies up to this size are read and discarded before a 413, so the client sees the answer rather than a reset. */
const DRAIN_CAP = 64 << 20;

/**
 * 413 for bodies over `max`. A declared Content-Length over the limit is refused before the
 * body is read; the body is then drained (up to 64 MiB, 5 s) so the client, still sending,
 * gets the JSON error instead of a broken connection. Chunked bodies are counted as they come.
 */
export function limitBody(max: number): MiddlewareHandler<AppEnv> {
  const tooBig = (c: Context) => {
    const res = errorResponse(c, tooLarge(`the request body is larger than ${max} bytes`));
    res.headers.set("connection", "close");
    return res;
  };
  const chunked = bodyLimit({ maxSize: max, onError: tooBig });
  return async (c, next) => {
    const declared = Number(c.req.header("content-length") ?? NaN);
    const streamed = c.req.header("transfer-encoding") !== undefined;
    // A declared length within the limit (or none: no body) is all Node's parser delivers, so there is
    // nothing to count; bodyLimit would say the same, but its first look at the body makes the Node
    // adapter build a whole Request, a third of a small completion request's HTTP cost here.
    if (!streamed && !(declared > max)) return next();
    if (streamed) return chunked(c, next);
    const body = c.req.raw.body;
    if (body && declared <= DRAIN_CAP) {
      const reader = body.getReader();
      const deadline = Date.now() + 5000;
      try {
        while (Date.now() < deadline && !(await reader.read()).done);
      } catch {
        // the client gave up; nothing to drain
      }
    }
    return tooBig(c);
  };
}

/** The body as JSON; malformed or empty bodies are 400s. */
export async function readJson(c: Context): Promise<unknown> {
  return parseJson(await c.req.text());
}
