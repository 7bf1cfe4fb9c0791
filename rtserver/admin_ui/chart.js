/**
 * A small dependency-free time-series line chart drawn on a <canvas>.
 * Each series keeps the points of the last `windowMs` (10 minutes by default).
 * @module
 */

const COLORS = ["#1d4f91", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#0a7a8a", "#bf3989", "#57606a"];

export class LineChart {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {{windowMs?: number, unit?: string}} [options]
   */
  constructor(canvas, options = {}) {
    this.canvas = canvas;
    this.windowMs = options.windowMs ?? 10 * 60 * 1000;
    this.unit = options.unit ?? "";
    /** @type {Map<string, Array<[number, number]>>} */
    this.series = new Map();
    /** Points added since the page opened (for tests and the empty state). */
    this.points = 0;
  }

  /**
   * Add one value per series name at time `t` (ms); null values are skipped.
   * @param {number} t
   * @param {Record<string, number|null>} values
   */
  push(t, values) {
    for (const [name, value] of Object.entries(values)) {
      if (value === null || !Number.isFinite(value)) continue;
      let points = this.series.get(name);
      if (points === undefined) { points = []; this.series.set(name, points); }
      points.push([t, value]);
      this.points += 1;
      while (points.length && points[0][0] < t - this.windowMs) points.shift();
    }
    this.draw(t);
  }

  /** @param {number} now */
  draw(now) {
    const ctx = this.canvas.getContext("2d");
    if (ctx === null) throw new Error("canvas 2d context unavailable");
    const { width, height } = this.canvas;
    const left = 48, right = 8, top = 8, bottom = 18;
    ctx.clearRect(0, 0, width, height);
    let max = 0;
    for (const points of this.series.values()) for (const [, v] of points) max = Math.max(max, v);
    max = max > 0 ? max * 1.1 : 1;
    const x = (/** @type {number} */ t) => left + ((t - (now - this.windowMs)) / this.windowMs) * (width - left - right);
    const y = (/** @type {number} */ v) => top + (1 - v / max) * (height - top - bottom);
    ctx.strokeStyle = "#d8dde3";
    ctx.fillStyle = "#5c6670";
    ctx.font = "11px system-ui, sans-serif";
    ctx.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const v = (max * i) / 4;
      ctx.beginPath(); ctx.moveTo(left, y(v)); ctx.lineTo(width - right, y(v)); ctx.stroke();
      ctx.fillText(formatValue(v) + this.unit, 2, y(v) + 4);
    }
    ctx.fillText("-10 min", left, height - 4);
    ctx.fillText("now", width - right - 22, height - 4);
    let i = 0;
    let legendX = left + 4;
    for (const [name, points] of this.series) {
      const color = COLORS[i++ % COLORS.length];
      ctx.strokeStyle = color;
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      points.forEach(([t, v], k) => (k === 0 ? ctx.moveTo(x(t), y(v)) : ctx.lineTo(x(t), y(v))));
      ctx.stroke();
      ctx.fillStyle = color;
      ctx.fillText(name, legendX, top + 10);
      legendX += ctx.measureText(name).width + 12;
    }
  }
}

/** @param {number} v */
function formatValue(v) {
  if (v >= 1000) return `${(v / 1000).toFixed(1)}k`;
  if (v >= 10) return v.toFixed(0);
  if (v >= 1) return v.toFixed(1);
  return v.toFixed(3);
}

/**
 * Quantile `q` of a histogram interval: `deltas` are per-bucket counts for the
 * `bounds` (upper bounds, the last one null = +Inf), linear inside a bucket
 * (as Prometheus' histogram_quantile); null without observations.
 * @param {number} q
 * @param {Array<number|null>} bounds
 * @param {number[]} deltas
 * @returns {number|null}
 */
export function histogramQuantile(q, bounds, deltas) {
  const total = deltas.reduce((a, b) => a + b, 0);
  if (total <= 0) return null;
  const rank = q * total;
  let seen = 0;
  for (let i = 0; i < deltas.length; i++) {
    const n = deltas[i];
    if (n > 0 && seen + n >= rank) {
      const upper = bounds[i];
      if (upper === null) return /** @type {number} */ (bounds[i - 1]);
      const lower = i > 0 ? /** @type {number} */ (bounds[i - 1]) : 0;
      return lower + (upper - lower) * ((rank - seen) / n);
    }
    seen += n;
  }
  return /** @type {number} */ (bounds[bounds.length - 2]);
}
