import type { DType } from "./dtype.ts";
import type { GradRule } from "./grad.ts";
import { keep, scope } from "./scope.ts";
import { sameShape, shapeStr } from "./shape.ts";
import type { Tensor } from "./tensor.ts";
import { full } from "./tensor.ts";

/**
 * The gradient table: op name -> rule. The walk owns it but imports no rule; each module that
 * records ops registers its rules when it loads (grad.ts the primitives; fused.ts, fused-nn.ts,
 * quant.ts, recompute.ts theirs), so the table is complete whatever order the modules load in.
 * A `var` without initializer: a rule module may register while this module is still being
 * evaluated (an import cycle), and a var is never in the temporal dead zone nor reset later.
 */
// biome-ignore lint/style/noVar: see above
var rules: Record<string, GradRule> | undefined;

export function gradRuleTable(): Record<string, GradRule> {
  rules ??= {};
  return rules;
}

/** Add rules to the table (a module's own ops; registering a name twice replaces the rule). */
export function registerGradRules(r: Readonly<Record<string, GradRule>>): void {
  Object.assign(gradRuleTable(), r);
}

/** What a gradient rule sees: the saved tensors it asked for, the input metadata and the op's params. */
export interface GradCtx {
  /** Saved inputs (by position); null where the rule did not ask to save that input. */
  readonly saved: readonly (Tensor | null)[];
  /** Saved output, when the rule asked for it. */
  readonly out: Tensor | null;
  readonly inShapes: readonly (readonly number[])[];
  readonly inDtypes: readonly DType[];
  /** Which inputs need a gradient (rules may skip the others). */
  readonly needs: readonly boolean[];
  readonly params: any;
}

export interface Node {
  op: string;
  inputs: Tensor[];
  ctx: GradCtx;
}

let gradEnabled = true;

export function isGradEnabled(): boolean {
  return gradEnabled;
}

/** Run `fn` without recording autograd nodes (inference, optimizer updates, gradient rules). */
export function noGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

/** Run `fn` with autograd recording on (inside a noGrad region, e.g. recompute()'s second forward). */
export function enableGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = true;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

/** Attach a node to `out` when any input requires grad. Saved tensors get their own storage reference. */
export function record(out: Tensor, op: string, inputs: Tensor[], params: unknown = undefined, extraSaved?: Tensor[]): Tensor {
  if (!gradEnabled || !inputs.some((t) => t.requiresGrad)) return out;
  const rule = gradRuleTable()[op];
  if (!rule) throw new Error(`no gradient rule for op '${op}'`);
  const saveIn = rule.save?.inputs ?? [];
  const saved = inputs.map((t, i) => (saveIn.includes(i) ? t.alias(t, false) : null));
  if (extraSaved) for (const t of extraSaved) saved.push(t.alias(t, false));
  out.requiresGrad = true;
  out._node = {
    op,
    inputs,
    ctx: {
      saved,
      out: rule.save?.out ? out.alias(out, false) : null,
      inShapes: inputs.map((t) => t.shape),
      inDtypes: inputs.map((t) => t.dtype),
      needs: inputs.map((t) => t.requiresGrad),
      params,
    },
  };
  return out;
}

function releaseNode(t: Tensor): void {
  const n = t._node;
  if (!n) return;
  for (const s of n.ctx.saved) s?.dispose();
  n.ctx.out?.dispose();
  t._node = null;
  t._released = true;
}

/** Tensors reachable from `root` through nodes, inputs before outputs (iterative: graphs can be deep). */
function topoOrder(root: Tensor): Tensor[] {
  const order: Tensor[] = [];
  const seen = new Set<Tensor>();
  const stack: [Tensor, number][] = [[root, 0]];
  seen.add(root);
  while (stack.length) {
    const top = stack[stack.length - 1];
    const [t, i] = top;
    const inputs = t._node?.inputs ?? [];
    if (i < inputs.length) {
      top[1]++;
      const c = inputs[i];
      if (c.requiresGrad && !seen.has(c)) {
        seen.add(c);
        stack.push([c, 0]);
      }
    } else {
      order.push(t);
      stack.pop();
    }
  }
  return order;
}

export function releaseGraph(root: Tensor): void {
  for (const t of topoOrder(root)) releaseNode(t);
}

export function backward(root: Tensor, seed: Tensor | undefined, opts: { retainGraph?: boolean } = {}): void {
  if (root._released) {
    throw new Error(`backward: the graph behind ${root.describe()} was already released; pass { retainGraph: true } to the first backward() to call it twice`);
  }
  if (!root.requiresGrad) throw new Error(`backward: ${root.describe()} does not require grad (no trainable input reached it)`);
  if (!seed && root.size !== 1) throw new Error(`backward: ${root.describe()} is not a scalar; pass the output gradient`);
  if (seed && !sameShape(seed.shape, root.shape)) {
    throw new RangeError(`backward: gradient ${shapeStr(seed.shape)} does not match ${root.describe()}`);
  }
  const order = topoOrder(root);
  const grads = new Map<Tensor, Tensor>();
  noGrad(() => {
    grads.set(root, seed ? seed.alias() : full(root.shape, 1, { dtype: root.dtype, backend: root.backend }));
    for (let k = order.length - 1; k >= 0; k--) {
      const t = order[k];
      const node = t._node;
      if (!node) continue; // leaf: its gradient stays in the map until the end
      const g = grads.get(t);
      if (!g) continue;
      grads.delete(t);
      const rule = gradRuleTable()[node.op];
      const gs = scope(() => rule.backward(node.ctx, g));
      const fresh = new Set<Tensor>();
      node.inputs.forEach((inp, i) => {
        let gi = gs[i];
        if (!gi || !inp.requiresGrad) {
          if (gi && gi !== g) gi.dispose();
          return;
        }
        if (!sameShape(gi.shape, inp.shape) || gi.dtype !== inp.dtype) {
          throw new Error(`gradient rule '${node.op}' returned ${gi.dtype}${shapeStr(gi.shape)} for input ${i} of ${inp.dtype}${shapeStr(inp.shape)}`);
        }
        if (gi === g || fresh.has(gi)) gi = gi.alias();
        fresh.add(gi);
        const prev = grads.get(inp);
        if (prev) {
          grads.set(inp, prev.add(gi));
          prev.dispose();
          gi.dispose();
        } else grads.set(inp, gi);
      });
      g.dispose();
      if (!opts.retainGraph) releaseNode(t);
    }
    // Leaves: accumulate into .grad (gradient accumulation across backward calls).
    for (const [leaf, g] of grads) {
      if (leaf._node) continue;
      if (leaf.grad) {
        const sum = leaf.grad.add(g);
        leaf.grad.dispose();
        g.dispose();
        leaf.grad = keep(sum);
      } else leaf.grad = keep(g.isContiguous ? g : contiguousOwned(g));
    }
  });
}

function contiguousOwned(g: Tensor): Tensor {
  const c = g.contiguous();
  g.dispose();
  return c;
}
