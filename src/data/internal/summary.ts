/** Descriptive statistics for stats reports: nearest-rank percentiles and a histogram with round bin widths. */

export interface Summary {
  min: number;
  mean: number;
  p50: number;
  p95: number;
  max: number;
}

/** min / mean / p50 / p95 / max; percentiles by the nearest-rank method (always an observed value). */
export function summarize(values: readonly number[]): Summary | null {
  if (values.length === 0) return null;
  const sorted = Float64Array.from(values).sort();
  const rank = (p: number) => sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)];
  let sum = 0;
  for (const v of sorted) sum += v;
  return { min: sorted[0], mean: Math.round((sum / sorted.length) * 100) / 100, p50: rank(50), p95: rank(95), max: sorted[sorted.length - 1] };
}

export interface Histogram {
  /** Each bin counts values v with start ≤ v < end. */
  bins: { start: number; end: number; count: number }[];
  bin_width: number;
}

/** About `target` bins from 0 to the maximum, with a width of 1, 2 or 5 × 10^k so the axis reads well. */
export function histogram(values: readonly number[], target = 20): Histogram {
  if (values.length === 0) return { bins: [], bin_width: 1 };
  let max = 0;
  for (const v of values) if (v > max) max = v;
  const raw = Math.max(1, (max + 1) / target);
  const pow = 10 ** Math.floor(Math.log10(raw));
  const width = [1, 2, 5, 10].map((m) => m * pow).find((w) => w >= raw) ?? 10 * pow;
  const n = Math.floor(max / width) + 1;
  const bins = Array.from({ length: n }, (_, i) => ({ start: i * width, end: (i + 1) * width, count: 0 }));
  for (const v of values) bins[Math.floor(v / width)].count++;
  return { bins, bin_width: width };
}
