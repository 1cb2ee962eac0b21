/**
 * Small SVG charts for REPORT.md, written by hand (no plotting dependency): panels of line
 * charts (loss curves), a scatter with error bars on a log x axis (quality vs trainable params)
 * and stacked bars (memory by category). Output is plain SVG 1.1 text, deterministic for the
 * same input.
 */

export interface Series {
  label: string;
  points: { x: number; y: number; err?: number }[];
  color: string;
  dashed?: boolean;
}

export interface Panel {
  title: string;
  series: Series[];
}

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
export const color = (i: number): string => PALETTE[i % PALETTE.length];

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
const n = (v: number) => (Math.round(v * 10) / 10).toString();

/** "Nice" tick values; the first and last enclose [lo, hi] (the axis spans them). */
export function ticks(lo: number, hi: number, count = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) as number;
  const out: number[] = [];
  const first = Math.floor(lo / step + 1e-9) * step;
  for (let k = 0; first + k * step < hi - step * 1e-9; k++) out.push(Number((first + k * step).toPrecision(12)));
  out.push(Number((first + out.length * step).toPrecision(12)));
  return out;
}

const fmtTick = (v: number) => (Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-2 && v !== 0) ? v.toExponential(0) : `${Number(v.toPrecision(3))}`);
const fmtLog = (v: number) => (v >= 1e6 ? `${v / 1e6}M` : v >= 1e3 ? `${v / 1e3}k` : `${v}`);

interface Axes {
  x0: number;
  y0: number;
  w: number;
  h: number;
  sx: (v: number) => number;
  sy: (v: number) => number;
}

function frame(a: Axes, xt: number[], yt: number[], xl: string, yl: string, title: string, logX: boolean): string[] {
  const o: string[] = [];
  o.push(`<rect x="${a.x0}" y="${a.y0}" width="${a.w}" height="${a.h}" fill="none" stroke="#999"/>`);
  for (const v of yt) {
    const y = a.sy(v);
    o.push(`<line x1="${a.x0}" x2="${a.x0 + a.w}" y1="${n(y)}" y2="${n(y)}" stroke="#eee"/>`);
    o.push(`<text x="${a.x0 - 4}" y="${n(y + 3)}" text-anchor="end">${fmtTick(v)}</text>`);
  }
  for (const v of xt) {
    const x = a.sx(v);
    o.push(`<line x1="${n(x)}" x2="${n(x)}" y1="${a.y0 + a.h}" y2="${a.y0 + a.h + 4}" stroke="#999"/>`);
    o.push(`<text x="${n(x)}" y="${a.y0 + a.h + 15}" text-anchor="middle">${logX ? fmtLog(v) : fmtTick(v)}</text>`);
  }
  o.push(`<text x="${a.x0 + a.w / 2}" y="${a.y0 + a.h + 30}" text-anchor="middle">${esc(xl)}</text>`);
  o.push(`<text transform="translate(${a.x0 - 38},${a.y0 + a.h / 2}) rotate(-90)" text-anchor="middle">${esc(yl)}</text>`);
  o.push(`<text x="${a.x0 + a.w / 2}" y="${a.y0 - 8}" text-anchor="middle" font-weight="bold">${esc(title)}</text>`);
  return o;
}

function legend(series: { label: string; color: string; dashed?: boolean }[], x: number, y: number): string[] {
  return series.flatMap((s, i) => [
    `<line x1="${x}" x2="${x + 18}" y1="${y + i * 14}" y2="${y + i * 14}" stroke="${s.color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="4 3"' : ""}/>`,
    `<text x="${x + 22}" y="${y + i * 14 + 4}">${esc(s.label)}</text>`,
  ]);
}

const svgOpen = (w: number, h: number, title: string) =>
  `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}" font-family="sans-serif" font-size="10"><title>${esc(
    title,
  )}</title><rect width="${w}" height="${h}" fill="white"/>`;

