/**
 * The pieces of an evaluation report, as HTML strings with inline SVG charts: one implementation for the
 * offline page (`weitiao eval --report`, report.ts) and the console's stored-report view (web/, which
 * imports this module). Browser-safe: no Node imports. Every text from the data goes through escapeHtml.
 */
import type { LabelMetrics, MetricValue } from '../engine/protocol.js';
import type { BaselineComparison } from './baseline.js';
import type { ForgettingReport } from './forgetting.js';
import type { Comparison, EvalReport } from './index.js';

export type ReportInput = EvalReport | Comparison | BaselineComparison | ForgettingReport;

/** The last path segment (a report may name its file by path or by id). */
const baseName = (file: string) => file.split(/[\\/]/).pop() ?? file;

const COLORS = ['#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#76b7b2'];

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

const num = (x: number, d = 4) => (Number.isFinite(x) ? x.toFixed(d) : '-');

/** Grouped bars (one group per metric, one bar per system) with 95% interval whiskers; values on 0..1 (BLEU/chrF divided by 100). */
export function metricChart(systems: string[], metrics: Record<string, Record<string, MetricValue>>): string {
  const names = Object.keys(metrics[systems[0]] ?? {});
  const groupWidth = systems.length * 26 + 24;
  const width = 60 + names.length * groupWidth;
  const height = 240;
  const y = (v: number) => 200 - Math.max(0, Math.min(1, v)) * 180;
  const parts = [`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height + 20 * Math.ceil(systems.length / 3)}" role="img" aria-label="metrics with 95% intervals">`];
  for (const t of [0, 0.25, 0.5, 0.75, 1]) {
    parts.push(`<line x1="40" x2="${width}" y1="${y(t)}" y2="${y(t)}" stroke="#ddd"/><text x="35" y="${y(t) + 4}" font-size="10" text-anchor="end">${t}</text>`);
  }
  names.forEach((name, g) => {
    const x0 = 50 + g * groupWidth;
    systems.forEach((system, s) => {
      const m = metrics[system]?.[name];
      if (!m) return;
      const k = m.scale || 1;
      const x = x0 + s * 26;
      parts.push(`<rect x="${x}" y="${y(m.value / k)}" width="20" height="${200 - y(m.value / k)}" fill="${COLORS[s % COLORS.length]}"><title>${escapeHtml(system)} ${escapeHtml(name)}: ${num(m.value)} [${num(m.ci_low)}, ${num(m.ci_high)}]</title></rect>`);
      parts.push(`<line x1="${x + 10}" x2="${x + 10}" y1="${y(m.ci_low / k)}" y2="${y(m.ci_high / k)}" stroke="#222"/>`);
      parts.push(`<line x1="${x + 5}" x2="${x + 15}" y1="${y(m.ci_low / k)}" y2="${y(m.ci_low / k)}" stroke="#222"/><line x1="${x + 5}" x2="${x + 15}" y1="${y(m.ci_high / k)}" y2="${y(m.ci_high / k)}" stroke="#222"/>`);
    });
    parts.push(`<text x="${x0 + (systems.length * 26) / 2}" y="218" font-size="11" text-anchor="middle">${escapeHtml(name)}${metrics[systems[0]][name].scale === 100 ? ' /100' : ''}</text>`);
  });
  systems.forEach((system, s) => {
    const lx = 50 + (s % 3) * 220;
    const ly = height + 20 * Math.floor(s / 3) - 4;
    parts.push(`<rect x="${lx}" y="${ly - 10}" width="12" height="12" fill="${COLORS[s % COLORS.length]}"/><text x="${lx + 16}" y="${ly}" font-size="11">${escapeHtml(system)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('');
}

/** Histogram of answer lengths in characters, one colour per system, shared bins. */
export function lengthHistogram(series: Record<string, string[]>): string {
  const lengths = Object.fromEntries(Object.entries(series).map(([k, xs]) => [k, xs.map((x) => [...x].length)]));
  const all = Object.values(lengths).flat();
  const max = Math.max(1, ...all);
  const bins = 12;
  const size = Math.ceil((max + 1) / bins);
  const counts = Object.fromEntries(Object.entries(lengths).map(([k, ls]) => {
    const c = new Array(bins).fill(0);
    for (const l of ls) c[Math.min(bins - 1, Math.floor(l / size))]++;
    return [k, c];
  }));
  const top = Math.max(1, ...Object.values(counts).flat());
  const names = Object.keys(counts);
  const bw = Math.max(4, Math.floor(36 / names.length));
  const parts = [`<svg xmlns="http://www.w3.org/2000/svg" width="${60 + bins * 40}" height="200" role="img" aria-label="answer lengths">`];
  for (let b = 0; b < bins; b++) {
    names.forEach((name, s) => {
      const h = (counts[name][b] / top) * 150;
      parts.push(`<rect x="${40 + b * 40 + s * bw}" y="${160 - h}" width="${bw - 1}" height="${h}" fill="${COLORS[s % COLORS.length]}"><title>${escapeHtml(name)}: ${counts[name][b]} answers of ${b * size}–${(b + 1) * size - 1} chars</title></rect>`);
    });
    parts.push(`<text x="${40 + b * 40}" y="175" font-size="9">${b * size}</text>`);
  }
  parts.push(`<text x="40" y="192" font-size="10">characters per answer 答案字数 (bars: ${names.map(escapeHtml).join(', ')})</text></svg>`);
  return parts.join('');
}

/** Mean wall seconds per request of each system, as horizontal bars (the engine times a batch, not each answer). */
export function latencyChart(rows: { system: string; seconds: number }[]): string {
  const top = Math.max(1e-9, ...rows.map((r) => r.seconds));
  const parts = [`<svg xmlns="http://www.w3.org/2000/svg" width="560" height="${30 + rows.length * 24}" role="img" aria-label="seconds per request">`];
  rows.forEach((r, i) => {
    const w = (r.seconds / top) * 300;
    parts.push(`<text x="150" y="${i * 24 + 16}" font-size="11" text-anchor="end">${escapeHtml(r.system)}</text><rect x="156" y="${i * 24 + 4}" width="${w.toFixed(1)}" height="16" fill="${COLORS[i % COLORS.length]}"><title>${escapeHtml(r.system)}: ${num(r.seconds, 3)} s</title></rect><text x="${(160 + w).toFixed(1)}" y="${i * 24 + 16}" font-size="11">${num(r.seconds, 3)} s</text>`);
  });
  parts.push(`<text x="156" y="${rows.length * 24 + 20}" font-size="10">seconds per request 每次请求秒数</text></svg>`);
  return parts.join('');
}

function labelTables(m: LabelMetrics): string {
  const rows = m.labels
    .map((l) => `<tr><td>${escapeHtml(l)}</td><td>${num(m.per_class[l].precision)}</td><td>${num(m.per_class[l].recall)}</td><td>${num(m.per_class[l].f1)}</td><td>${m.per_class[l].support}</td></tr>`)
    .join('');
  const peak = Math.max(1, ...m.confusion_matrix.flat());
  const matrix = m.confusion_matrix
    .map((row, i) => `<tr><th>${escapeHtml(m.labels[i])}</th>${row.map((c) => `<td style="background:rgba(78,121,167,${(c / peak).toFixed(2)})">${c}</td>`).join('')}</tr>`)
    .join('');
  return `<p>accuracy 准确率 ${num(m.accuracy)} · macro-F1 ${num(m.macro_f1)} · n=${m.n}</p>
<table><tr><th>label 标签</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>${rows}</table>
<h3>confusion matrix 混淆矩阵 <small>(rows: answer, columns: predicted)</small></h3>
<table><tr><th></th>${m.labels.map((l) => `<th>${escapeHtml(l)}</th>`).join('')}</tr>${matrix}</table>`;
}

function examplesTable(header: string[], rows: string[][]): string {
  return `<table class="ex"><tr>${header.map((h) => `<th>${escapeHtml(h)}</th>`).join('')}</tr>${rows.map((r) => `<tr>${r.map((c) => `<td>${escapeHtml(c)}</td>`).join('')}</tr>`).join('')}</table>`;
}

function metricsTable(systems: string[], metrics: Record<string, Record<string, MetricValue>>): string {
  const names = Object.keys(metrics[systems[0]] ?? {});
  const body = systems
    .map((s) => `<tr><td>${escapeHtml(s)}</td>${names.map((n) => { const m = metrics[s][n]; return `<td>${num(m.value)} <small>[${num(m.ci_low)}, ${num(m.ci_high)}]</small></td>`; }).join('')}</tr>`)
    .join('');
  return `<table><tr><th>system</th>${names.map((n) => `<th>${escapeHtml(n)}</th>`).join('')}</tr>${body}</table>`;
}

export function reportSections(r: ReportInput): { title: string; body: string } {
  if ('object' in r && r.object === 'weitiao.baseline_comparison') {
    const systems = r.rows.map((x) => x.system);
    const metrics = Object.fromEntries(r.rows.map((x) => [x.system, x.metrics]));
    const cost = r.rows.map((x) => `<tr><td>${x.system}</td><td>${escapeHtml(x.model)}</td><td>${x.prompt_tokens.toFixed(0)}</td><td>${num(x.seconds_per_example, 3)}</td></tr>`).join('');
    const tests = examplesTable(['baseline', 'metric', 'delta', '95% CI', 'p'], r.comparisons.map((t) => [t.baseline, t.metric, num(t.delta), `[${num(t.ci_low)}, ${num(t.ci_high)}]`, num(t.p_value)]));
    const worst = [...r.examples].sort((a, b) => a.scores['fine-tuned'] - b.scores['fine-tuned']).slice(0, 20);
    const tuned = r.rows.find((x) => x.system === 'fine-tuned')!;
    return {
      title: `base / few-shot / fine-tuned — ${baseName(r.file)}`,
      body: `<h2>metrics with 95% intervals 指标与置信区间</h2>${metricChart(systems, metrics)}${metricsTable(systems, metrics)}
<h2>cost per request 每次请求的成本</h2><table><tr><th>system</th><th>model</th><th>prompt tokens</th><th>seconds</th></tr>${cost}</table>
<h2>latency 延迟</h2>${latencyChart(r.rows.map((x) => ({ system: x.system, seconds: x.seconds_per_example })))}
<h2>fine-tuned minus baseline 微调减基线</h2>${tests}
${tuned.label_metrics ? `<h2>fine-tuned: per class 各类别</h2>${labelTables(tuned.label_metrics)}` : ''}
<h2>answer lengths 答案长度</h2>${lengthHistogram(Object.fromEntries(systems.map((s) => [s, r.examples.map((e) => e.answers[s])])))}
<h2>worst examples of the fine-tune 微调最差样本</h2>${examplesTable(['#', 'expected 标准答案', 'zero-shot', 'few-shot', 'fine-tuned'], worst.map((e) => [String(e.index), e.expected, e.answers['zero-shot'], e.answers['few-shot'], e.answers['fine-tuned']]))}`,
    };
  }
  if ('object' in r && r.object === 'weitiao.forgetting_check') {
    const metrics = { base: { contains_answer: r.overall.base, exact_match: r.exact_match.base }, 'fine-tuned': { contains_answer: r.overall.tuned, exact_match: r.exact_match.tuned } };
    return {
      title: `forgetting check 遗忘检查 — ${r.model}`,
      body: `<h2>general ability 通用能力 (n=${r.n})</h2>${metricChart(['base', 'fine-tuned'], metrics)}
<p>delta 差值 ${num(r.overall.delta)} [${num(r.overall.ci_low)}, ${num(r.overall.ci_high)}], p=${num(r.overall.p_value, 3)}</p>
${examplesTable(['category', 'language', 'n', 'base', 'fine-tuned', 'delta'], r.groups.map((g) => [g.category, g.language, String(g.n), num(g.base, 3), num(g.tuned, 3), num(g.delta, 3)]))}
<h2>lost items 遗忘的题目</h2>${examplesTable(['question', 'expected', 'base', 'fine-tuned'], r.lost.map((l) => [l.question, l.expected, l.base, l.tuned]))}`,
    };
  }
  const reports: EvalReport[] = 'reports' in r ? r.reports : [r as EvalReport];
  const parts: string[] = [];
  const gen = reports.filter((x) => x.generation_metrics);
  if (gen.length) {
    const metrics = Object.fromEntries(gen.map((x) => [x.model, x.generation_metrics!.metrics]));
    parts.push(`<h2>metrics with 95% intervals 指标与置信区间</h2>${metricChart(gen.map((x) => x.model), metrics)}${metricsTable(gen.map((x) => x.model), metrics)}`);
  }
  for (const x of reports) if (x.label_metrics) parts.push(`<h2>${escapeHtml(x.model)}</h2>${labelTables(x.label_metrics)}`);
  parts.push(`<h2>answer lengths 答案长度</h2>${lengthHistogram(Object.fromEntries([['expected', reports[0].predictions.map((p) => p.expected)], ...reports.map((x) => [x.model, x.predictions.map((p) => p.predicted)])]))}`);
  parts.push(`<h2>latency 延迟</h2>${latencyChart(reports.map((x) => ({ system: x.model, seconds: x.seconds_per_example })))}`);
  const first = reports[0];
  const score = first.generation_metrics?.per_example.char_f1 ?? first.predictions.map((p) => Number(p.predicted === p.expected));
  const worst = first.predictions.map((p, i) => ({ p, s: score[i] })).sort((a, b) => a.s - b.s).slice(0, 20);
  parts.push(`<h2>worst examples 最差样本</h2>${examplesTable(['#', 'expected 标准答案', ...reports.map((x) => x.model)], worst.map(({ p }) => [String(p.index), p.expected, ...reports.map((x) => x.predictions[p.index].predicted)]))}`);
  return { title: `${reports.map((x) => x.model).join(' vs ')} — ${baseName(first.file)}`, body: parts.join('\n') };
}

