/** Printing helpers shared by the CLI commands: tables that line up with Chinese text, metrics, issues. */
import type { LabelMetrics } from '../engine/index.js';

/** Columns a string takes in a terminal: CJK and full-width characters take two. */
export function displayWidth(text: string): number {
  let width = 0;
  for (const ch of text) {
    const cp = ch.codePointAt(0)!;
    width +=
      (cp >= 0x1100 && cp <= 0x115f) ||
      (cp >= 0x2e80 && cp <= 0xa4cf) ||
      (cp >= 0xac00 && cp <= 0xd7a3) ||
      (cp >= 0xf900 && cp <= 0xfaff) ||
      (cp >= 0xfe30 && cp <= 0xfe4f) ||
      (cp >= 0xff00 && cp <= 0xff60) ||
      (cp >= 0xffe0 && cp <= 0xffe6) ||
      (cp >= 0x1f300 && cp <= 0x1faff) ||
      (cp >= 0x20000 && cp <= 0x3fffd)
        ? 2
        : 1;
  }
  return width;
}

function pad(text: string, width: number, right = false): string {
  const fill = ' '.repeat(Math.max(0, width - displayWidth(text)));
  return right ? fill + text : text + fill;
}

/** A plain table: header row, then rows; numbers align right. */
export function table(header: string[], rows: (string | number)[][]): string {
  const cells = [header, ...rows.map((r) => r.map((c) => String(c)))];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => displayWidth(r[i] ?? ''))));
  const numeric = header.map((_, i) => rows.length > 0 && rows.every((r) => typeof r[i] === 'number'));
  return cells.map((r) => r.map((c, i) => pad(c, widths[i], numeric[i])).join('  ').trimEnd()).join('\n');
}

export const fmt = (x: number | null | undefined, digits = 4): string =>
  x === null || x === undefined || Number.isNaN(x) ? '-' : x.toFixed(digits);

/** Accuracy, per-class precision/recall/F1 and the confusion matrix, as a person reads them. */
export function formatLabelMetrics(m: LabelMetrics): string {
  const lines = [`accuracy 准确率 ${fmt(m.accuracy)}   macro-F1 ${fmt(m.macro_f1)}   n=${m.n}`, ''];
  lines.push(
    table(
      ['label 标签', 'precision 精确率', 'recall 召回率', 'F1', 'support'],
      m.labels.map((l) => [l, fmt(m.per_class[l].precision), fmt(m.per_class[l].recall), fmt(m.per_class[l].f1), m.per_class[l].support]),
    ),
  );
  lines.push('', 'confusion matrix 混淆矩阵 (rows: answer 真实, columns: predicted 预测)');
  lines.push(table(['', ...m.labels], m.labels.map((l, i) => [l, ...m.confusion_matrix[i]])));
  return lines.join('\n');
}

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + '\n');
}

export function formatTime(unixSeconds: number | null | undefined): string {
  if (!unixSeconds) return '-';
  return new Date(unixSeconds * 1000).toISOString().replace('T', ' ').slice(0, 19);
}