/** Panels of line charts side by side, sharing the y range; one legend per panel. */
export function linePanels(panels: Panel[], o: { title: string; xLabel: string; yLabel: string; logX?: boolean }): string {
  const pw = 300,
    ph = 220,
    left = 55,
    top = 40,
    gap = 150;
  const W = left + panels.length * (pw + gap),
    H = top + ph + 60;
  const all = panels.flatMap((p) => p.series.flatMap((s) => s.points));
  const ys = all.flatMap((p) => [p.y - (p.err ?? 0), p.y + (p.err ?? 0)]);
  const [ylo, yhi] = [Math.min(...ys), Math.max(...ys)];
  const pad = (yhi - ylo) * 0.05 || 0.1;
  const yt = ticks(ylo - pad, yhi + pad);
  const xs = all.map((p) => p.x);
  const lx = (v: number) => (o.logX ? Math.log10(v) : v);
  const [xlo, xhi] = [Math.min(...xs.map(lx)), Math.max(...xs.map(lx))];
  const xspan = xhi - xlo || 1;
  const out = [svgOpen(W, H, o.title), `<text x="${W / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">${esc(o.title)}</text>`];
  panels.forEach((p, i) => {
    const x0 = left + i * (pw + gap);
    const a: Axes = {
      x0,
      y0: top,
      w: pw,
      h: ph,
      sx: (v) => x0 + ((lx(v) - xlo) / xspan) * pw,
      sy: (v) => top + ph - ((v - yt[0]) / (yt[yt.length - 1] - yt[0] || 1)) * ph,
    };
    const xt = o.logX ? Array.from({ length: Math.floor(xhi) - Math.ceil(xlo) + 1 }, (_, k) => 10 ** (Math.ceil(xlo) + k)) : ticks(xlo, xhi, 6);
    out.push(...frame(a, xt, yt, o.xLabel, o.yLabel, p.title, !!o.logX));
    out.push(`<clipPath id="panel${i}"><rect x="${x0}" y="${top}" width="${pw}" height="${ph}"/></clipPath><g clip-path="url(#panel${i})">`);
    for (const s of p.series) {
      const pts = s.points.map((q) => `${n(a.sx(q.x))},${n(a.sy(q.y))}`).join(" ");
      out.push(`<polyline fill="none" stroke="${s.color}" stroke-width="1.6"${s.dashed ? ' stroke-dasharray="4 3"' : ""} points="${pts}"/>`);
      for (const q of s.points) {
        if (q.err) out.push(`<line x1="${n(a.sx(q.x))}" x2="${n(a.sx(q.x))}" y1="${n(a.sy(q.y - q.err))}" y2="${n(a.sy(q.y + q.err))}" stroke="${s.color}"/>`);
        if (s.points.length < 12) out.push(`<circle cx="${n(a.sx(q.x))}" cy="${n(a.sy(q.y))}" r="2.2" fill="${s.color}"/>`);
      }
    }
    out.push("</g>");
    out.push(...legend(p.series, x0 + pw + 8, top + 6));
  });
  out.push("</svg>");
  return out.join("\n") + "\n";
}

export interface StackedBar {
  label: string;
  parts: { name: string; value: number }[];
  /** A marker drawn over the bar (e.g. the formula's total). */
  marker?: number;
}

/** Groups of stacked bars, one panel per group, each with its own y scale. */
export function stackedBarPanels(
  groups: { title: string; bars: StackedBar[] }[],
  o: { title: string; yLabel: string; parts: string[]; markerLabel: string },
): string {
  const bw = 34,
    gapBar = 14,
    ph = 220,
    left = 60,
    top = 40,
    gapPanel = 70;
  const widths = groups.map((g) => g.bars.length * (bw + gapBar) + gapBar);
  const W = left + widths.reduce((a, b) => a + b + gapPanel, 0) + 140,
    H = top + ph + 90;
  const out = [svgOpen(W, H, o.title), `<text x="${W / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">${esc(o.title)}</text>`];
  let x0 = left;
  groups.forEach((g, gi) => {
    const max = Math.max(
      ...g.bars.map((b) =>
        Math.max(
          b.parts.reduce((s, p) => s + p.value, 0),
          b.marker ?? 0,
        ),
      ),
    );
    const yt = ticks(0, max * 1.05);
    const top1 = yt[yt.length - 1] || 1;
    const a: Axes = { x0, y0: top, w: widths[gi], h: ph, sx: (v) => v, sy: (v) => top + ph - (v / top1) * ph };
    out.push(...frame(a, [], yt, "", gi === 0 ? o.yLabel : "", g.title, false));
    g.bars.forEach((b, bi) => {
      const bx = x0 + gapBar + bi * (bw + gapBar);
      let acc = 0;
      for (const p of b.parts) {
        const k = o.parts.indexOf(p.name);
        const y1 = a.sy(acc),
          y2 = a.sy(acc + p.value);
        out.push(
          `<rect x="${bx}" y="${n(y2)}" width="${bw}" height="${n(Math.max(0, y1 - y2))}" fill="${color(k)}"><title>${esc(
            `${b.label}: ${p.name} ${p.value.toFixed(2)}`,
          )}</title></rect>`,
        );
        acc += p.value;
      }
      if (b.marker !== undefined)
        out.push(`<line x1="${bx - 3}" x2="${bx + bw + 3}" y1="${n(a.sy(b.marker))}" y2="${n(a.sy(b.marker))}" stroke="black" stroke-width="2"/>`);
      out.push(`<text transform="translate(${bx + bw / 2},${top + ph + 10}) rotate(40)" text-anchor="start">${esc(b.label)}</text>`);
    });
    x0 += widths[gi] + gapPanel;
  });
  const lg = o.parts.map((p, k) => ({ label: p, color: color(k) }));
  out.push(
    ...lg.flatMap((s, i) => [
      `<rect x="${x0 - 40}" y="${top + i * 14 - 5}" width="12" height="10" fill="${s.color}"/>`,
      `<text x="${x0 - 24}" y="${top + i * 14 + 4}">${esc(s.label)}</text>`,
    ]),
  );
  out.push(
    `<line x1="${x0 - 42}" x2="${x0 - 26}" y1="${top + lg.length * 14}" y2="${top + lg.length * 14}" stroke="black" stroke-width="2"/><text x="${x0 - 24}" y="${
      top + lg.length * 14 + 4
    }">${esc(o.markerLabel)}</text>`,
  );
  out.push("</svg>");
  return out.join("\n") + "\n";
}
