/**
 * A small SVG line chart: several series over a shared x axis (training step), with "nice" ticks.
 * Hand-made on purpose: a chart library would outweigh the rest of the console.
 */
export interface Series {
  name: string;
  color: string;
  points: { x: number; y: number }[];
  /** Draw dots as well as the line (sparse series such as per-epoch validation loss). */
  dots?: boolean;
}

interface Props {
  series: Series[];
  title: string;
  xLabel?: string;
  /** Fixed y range, e.g. [0, 1] for accuracy; otherwise fitted to the data. */
  yDomain?: [number, number];
  height?: number;
  empty?: string;
  testId?: string;
}

const W = 640;
const PAD = { left: 52, right: 16, top: 12, bottom: 34 };

/** About `count` round tick values covering [lo, hi]. */
export function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [];
  if (hi === lo) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? raw;
  const ticks: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

const fmt = (v: number): string => (Math.abs(v) >= 1000 ? v.toFixed(0) : Number(v.toPrecision(3)).toString());

/** Tick labels with as many decimals as the tick spacing needs, so 6.995 and 7.005 do not both read "7". */
function tickFormat(ticks: number[]): (v: number) => string {
  if (ticks.length < 2) return fmt;
  const step = Math.abs(ticks[1] - ticks[0]);
  let decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  // A step of 2.5 (or 0.25) needs one more decimal than its magnitude says.
  while (decimals < 6 && Math.abs(step * 10 ** decimals - Math.round(step * 10 ** decimals)) > 1e-6) decimals++;
  return (v) => v.toFixed(decimals);
}

export function LineChart({ series, title, xLabel, yDomain, height = 240, empty = '—', testId }: Props) {
  const all = series.flatMap((s) => s.points).filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
  const total = all.length;
  const H = height;
  if (total === 0) {
    return (
      <figure className="chart" data-testid={testId} data-points={0}>
        <figcaption>{title}</figcaption>
        <div className="chart-empty" style={{ height: H / 2 }}>{empty}</div>
      </figure>
    );
  }
  const xs = all.map((p) => p.x);
  const ys = all.map((p) => p.y);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  let [y0, y1] = yDomain ?? [Math.min(...ys), Math.max(...ys)];
  if (!yDomain) {
    const pad = (y1 - y0) * 0.08 || Math.abs(y0) * 0.1 || 1;
    [y0, y1] = [y0 - pad, y1 + pad];
    if (Math.min(...ys) >= 0) y0 = Math.max(0, y0);
  }
  const sx = (x: number) => PAD.left + ((x - x0) / (x1 - x0)) * (W - PAD.left - PAD.right);
  const sy = (y: number) => H - PAD.bottom - ((y - y0) / (y1 - y0)) * (H - PAD.top - PAD.bottom);
  // Steps are whole numbers: no 1.5 on a step axis.
  const integerX = xs.every(Number.isInteger);
  const xTicks = niceTicks(x0, x1, 6).filter((t) => !integerX || Number.isInteger(t));
  const yTicks = niceTicks(y0, y1, 4);
  const yFmt = tickFormat(yTicks);
  const xFmt = tickFormat(xTicks);

  return (
    <figure className="chart" data-testid={testId} data-points={total}>
      <figcaption>
        {title}
        <span className="legend">
          {series.map((s) => {
            const last = s.points.at(-1);
            return (
              <span key={s.name} className="legend-item">
                <span className="swatch" style={{ background: s.color }} />
                {s.name}
                {last ? `: ${fmt(last.y)}` : ''}
              </span>
            );
          })}
        </span>
      </figcaption>
      <svg viewBox={`0 0 ${W} ${H}`} role="img" aria-label={title} preserveAspectRatio="xMidYMid meet">
        {yTicks.map((t) => (
          <g key={`y${t}`}>
            <line x1={PAD.left} x2={W - PAD.right} y1={sy(t)} y2={sy(t)} className="grid" />
            <text x={PAD.left - 6} y={sy(t) + 4} textAnchor="end" className="tick">{yFmt(t)}</text>
          </g>
        ))}
        {xTicks.map((t) => (
          <text key={`x${t}`} x={sx(t)} y={H - PAD.bottom + 16} textAnchor="middle" className="tick">{xFmt(t)}</text>
        ))}
        <line x1={PAD.left} x2={W - PAD.right} y1={H - PAD.bottom} y2={H - PAD.bottom} className="axis" />
        {xLabel && <text x={(W + PAD.left) / 2} y={H - 4} textAnchor="middle" className="tick">{xLabel}</text>}
        {series.map((s) => {
          const pts = s.points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
          const d = pts.map((p, i) => `${i ? 'L' : 'M'}${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join('');
          return (
            <g key={s.name}>
              <path d={d} fill="none" stroke={s.color} strokeWidth={2} strokeLinejoin="round" />
              {(s.dots || pts.length === 1) &&
                pts.map((p, i) => <circle key={i} cx={sx(p.x)} cy={sy(p.y)} r={3.5} fill={s.color} />)}
            </g>
          );
        })}
      </svg>
    </figure>
  );
}
