/** The loss curve: a small hand-written SVG (train loss per step, eval loss as dots). */

const W = 640,
  H = 220,
  LEFT = 44,
  RIGHT = 12,
  TOP = 26,
  BOTTOM = 26;
const NS = "http://www.w3.org/2000/svg";
const SMOOTHING = 0.6;

function el(name: string, attrs: Record<string, string | number>, text?: string): SVGElement {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

/** Round the axis range outward to steps of 1, 2 or 5 x 10^k. */
function niceTicks(lo: number, hi: number, count = 4): number[] {
  const raw = (hi - lo) / count || 1;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? raw;
  const ticks: number[] = [];
  for (let v = Math.floor(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  if (ticks[ticks.length - 1] < hi) ticks.push(ticks[ticks.length - 1] + step);
  return ticks;
}

export interface ChartData {
  losses: readonly number[];
  totalSteps: number;
  evals: readonly { step: number; loss: number }[];
}

export function renderChart(svg: SVGSVGElement, d: ChartData): void {
  svg.replaceChildren();
  const values = [...d.losses, ...d.evals.map((e) => e.loss)].filter(Number.isFinite);
  const total = Math.max(1, d.totalSteps);
  if (!values.length) {
    svg.append(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "axis" }, "the loss curve appears here"));
    return;
  }
  const ticks = niceTicks(Math.min(...values), Math.max(...values));
  const [y0, y1] = [ticks[0], ticks[ticks.length - 1]];
  const x = (step: number) => LEFT + ((W - LEFT - RIGHT) * step) / total;
  const y = (v: number) => TOP + ((H - TOP - BOTTOM) * (y1 - v)) / Math.max(1e-9, y1 - y0);
  for (const t of ticks) {
    svg.append(el("line", { x1: LEFT, x2: W - RIGHT, y1: y(t), y2: y(t), class: "grid" }));
    svg.append(el("text", { x: LEFT - 6, y: y(t) + 4, "text-anchor": "end", class: "axis" }, String(t)));
  }
  for (const s of [0, Math.round(total / 2), total]) {
    svg.append(el("text", { x: x(s), y: H - 8, "text-anchor": "middle", class: "axis" }, `${s}`));
  }
  svg.append(el("text", { x: LEFT - 12, y: H - 8, "text-anchor": "end", class: "axis" }, "step"));
  const line = (vs: readonly number[], cls: string) => {
    svg.append(el("polyline", { points: vs.map((l, i) => `${x(i + 1).toFixed(1)},${y(l).toFixed(1)}`).join(" "), class: cls }));
  };
  // Per-batch losses are noisy: the raw curve faint, an exponential moving average on top.
  line(d.losses, "loss-raw");
  let ema = d.losses[0];
  line(
    d.losses.map((l) => (ema = SMOOTHING * ema + (1 - SMOOTHING) * l)),
    "loss",
  );
  const legend: [string, string, number][] = [
    ["loss", "train loss (smoothed)", 0],
    ["loss-raw", "per step", 150],
    ["eval", "eval loss", 230],
  ];
  legend.forEach(([cls, label, dx]) => {
    const lx = W - RIGHT - 300 + dx;
    svg.append(cls === "eval" ? el("circle", { cx: lx + 6, cy: 10, r: 4, class: cls }) : el("line", { x1: lx, x2: lx + 14, y1: 10, y2: 10, class: cls }));
    svg.append(el("text", { x: lx + 18, y: 14, class: "axis" }, label));
  });
  for (const e of d.evals) {
    const c = el("circle", { cx: x(e.step), cy: y(e.loss), r: 4, class: "eval" });
    c.append(el("title", {}, `eval loss ${e.loss.toFixed(4)} at step ${e.step}`));
    svg.append(c);
  }
  // The numbers behind the curve, for tests and for anyone reading the DOM.
  svg.dataset.losses = JSON.stringify(d.losses.map((l) => Number(l.toFixed(6))));
}
