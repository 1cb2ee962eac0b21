/** Runtime edge: serve a fetch handler on Node (@hono/node-server), Bun (Bun.serve) or Deno (Deno.serve). */
export interface Listener {
  port: number;
  /** Stop accepting new connections (idempotent). */
  stop(): void;
  /** Stop, then give open connections `graceMs` to finish before closing them. */
  close(graceMs: number): Promise<void>;
}

type Fetch = (req: Request) => Response | Promise<Response>;

export async function listen(fetch: Fetch, hostname: string, port: number, maxBodyBytes: number): Promise<Listener> {
  const g = globalThis as { Bun?: unknown; Deno?: unknown };
  if (g.Bun !== undefined) return listenBun(fetch, hostname, port, maxBodyBytes);
  if (g.Deno !== undefined) return listenDeno(fetch, hostname, port);
  const { serve } = await import("@hono/node-server");
  return new Promise<Listener>((resolve, reject) => {
    const server = serve({ fetch, hostname, port }, (info) => {
      server.off("error", reject);
      const s = server as import("node:http").Server;
      let closed: Promise<void> | null = null;
      const stop = () => {
        closed ??= new Promise<void>((done) => s.close(() => done()));
        s.closeIdleConnections();
        return closed;
      };
      resolve({
        port: info.port,
        stop: () => void stop(),
        async close(graceMs) {
          const timer = setTimeout(() => s.closeAllConnections(), graceMs);
          await stop();
          clearTimeout(timer);
        },
      });
    });
    server.once("error", reject);
  });
}

function listenBun(fetch: Fetch, hostname: string, port: number, maxBodyBytes: number): Listener {
  const server = Bun.serve({ fetch, hostname, port, maxRequestBodySize: maxBodyBytes, idleTimeout: 0 });
  let closed: Promise<void> | null = null;
  const stop = () => (closed ??= server.stop(false).then(() => {}));
  return {
    port: Number(server.port),
    stop: () => void stop(),
    async close(graceMs) {
      const t = setTimeout(() => void server.stop(true), graceMs);
      await stop();
      clearTimeout(t);
    },
  };
}

function listenDeno(fetch: Fetch, hostname: string, port: number): Listener {
  type DenoServer = { addr: { port: number }; shutdown(): Promise<void> };
  const Deno = (globalThis as unknown as { Deno: { serve(o: object, h: Fetch): DenoServer } }).Deno;
  const server = Deno.serve({ hostname, port, onListen() {} }, fetch);
  let closed: Promise<void> | null = null;
  const stop = () => (closed ??= server.shutdown());
  return {
    port: server.addr.port,
    stop: () => void stop(),
    close: async () => {
      await stop();
    },
  };
}
