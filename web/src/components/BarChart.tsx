/**
 * Hand-made bar charts: a histogram (vertical bars over numeric bins) and a labelled distribution
 * (horizontal bars with counts and shares), both plain SVG/HTML.
 */
interface HistogramProps {
  title: string;
  bins: { start: number; end: number; count: number }[];
  xLabel?: string;
}

export function Histogram({ title, bins, xLabel }: HistogramProps) {
  const W = 640;
  const H = 180;
  const pad = { left: 40, right: 8, top: 8, bottom: 30 };
  const max = Math.max(1, ...bins.map((b) => b.count));
  const bw = (W - pad.left - pad.right) / Math.max(1, bins.length);
  const labelEvery = Math.ceil(bins.length / 8);
  return (
    <figure className="chart" data-testid="token-histogram">
      <figcaption>{title}</figcaption>
      <svg viewBox={`0 0 ${W} ${H}`} role="img" aria-label={title}>
        <text x={pad.left - 6} y={pad.top + 10} textAnchor="end" className="tick">{max}</text>
        <text x={pad.left - 6} y={H - pad.bottom} textAnchor="end" className="tick">0</text>
        {bins.map((b, i) => {
          const h = (b.count / max) * (H - pad.top - pad.bottom);
          const x = pad.left + i * bw;
          return (
            <g key={i}>
              <rect x={x + 1} y={H - pad.bottom - h} width={Math.max(1, bw - 2)} height={h} className="bar">
                <title>{`${b.start}–${b.end}: ${b.count}`}</title>
              </rect>
              {i % labelEvery === 0 && (
                <text x={x} y={H - pad.bottom + 14} className="tick">{Math.round(b.start)}</text>
              )}
            </g>
          );
        })}
        <line x1={pad.left} x2={W - pad.right} y1={H - pad.bottom} y2={H - pad.bottom} className="axis" />
        {xLabel && <text x={(W + pad.left) / 2} y={H - 2} textAnchor="middle" className="tick">{xLabel}</text>}
      </svg>
    </figure>
  );
}

interface DistributionProps {
  title: string;
  items: { label: string; count: number }[];
}

export function Distribution({ title, items }: DistributionProps) {
  const total = items.reduce((s, i) => s + i.count, 0) || 1;
  const max = Math.max(1, ...items.map((i) => i.count));
  return (
    <figure className="chart" data-testid="answer-distribution">
      <figcaption>{title}</figcaption>
      <div className="dist">
        {items.map((i) => (
          <div className="dist-row" key={i.label}>
            <span className="dist-label" title={i.label}>{i.label}</span>
            <span className="dist-bar">
              <span style={{ width: `${(i.count / max) * 100}%` }} />
            </span>
            <span className="dist-count">
              {i.count} ({((i.count / total) * 100).toFixed(1)}%)
            </span>
          </div>
        ))}
      </div>
    </figure>
  );
}
