/**
 * metrics.jsonl (one JSON object per line, appended as training goes) and the progress display:
 * a bar redrawn in place on a TTY, plain lines otherwise (logs, CI).
 */
import { storage } from "@lowrank/safetensors";

export interface TrainRecord {
  step: number;
  split: "train";
  loss: number;
  lr: number;
  grad_norm: number;
  tokens_per_s: number;
  peak_bytes: number;
  /** fp16 runs: the loss scale this step's backward used. */
  loss_scale?: number;
  /** Present when the update was skipped (non-finite loss or gradient). */
  skipped?: string;
}

export interface EvalRecord {
  step: number;
  split: "eval";
  eval_loss: number;
  perplexity: number;
}

export type MetricRecord = TrainRecord | EvalRecord;

export class MetricsLog {
  constructor(readonly path: string) {}

  /** Start fresh, or (on resume) keep only the records up to `step` so a resumed log has no duplicates. */
  async reset(keepUpTo: number | null): Promise<void> {
    const { readText, writeFile } = storage();
    let kept = "";
    if (keepUpTo !== null) {
      const old = await readText(this.path).catch(() => "");
      kept = old
        .split("\n")
        .filter((l) => l.trim() && (JSON.parse(l) as MetricRecord).step <= keepUpTo)
        .map((l) => `${l}\n`)
        .join("");
    }
    await writeFile(this.path, kept);
  }

  async write(r: MetricRecord): Promise<void> {
    await storage().appendFile(this.path, `${JSON.stringify(r)}\n`);
  }
}

export interface Reporter {
  /** A message line (setup, eval results, warnings). */
  info(message: string): void;
  /** Training progress after each step. */
  progress(p: { step: number; total: number; loss: number; tokensPerS: number; etaS: number }): void;
  /** Training finished or stopped: end the bar. */
  end(): void;
}

/** Write to a stream: a redrawn bar when `tty`, else a plain line every `every` steps (and the last). */
export function consoleReporter(opts: { tty: boolean; write: (s: string) => void; every?: number; width?: number }): Reporter {
  let barShown = false;
  const clear = () => {
    if (barShown) opts.write("\r\x1b[2K");
    barShown = false;
  };
  return {
    info(message) {
      clear();
      opts.write(`${message}\n`);
    },
    progress({ step, total, loss, tokensPerS, etaS }) {
      const stats = `${step}/${total} loss ${loss.toFixed(4)} ${Math.round(tokensPerS)} tok/s ETA ${clock(etaS)}`;
      if (opts.tty) {
        const w = opts.width ?? 24;
        const filled = Math.round((w * step) / Math.max(1, total));
        opts.write(`\r\x1b[2K[${"#".repeat(filled)}${".".repeat(w - filled)}] ${stats}`);
        barShown = true;
      } else if (step % (opts.every ?? 10) === 0 || step === total) {
        opts.write(`step ${stats}\n`);
      }
    },
    end() {
      if (barShown) opts.write("\n");
      barShown = false;
    },
  };
}

export const silentReporter: Reporter = { info() {}, progress() {}, end() {} };

export function clock(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  const m = Math.floor(s / 60);
  return `${m}:${String(s % 60).padStart(2, "0")}`;
}
