/**
 * `weitiao eval --report report.html`: one self-contained HTML page (no scripts, no fonts, no network) for
 * any evaluation result: metrics with their intervals as an SVG bar chart with error bars, the per-class
 * table and confusion matrix of label data, answer-length histograms, and the worst examples side by side.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from '../data/index.js';
import { escapeHtml, reportSections, type ReportInput } from './report-parts.js';

export { escapeHtml, lengthHistogram, metricChart, type ReportInput } from './report-parts.js';

/** The whole page as a string. */
export function renderHtmlReport(r: ReportInput): string {
  const { title, body } = reportSections(r);
  return `<!doctype html>
<html lang="zh"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title>
<style>body{font-family:system-ui,"Noto Sans CJK SC","PingFang SC",sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}table.ex td{max-width:320px;white-space:pre-wrap;word-break:break-word}small{color:#666}</style>
</head><body><h1>${escapeHtml(title)}</h1>
${body}
<p><small>weitiao eval · 95% percentile bootstrap intervals; paired tests: bootstrap interval of the difference, approximate-randomisation p-value.</small></p>
</body></html>
`;
}

export async function writeHtmlReport(file: string, r: ReportInput): Promise<void> {
  const target = path.resolve(file);
  await mkdir(path.dirname(target), { recursive: true });
  await writeFileAtomic(target, renderHtmlReport(r));
}
