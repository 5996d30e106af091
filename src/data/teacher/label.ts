/**
 * `weitiao data label`: a teacher fills a missing answer column. The prompt lists the label set; answers
 * are mapped to the closest label (exact, contained, or nearest by edit distance) and answers far from
 * every label are flagged `unknown`; confidence comes from the first token's top_logprobs where the
 * endpoint gives them (weitiao serve on llama.cpp, vLLM, OpenAI), else it is null.
 */
import { WeitiaoError } from '../../errors.js';
import { openSource, readJsonLines, readTable } from '../internal/source.js';
import { TeacherClient, type ChatAnswer, type ChatRequest } from './endpoint.js';
import type { Unit, UnitOutcome } from './run.js';
import type { TrainedPrompt } from './trained-prompt.js';

export interface LabelOptions {
  input: string;
  /** The column with the text to label. */
  column: string;
  labels: string[];
  /** The column to fill (default `label`); rows that already have a value keep it and cost no request. */
  answer_column?: string;
  /** Extra instruction placed before the label list. */
  instruction?: string;
  /** Ask for logprobs (off for endpoints that refuse them; turned off by itself on such a refusal). */
  logprobs?: boolean;
  on_unknown?: 'drop' | 'keep';
  /**
   * `auto` (default): when the teacher is a weitiao fine-tune trained on this label set, ask in the shape of
   * its training examples (trained-prompt.ts); `instruction`: always the generic prompt listing the labels.
   */
  prompt?: 'auto' | 'instruction';
}

export interface LabelRow {
  line: number;
  values: Record<string, unknown>;
}

