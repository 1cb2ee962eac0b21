// @lowrank/server: adapter registry, fine-tuning jobs and OpenAI-compatible inference over HTTP.
export { startServer, StartupError, type ServerOptions, type RunningServer } from "./server.ts";
export { createApp } from "./http/app.ts";
export type { ServerContext, Limits } from "./http/context.ts";
export { defaultHome, homePaths, type Home } from "./home.ts";
export { ApiError } from "./errors.ts";
export { Registry, type AdapterVersion, type Alias, type AliasTarget, type Dataset } from "./registry/registry.ts";
export { NAME_RE, parseModelRef } from "./registry/names.ts";
export { openDb, type Db, type DriverName } from "./storage/db.ts";
export { tarChunks, tarStream, tarHeader, bytesEntry, fileEntry, dirEntries, tarSize, type TarEntry } from "./tar.ts";
export { KeyStore, SCOPES, type Scope, type ApiKey } from "./auth.ts";
export { openApiDocument } from "./openapi.ts";
