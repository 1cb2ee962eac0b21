/** GET /openapi.json: an OpenAPI 3.1 description of every endpoint, built from small helpers. */
import type { ServerContext } from "./http/context.ts";

type Schema = Record<string, unknown>;

const ref = (name: string): Schema => ({ $ref: `#/components/schemas/${name}` });
const str = (description?: string, extra: Schema = {}): Schema => ({ type: "string", ...(description ? { description } : {}), ...extra });
const int = (description?: string, extra: Schema = {}): Schema => ({ type: "integer", ...(description ? { description } : {}), ...extra });
const num = (description?: string, extra: Schema = {}): Schema => ({ type: "number", ...(description ? { description } : {}), ...extra });
const bool = (description?: string): Schema => ({ type: "boolean", ...(description ? { description } : {}) });
const obj = (properties: Record<string, Schema>, required: string[] = [], extra: Schema = {}): Schema => ({
  type: "object",
  properties,
  ...(required.length ? { required } : {}),
  ...extra,
});
const list = (item: Schema): Schema => obj({ object: { const: "list" }, data: { type: "array", items: item } }, ["object", "data"]);
const json = (schema: Schema) => ({ "application/json": { schema } });

const ERRORS = [400, 401, 403, 404, 409, 413, 429, 503] as const;
const ERROR_TEXT: Record<number, string> = {
  400: "invalid input (the body names the field)",
  401: "missing or invalid API key",
  403: "the key's scope does not allow this",
  404: "not found",
  409: "conflict with the current state",
  413: "body too large",
  429: "too many requests in flight for this key",
  503: "queue full or shutting down",
};

function op(
  summary: string,
  scope: "read" | "train" | "admin" | null,
  response: Schema | { content: Record<string, unknown>; description: string },
  opts: { body?: Record<string, unknown>; params?: string[]; query?: Schema[]; status?: number; errors?: number[]; tags?: string[] } = {},
) {
  const parameters = [
    ...(opts.params ?? []).map((p) => ({
      name: p,
      in: "path",
      required: true,
      schema: p === "version" ? { oneOf: [int(), { const: "current" }] } : str(undefined, p === "id" ? {} : { pattern: "^[a-z0-9][a-z0-9._-]{0,63}$" }),
    })),
    ...(opts.query ?? []),
  ];
  const ok = "content" in response ? response : { description: "success", content: json(response) };
  const errs = (opts.errors ?? [...ERRORS]).filter((s) => scope !== null || (s !== 401 && s !== 403));
  return {
    summary,
    ...(opts.tags ? { tags: opts.tags } : {}),
    ...(scope ? { security: [{ bearer: [] }], "x-lowrank-scope": scope } : { security: [] }),
    ...(parameters.length ? { parameters } : {}),
    ...(opts.body ? { requestBody: { required: true, content: opts.body } } : {}),
    responses: {
      [String(opts.status ?? 200)]: ok,
      ...Object.fromEntries(errs.map((s) => [String(s), { description: ERROR_TEXT[s], content: json(ref("Error")) }])),
    },
  };
}

const sampling: Record<string, Schema> = {
  model: str("'<base>', '<base>:<adapter>', '<base>:<adapter>@<version>' or '<base>:<alias>' (the base prefix may be left out)"),
  max_tokens: int("tokens to generate", { minimum: 1 }),
  temperature: num("0 is greedy", { minimum: 0, maximum: 2, default: 1 }),
  top_p: num(undefined, { minimum: 0, maximum: 1, default: 1 }),
  top_k: int("extension: 0 = off", { minimum: 0, default: 0 }),
  repetition_penalty: num("extension: 1 = off", { default: 1 }),
  seed: int("sampling seed (random when absent)"),
  stop: { oneOf: [str(), { type: "array", items: str(), maxItems: 4 }] },
  stream: bool("server-sent events in OpenAI's chunk format, ending with data: [DONE]"),
  stream_options: obj({ include_usage: bool() }),
  n: int("must be 1", { const: 1 }),
  user: str("makes A/B alias routing sticky per user"),
};