const norm = (s: string) => s.normalize('NFKC').trim().toLowerCase().replace(/^[\s"'“”‘’「」《》【】()（）:：.。!！,，]+|[\s"'“”‘’「」《》【】()（）.。!！,，]+$/gu, '');

function editDistance(a: string, b: string): number {
  const x = [...a];
  const y = [...b];
  let prev = Array.from({ length: y.length + 1 }, (_, j) => j);
  for (let i = 1; i <= x.length; i++) {
    const cur = [i];
    for (let j = 1; j <= y.length; j++) cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x[i - 1] === y[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[y.length];
}

export type LabelMatch = 'exact' | 'contained' | 'closest' | 'unknown';

/** The label an answer means, and how sure the mapping is. */
export function mapToLabel(answer: string, labels: readonly string[]): { label: string; match: LabelMatch } {
  const a = norm(answer);
  const exact = labels.find((l) => norm(l) === a);
  if (exact) return { label: exact, match: 'exact' };
  const contained = labels.filter((l) => norm(l) && a.includes(norm(l)));
  if (contained.length === 1) return { label: contained[0], match: 'contained' };
  let best = labels[0];
  let bestDistance = Infinity;
  for (const l of labels) {
    const d = editDistance(a, norm(l));
    if (d < bestDistance) [best, bestDistance] = [l, d];
  }
  const ratio = bestDistance / Math.max([...a].length, [...norm(best)].length, 1);
  return { label: best, match: a !== '' && ratio <= 0.5 ? 'closest' : 'unknown' };
}

/**
 * Each label's share of the probability of the answer's first token among the top_logprobs (a token
 * counts for a label when one is a prefix of the other); null without logprobs or when no top token fits.
 */
export function labelScores(answer: ChatAnswer, labels: readonly string[]): Record<string, number> | null {
  const first = answer.logprobs?.find((t) => t.token.trim() !== '');
  if (!first || first.top_logprobs.length === 0) return null;
  const scores: Record<string, number> = {};
  let sum = 0;
  for (const label of labels) {
    const l = label.trim();
    let p = 0;
    for (const alt of first.top_logprobs) {
      const t = alt.token.trim();
      if (t && (l.startsWith(t) || t.startsWith(l))) p += Math.exp(alt.logprob);
    }
    scores[label] = p;
    sum += p;
  }
  if (sum <= 0) return null;
  for (const label of labels) scores[label] = Number((scores[label] / sum).toFixed(4));
  return scores;
}

export async function readLabelRows(options: LabelOptions): Promise<LabelRow[]> {
  const source = await openSource(options.input, undefined, 'auto'); // CSV, TSV or JSONL, from the extension and content
  const rows: LabelRow[] = [];
  if (source.format === 'jsonl') {
    for await (const r of readJsonLines(options.input, source.encoding)) {
      if ('problem' in r && r.problem) throw new WeitiaoError('invalid_file', `${options.input}:${r.line}: ${r.problem.message}`, { file: options.input, line: r.line });
      const value = (r as { value?: unknown }).value;
      if (typeof value !== 'object' || value === null || Array.isArray(value)) {
        throw new WeitiaoError('invalid_file', `${options.input}:${r.line}: a row must be a JSON object / 每行须为 JSON 对象`, { file: options.input, line: r.line });
      }
      rows.push({ line: r.line, values: value as Record<string, unknown> });
    }
  } else {
    const { header, rows: records } = await readTable(options.input, source);
    if (!header) throw new WeitiaoError('invalid_file', `${options.input} is empty / 文件为空`, { file: options.input });
    for await (const r of records) rows.push({ line: r.line, values: r.values });
  }
  if (rows.length && !rows.some((r) => options.column in r.values)) {
    throw new WeitiaoError('invalid_request', `no column '${options.column}' in ${options.input} / 找不到列 '${options.column}'`, { param: 'column' });
  }
  return rows;
}

export function labelPrompt(options: LabelOptions, text: string, logprobs: boolean, trained: TrainedPrompt | null = null): ChatRequest {
  const longest = Math.max(...options.labels.map((l) => [...l].length));
  const sampling = { temperature: 0, max_tokens: Math.max(8, longest * 2 + 4), ...(logprobs ? { logprobs: true, top_logprobs: 5 } : {}) };
  if (trained) {
    // The teacher's own training shape: its system message (the instruction is not added: it never saw one) and the bare text.
    return { messages: [...(trained.system !== null ? [{ role: 'system' as const, content: trained.system }] : []), { role: 'user', content: text }], ...sampling };
  }
  const list = options.labels.join(', ');
  const system =
    `${options.instruction ? options.instruction + '\n' : ''}` +
    `Answer with exactly one of these labels and nothing else: ${list}\n请只回答以下标签之一，不要输出其他内容：${options.labels.join('、')}`;
  return {
    messages: [
      { role: 'system', content: system },
      { role: 'user', content: text },
    ],
    ...sampling,
  };
}

export function checkLabelOptions(options: LabelOptions): void {
  const labels = options.labels.map((l) => l.trim()).filter(Boolean);
  if (labels.length < 2 || new Set(labels).size !== labels.length) {
    throw new WeitiaoError('invalid_request', 'labels: give at least two distinct labels, e.g. 好评,差评 / 至少给出两个不同的标签', { param: 'labels' });
  }
}

/** The units of a labelling run (one per row) and the work that labels one; `trained`: the teacher's training prompt, if used. */
export function labelUnits(options: LabelOptions, rows: LabelRow[], teacher: TeacherClient, trained: TrainedPrompt | null = null) {
  const answerColumn = options.answer_column ?? 'label';
  let logprobs = options.logprobs ?? true;
  const has = (r: LabelRow) => r.values[answerColumn] !== undefined && String(r.values[answerColumn]).trim() !== '';
  const units: (Unit & { row: LabelRow })[] = rows.map((row) => ({
    key: `line:${row.line}`,
    row,
    planned: has(row) ? [] : [labelPrompt(options, String(row.values[options.column] ?? ''), logprobs, trained)],
  }));
  const work = async (unit: Unit, ask: (i: number, c: TeacherClient, r: ChatRequest) => Promise<ChatAnswer>): Promise<UnitOutcome> => {
    const { row } = unit as Unit & { row: LabelRow };
    if (has(row)) return { outcome: 'written', line: row.values, provenance: { source: 'input', input_line: row.line } };
    const text = String(row.values[options.column] ?? '');
    if (text.trim() === '') return { outcome: 'rejected', reason: `empty '${options.column}'`, detail: { input_line: row.line } };
    let request = labelPrompt(options, text, logprobs, trained);
    let answer: ChatAnswer;
    try {
      answer = await ask(0, teacher, request);
    } catch (err) {
      // Endpoints without logprobs (weitiao's engine backend, some proxies) refuse the field: go on without it.
      // (Its own request decides, not `logprobs`: a concurrent unit may have turned that off already.)
      if (!(err instanceof WeitiaoError && err.code === 'invalid_request' && /logprob/i.test(err.message) && request.logprobs)) throw err;
      logprobs = false;
      request = labelPrompt(options, text, false, trained);
      answer = await ask(0, teacher, request);
    }
    const { label, match } = mapToLabel(answer.content, options.labels);
    const scores = labelScores(answer, options.labels);
    const provenance = {
      source: 'teacher',
      input_line: row.line,
      teacher: teacher.describe(),
      prompt: request.messages,
      ...(trained ? { prompt_from: { training_file: trained.training_file } } : {}),
      created_at: new Date().toISOString(),
      answer: answer.content,
      label,
      match,
      confidence: scores ? scores[label] : null,
      label_scores: scores,
    };
    if (match === 'unknown' && (options.on_unknown ?? 'drop') === 'drop') {
      return { outcome: 'rejected', reason: `answer '${answer.content.slice(0, 40)}' is none of the labels`, detail: { input_line: row.line, answer: answer.content } };
    }
    return { outcome: 'written', line: { ...row.values, [answerColumn]: label }, provenance };
  };
  return { units, work };
}

export interface LabelReport {
  labelled: number;
  kept_from_input: number;
  by_label: Record<string, number>;
  by_match: Record<LabelMatch, number>;
  /** Mean confidence over teacher labels that have one; null without logprobs. */
  mean_confidence: number | null;
  /** Teacher labels with confidence below 0.6 (worth a look). */
  low_confidence: number;
}

/** What a labelling run produced, read from its provenance lines. */
export function labelReport(provenance: Record<string, unknown>[]): LabelReport {
  const r: LabelReport = { labelled: 0, kept_from_input: 0, by_label: {}, by_match: { exact: 0, contained: 0, closest: 0, unknown: 0 }, mean_confidence: null, low_confidence: 0 };
  let sum = 0;
  let counted = 0;
  for (const p of provenance) {
    if (p.source !== 'teacher') {
      r.kept_from_input++;
      continue;
    }
    r.labelled++;
    const label = String(p.label);
    r.by_label[label] = (r.by_label[label] ?? 0) + 1;
    r.by_match[p.match as LabelMatch]++;
    if (typeof p.confidence === 'number') {
      sum += p.confidence;
      counted++;
      if (p.confidence < 0.6) r.low_confidence++;
    }
  }
  if (counted) r.mean_confidence = Number((sum / counted).toFixed(4));
  return r;
}
