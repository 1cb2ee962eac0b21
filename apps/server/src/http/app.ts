/** The Hono application: runtime-agnostic; listen.ts serves it on Node, Bun or Deno. */
import { Hono } from "hono";
import { notFound } from "../errors.ts";
import { openApiDocument } from "../openapi.ts";
import { adapterRoutes } from "./adapters.ts";
import type { AppEnv, ServerContext } from "./context.ts";
import { fineTuneRoutes } from "./fine-tunes.ts";
import { authenticate, concurrency, errorResponse, onError } from "./middleware.ts";
import { openaiRoutes } from "./openai.ts";

export function createApp(ctx: ServerContext): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  app.onError(onError(ctx));
  app.notFound((c) => errorResponse(c, notFound(`no route for ${c.req.method} ${c.req.path}; see GET /openapi.json`)));
  // Public: the API description and a liveness probe. Everything under /v1 needs a key.
  app.get("/openapi.json", (c) => c.json(openApiDocument(ctx)));
  app.get("/healthz", (c) => c.json({ status: "ok", model: ctx.host.id, uptime_s: Math.round((Date.now() - ctx.startedAt) / 1000) }));
  app.use("/v1/*", authenticate(ctx), concurrency());
  openaiRoutes(app, ctx);
  adapterRoutes(app, ctx);
  fineTuneRoutes(app, ctx);
  return app;
}