const served = {
  adapter: { type: ["string", "null"], description: "the adapter version that served the request (name@version)" },
  alias: { type: ["string", "null"] },
};
const usage = obj({ prompt_tokens: int(), completion_tokens: int(), total_tokens: int() });

const sse = (description: string) => ({ description, content: { "text/event-stream": { schema: str("data: <json chunk>\\n\\n ... data: [DONE]\\n\\n") } } });

export function openApiDocument(ctx?: ServerContext): Record<string, unknown> {
  const base = ctx?.host.id ?? "<base>";
  const aref = ["name", "version"];
  return {
    openapi: "3.1.0",
    info: {
      title: "Lowrank server",
      version: "0.1.0",
      description:
        `LoRA adapter registry, fine-tuning jobs and OpenAI-compatible inference for base model ${base}. ` +
        "Send 'Authorization: Bearer <key>'. Scopes nest: read < train < admin. Errors are {error: {message, field, type}}.",
    },
    servers: [{ url: "/" }],
    components: {
      securitySchemes: { bearer: { type: "http", scheme: "bearer" } },
      schemas: {
        Error: obj(
          {
            error: obj(
              {
                message: str(),
                field: { type: ["string", "null"] },
                type: str(undefined, {
                  enum: [
                    "invalid_request_error",
                    "authentication_error",
                    "permission_error",
                    "not_found_error",
                    "conflict_error",
                    "payload_too_large",
                    "rate_limit_error",
                    "unavailable_error",
                    "server_error",
                  ],
                }),
              },
              ["message", "field", "type"],
            ),
          },
          ["error"],
        ),
        AdapterVersion: obj({
          name: str(),
          version: int(),
          ref: str("name@version"),
          model: str(),
          current: bool(),
          loaded: bool("in the inference cache"),
          base_model: str(),
          base_model_hash: str(),
          dataset_hash: { type: ["string", "null"] },
          hyperparameters: { type: "object" },
          eval_metrics: { type: "object" },
          source: str(),
          description: { type: ["string", "null"] },
          sha256: str(),
          size_bytes: int(),
          files: { type: "array", items: obj({ name: str(), size: int(), sha256: str() }) },
          created_at: str(undefined, { format: "date-time" }),
        }),
        Adapter: obj({ name: str(), current_version: { type: ["integer", "null"] }, versions: { type: "array", items: ref("AdapterVersion") } }),
        Alias: obj({ name: str(), model: str(), targets: { type: "array", items: obj({ adapter: str(), weight: num(), share: num() }) } }),
        Dataset: obj({
          id: str(),
          name: { type: ["string", "null"] },
          filename: str(),
          sha256: str(),
          size_bytes: int(),
          format: { type: ["string", "null"] },
        }),
        FineTuneRequest: obj(
          {
            adapter_name: str("register the result as <adapter_name>@<next version>", { pattern: "^[a-z0-9][a-z0-9._-]{0,63}$" }),
            dataset: str("a registered dataset id or name"),
            data: str("or the training text inline"),
            data_format: str(undefined, { enum: ["text", "jsonl", "alpaca", "chat"] }),
            method: str(undefined, { enum: ["lora"], default: "lora" }),
            rank: int(undefined, { default: 8 }),
            alpha: num(undefined, { default: 16 }),
            dropout: num(undefined, { default: 0.05 }),
            target_modules: { oneOf: [{ type: "array", items: str() }, { const: "all-linear" }], default: ["q_proj", "v_proj"] },
            seed: int(undefined, { default: 0 }),
            steps: int(),
            epochs: num(),
            learning_rate: num(undefined, { default: 2e-4 }),
            batch_size: int(undefined, { default: 8 }),
            seq_len: int(undefined, { default: 128 }),
            warmup: num(undefined, { default: 0.1 }),
            checkpoint_every: int("steps between checkpoints (resume points)", { default: 10 }),
            eval_fraction: num(undefined, { default: 0.05 }),
            description: str(),
            model: str("optional; must be the served base"),
            // PEFT LoraConfig fields under PEFT's names (as `lowrank finetune --lora-config` reads them).
            use_dora: { type: "boolean", default: false },
            use_rslora: { type: "boolean", default: false },
            modules_to_save: { type: "array", items: str(), description: "modules trained in full and saved with the adapter (e.g. lm_head)" },
            bias: str("which existing biases train", { enum: ["none", "all", "lora_only"], default: "none" }),
            exclude_modules: { oneOf: [{ type: "array", items: str() }, { type: "string" }] },
            layers_to_transform: { oneOf: [{ type: "array", items: int() }, int()] },
            layers_pattern: { oneOf: [{ type: "array", items: str() }, { type: "string" }] },
            rank_pattern: { type: "object", additionalProperties: int() },
            alpha_pattern: { type: "object", additionalProperties: num() },
            init_lora_weights: { oneOf: [{ type: "boolean" }, { const: "gaussian" }], default: true },
          },
          ["adapter_name"],
          { additionalProperties: false },
        ),
        FineTuneJob: obj({
          id: str(),
          object: { const: "fine_tuning.job" },
          status: str(undefined, { enum: ["queued", "running", "succeeded", "failed", "cancelled"] }),
          adapter_name: str(),
          dataset_id: str(),
          hyperparameters: { type: "object" },
          created_at: str(),
          started_at: { type: ["string", "null"] },
          finished_at: { type: ["string", "null"] },
          error: { type: ["object", "null"] },
          result: { type: ["object", "null"], properties: { adapter: str(), version: int(), eval_metrics: { type: "object" } } },
          progress: { type: ["object", "null"] },
          attempts: int(),
          resumed_from_step: { type: ["integer", "null"] },
        }),
        ApiKey: obj({
          id: str(),
          name: str(),
          scope: str(undefined, { enum: ["read", "train", "admin"] }),
          max_concurrency: int(),
          created_at: str(),
          revoked_at: { type: ["string", "null"] },
        }),
      },
    },
    paths: {
      "/openapi.json": { get: op("this document", null, { type: "object" }, { errors: [] }) },
      "/healthz": { get: op("liveness", null, obj({ status: str(), model: str() }), { errors: [] }) },
      "/v1/models": {
        get: op(
          "base model, adapter versions and aliases",
          "read",
          list(obj({ id: str(), object: { const: "model" }, created: int(), owned_by: str(), parent: str() })),
          { tags: ["inference"] },
        ),
      },
      "/v1/completions": {
        post: op(
          "text completion (OpenAI-compatible); header x-lowrank-adapter names the version used",
          "read",
          {
            description: "a completion, or an SSE stream when stream is true",
            content: {
              ...json(
                obj({
                  id: str(),
                  object: { const: "text_completion" },
                  model: str(),
                  choices: { type: "array", items: obj({ text: str(), index: int(), finish_reason: str(undefined, { enum: ["stop", "length"] }) }) },
                  usage,
                  ...served,
                }),
              ),
              "text/event-stream": sse("").content["text/event-stream"],
            },
          },
          {
            body: json(obj({ ...sampling, prompt: { oneOf: [str(), { type: "array", items: str(), maxItems: 1 }] } }, ["model", "prompt"])),
            tags: ["inference"],
          },
        ),
      },
      "/v1/chat/completions": {
        post: op(
          "chat completion (OpenAI-compatible; the prompt is laid out by the model's chat_template, ChatML when it has none, as in training)",
          "read",
          {
            description: "a chat completion, or an SSE stream of chat.completion.chunk objects",
            content: {
              ...json(
                obj({
                  id: str(),
                  object: { const: "chat.completion" },
                  model: str(),
                  choices: { type: "array", items: obj({ index: int(), message: obj({ role: str(), content: str() }), finish_reason: str() }) },
                  usage,
                  ...served,
                }),
              ),
              "text/event-stream": sse("").content["text/event-stream"],
            },
          },
          {
            body: json(
              obj(
                {
                  ...sampling,
                  messages: {
                    type: "array",
                    items: obj(
                      { role: str(undefined, { enum: ["system", "developer", "user", "assistant"] }), content: { oneOf: [str(), { type: "array" }] } },
                      ["role", "content"],
                    ),
                  },
                },
                ["model", "messages"],
              ),
            ),
            tags: ["inference"],
          },
        ),
      },
      "/v1/adapters": {
        get: op("list adapters with their versions", "read", list(ref("Adapter")), { tags: ["registry"] }),
        post: op("upload a PEFT adapter as a new version (validated: safetensors header, config, shapes against the base)", "train", ref("AdapterVersion"), {
          status: 201,
          tags: ["registry"],
          body: {
            "multipart/form-data": {
              schema: obj(
                {
                  name: str(),
                  "adapter_config.json": str(undefined, { format: "binary" }),
                  "adapter_model.safetensors": str(undefined, { format: "binary" }),
                  description: str(),
                  dataset_hash: str(),
                  hyperparameters: str("JSON object"),
                  eval_metrics: str("JSON object"),
                  activate: str(undefined, { enum: ["true", "false"] }),
                },
                ["name", "adapter_config.json", "adapter_model.safetensors"],
              ),
            },
          },
        }),
      },
      "/v1/adapters/{name}": {
        get: op("one adapter and its versions", "read", ref("Adapter"), { params: ["name"], tags: ["registry"] }),
        delete: op("delete every version", "admin", obj({ deleted: bool(), versions: { type: "array", items: str() } }), {
          params: ["name"],
          tags: ["registry"],
        }),
      },
      "/v1/adapters/{name}/rollback": {
        post: op(
          "make an older version current (default: the one before); delete=true also deletes the version rolled back from",
          "admin",
          obj({ current: ref("AdapterVersion"), previous_version: int(), deleted: { type: ["string", "null"] } }),
          { params: ["name"], body: json(obj({ to: int(), delete: bool() })), tags: ["registry"] },
        ),
      },
      "/v1/adapters/{name}/versions/{version}": {
        get: op("one version's metadata", "read", ref("AdapterVersion"), { params: aref, tags: ["registry"] }),
        delete: op(
          "delete one version (refused while an alias uses it)",
          "admin",
          obj({ deleted: bool(), adapter: str(), current_version: { type: ["integer", "null"] } }),
          { params: aref, tags: ["registry"] },
        ),
      },
      "/v1/adapters/{name}/versions/{version}/download": {
        get: op(
          "the PEFT files (adapter_config.json, adapter_model.safetensors, lowrank.json) as a tar",
          "read",
          { description: "ustar archive", content: { "application/x-tar": { schema: str(undefined, { format: "binary" }) } } },
          { params: aref, tags: ["registry"] },
        ),
      },
      "/v1/adapters/{name}/versions/{version}/export": {
        post: op(
          "the base with this adapter merged in, as a Hugging Face model directory in a tar",
          "admin",
          { description: "ustar archive", content: { "application/x-tar": { schema: str(undefined, { format: "binary" }) } } },
          { params: aref, tags: ["registry"] },
        ),
      },
      "/v1/adapters/{name}/versions/{version}/load": {
        post: op("hot-load into the inference cache", "admin", { type: "object" }, { params: aref, tags: ["inference"] }),
      },
      "/v1/adapters/{name}/versions/{version}/unload": {
        post: op("unload from the inference cache", "admin", { type: "object" }, { params: aref, tags: ["inference"] }),
      },
      "/v1/cache": {
        get: op(
          "loaded adapters and their bytes (LRU), and how much continuous batching happened",
          "admin",
          obj({
            capacity_bytes: int(),
            used_bytes: int(),
            batching: obj({ decode_steps: int(), sequence_steps: int(), max_batch: int() }),
            loaded: { type: "array" },
          }),
          { tags: ["inference"] },
        ),
      },
      "/v1/aliases": { get: op("aliases (A/B routing)", "read", list(ref("Alias")), { tags: ["registry"] }) },
      "/v1/aliases/{alias}": {
        get: op("one alias", "read", ref("Alias"), { params: ["alias"], tags: ["registry"] }),
        put: op("create or replace an alias splitting traffic by weight", "admin", ref("Alias"), {
          params: ["alias"],
          tags: ["registry"],
          body: json(
            obj({ targets: { type: "array", minItems: 1, maxItems: 16, items: obj({ adapter: str("name or name@version"), weight: num() }, ["adapter"]) } }, [
              "targets",
            ]),
          ),
        }),
        delete: op("delete an alias", "admin", obj({ deleted: bool() }), { params: ["alias"], tags: ["registry"] }),
      },
      "/v1/datasets": {
        get: op("datasets", "read", list(ref("Dataset")), { tags: ["training"] }),
        post: op("upload a dataset (multipart 'file', or the raw body with ?name=&format=); parsed before it is stored", "train", ref("Dataset"), {
          status: 201,
          tags: ["training"],
          body: {
            "multipart/form-data": { schema: obj({ file: str(undefined, { format: "binary" }), name: str(), format: str() }, ["file"]) },
            "text/plain": { schema: str() },
            "application/jsonl": { schema: str() },
          },
        }),
      },
      "/v1/datasets/{id}": {
        get: op("one dataset", "read", ref("Dataset"), { params: ["id"], tags: ["training"] }),
        delete: op("delete a dataset and its file (409 while a queued or running job uses it)", "admin", obj({ id: str(), deleted: bool() }), {
          params: ["id"],
          tags: ["training"],
        }),
      },
      "/v1/fine-tunes": {
        get: op("jobs, newest first", "read", list(ref("FineTuneJob")), {
          tags: ["training"],
          query: [
            { name: "status", in: "query", schema: str() },
            { name: "limit", in: "query", schema: int() },
          ],
        }),
        post: op("start a fine-tuning job; on success its adapter is registered", "train", ref("FineTuneJob"), {
          status: 201,
          body: json(ref("FineTuneRequest")),
          tags: ["training"],
        }),
      },
      "/v1/fine-tunes/{id}": { get: op("one job", "read", ref("FineTuneJob"), { params: ["id"], tags: ["training"] }) },
      "/v1/fine-tunes/{id}/cancel": { post: op("cancel a queued or running job", "train", ref("FineTuneJob"), { params: ["id"], tags: ["training"] }) },
      "/v1/fine-tunes/{id}/metrics": {
        get: op("metrics.jsonl records (train and eval)", "read", list({ type: "object" }), { params: ["id"], tags: ["training"] }),
      },
      "/v1/fine-tunes/{id}/events": {
        get: op(
          "SSE: event job, then metrics so far, then status/progress/metrics/info live, then done",
          "read",
          sse("named events: job, status, progress, metrics, info, resumed, stopped, done"),
          { params: ["id"], tags: ["training"] },
        ),
      },
      "/v1/keys": {
        get: op("API keys (no secrets)", "admin", list(ref("ApiKey")), { tags: ["admin"] }),
        post: op(
          "create a key; the secret is returned once",
          "admin",
          { allOf: [ref("ApiKey"), obj({ key: str() })] },
          {
            status: 201,
            tags: ["admin"],
            body: json(obj({ name: str(), scope: str(undefined, { enum: ["read", "train", "admin"] }), max_concurrency: int() }, ["name"])),
          },
        ),
      },
      "/v1/keys/{id}": { delete: op("revoke a key", "admin", ref("ApiKey"), { params: ["id"], tags: ["admin"] }) },
    },
  };
}
