import type { BinaryOp, UnaryOp } from "@lowrank/tensor";
import type { Num } from "./strided.ts";

export function unaryKernel(op: UnaryOp, x: Num, out: Float32Array | Int32Array | Uint8Array): void {
  const n = out.length;
  switch (op) {
    case "neg": for (let i = 0; i < n; i++) out[i] = -x[i]; break;
    case "exp": for (let i = 0; i < n; i++) out[i] = Math.exp(x[i]); break;
    case "log": for (let i = 0; i < n; i++) out[i] = Math.log(x[i]); break;
    case "sqrt": for (let i = 0; i < n; i++) out[i] = Math.sqrt(x[i]); break;
    case "recip": for (let i = 0; i < n; i++) out[i] = 1 / x[i]; break;
    case "sin": for (let i = 0; i < n; i++) out[i] = Math.sin(x[i]); break;
    case "cos": for (let i = 0; i < n; i++) out[i] = Math.cos(x[i]); break;
    case "tanh": for (let i = 0; i < n; i++) out[i] = Math.tanh(x[i]); break;
    case "sigmoid": for (let i = 0; i < n; i++) out[i] = 1 / (1 + Math.exp(-x[i])); break;
    case "abs": for (let i = 0; i < n; i++) out[i] = Math.abs(x[i]); break;
    case "relu": for (let i = 0; i < n; i++) out[i] = x[i] > 0 ? x[i] : 0; break;
  }
}

/** out[i] = a[oa[i]] op b[ob[i]]; oa/ob null means "same index as the output". */
export function binaryKernel(op: BinaryOp, a: Num, oa: Int32Array | null, b: Num, ob: Int32Array | null, out: Float32Array | Int32Array | Uint8Array): void {
  const n = out.length;
  const A = (i: number) => a[oa ? oa[i] : i];
  const B = (i: number) => b[ob ? ob[i] : i];
  if (!oa && !ob) {
    switch (op) {
      case "add": for (let i = 0; i < n; i++) out[i] = a[i] + b[i]; return;
      case "sub": for (let i = 0; i < n; i++) out[i] = a[i] - b[i]; return;
      case "mul": for (let i = 0; i < n; i++) out[i] = a[i] * b[i]; return;
      case "div": for (let i = 0; i < n; i++) out[i] = a[i] / b[i]; return;
    }
  }
  switch (op) {
    case "add": for (let i = 0; i < n; i++) out[i] = A(i) + B(i); break;
    case "sub": for (let i = 0; i < n; i++) out[i] = A(i) - B(i); break;
    case "mul": for (let i = 0; i < n; i++) out[i] = A(i) * B(i); break;
    case "div":
      if (out instanceof Int32Array) for (let i = 0; i < n; i++) out[i] = Math.trunc(A(i) / B(i));
      else for (let i = 0; i < n; i++) out[i] = A(i) / B(i);
      break;
    case "max": for (let i = 0; i < n; i++) { const p = A(i), q = B(i); out[i] = p !== p || q !== q ? NaN : Math.max(p, q); } break;
    case "min": for (let i = 0; i < n; i++) { const p = A(i), q = B(i); out[i] = p !== p || q !== q ? NaN : Math.min(p, q); } break;
    case "pow": for (let i = 0; i < n; i++) out[i] = Math.pow(A(i), B(i)); break;
    case "lt": for (let i = 0; i < n; i++) out[i] = A(i) < B(i) ? 1 : 0; break;
    case "eq": for (let i = 0; i < n; i++) out[i] = A(i) === B(i) ? 1 : 0; break;
  }
}
