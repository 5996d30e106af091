/**
 * OpenAI's reinforcement fine-tuning format, one prompt per line: chat `messages` whose last message is the
 * user's (the model answers it), plus any fields the job's grader reads as `{{item.<field>}}`:
 *
 *     {"messages": [{"role": "user", "content": "送餐很快，味道不错"}], "label": "好评"}
 *
 * Checked line by line (streamed, bounded memory), each problem named `file:line: field`, a field a grader
 * template refers to and a line lacks included. The report has ValidationReport's shape, so job creation treats
 * it as the chat and preference reports.
 */
import { createReadStream } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import type { Issue, ValidationReport } from './schemas.js';

const ROLES = new Set(['system', 'developer', 'user', 'assistant', 'tool']);
const MAX_REPORTED = 50;
const ITEM_REFERENCE = /\{\{\s*item\.([^}\s]+)\s*\}\}/g;

/** Every `item.…` path a grader's templates read (any string in its JSON), e.g. `label`, `answer.text`, `choices[0]`. */
export function graderItemFields(grader: unknown): string[] {
  const found = new Set<string>();
  const walk = (value: unknown): void => {
    if (typeof value === 'string') for (const m of value.matchAll(ITEM_REFERENCE)) found.add(m[1]);
    else if (Array.isArray(value)) value.forEach(walk);
    else if (value && typeof value === 'object') Object.values(value).forEach(walk);
  };
  walk(grader);
  return [...found];
}

/** Whether `item` holds the dotted/indexed path `field` (`a.b`, `a[0].b`). */
function hasPath(item: unknown, field: string): boolean {
  let at: unknown = item;
  for (const key of field.split(/\.|\[(\d+)\]/).filter((k) => k !== undefined && k !== '')) {
    if (at === null || typeof at !== 'object' || !(key in (at as object))) return false;
    at = (at as Record<string, unknown>)[key];
  }
  return true;
}

/** The problems of one line (already JSON-parsed), as [field, code, message]. */
function lineProblems(record: unknown, itemFields: string[]): [string, string, string][] {
  if (!record || typeof record !== 'object' || Array.isArray(record)) return [['', 'not_an_object', 'a line must be a JSON object / 每行必须是 JSON 对象']];
  const messages = (record as { messages?: unknown }).messages;
  if (!Array.isArray(messages) || messages.length === 0) return [['messages', 'missing_messages', 'messages must be a non-empty array / messages 必须是非空数组']];
  const out: [string, string, string][] = [];
  messages.forEach((m, i) => {
    const role = (m as { role?: unknown })?.role;
    if (typeof role !== 'string' || !ROLES.has(role)) out.push([`messages[${i}].role`, 'invalid_role', `unrecognized role ${JSON.stringify(role)} / 无法识别的角色`]);
    if (typeof (m as { content?: unknown })?.content !== 'string') out.push([`messages[${i}].content`, 'invalid_content', 'content must be a string / content 必须是字符串']);
  });
  const last = messages.length - 1;
  if ((messages[last] as { role?: unknown })?.role !== 'user') {
    out.push([`messages[${last}].role`, 'last_not_user', 'the last message must be the user\'s: the model answers it / 最后一条消息必须来自 user']);
  }
  for (const field of itemFields) {
    if (!hasPath(record, field)) out.push([field, 'missing_item_field', `the grader reads {{item.${field}}} and this line has no "${field}" / 评分器引用的字段缺失`]);
  }
  return out;
}

/** Validates a reinforcement JSONL file against the format and the fields `grader` reads. */
export async function validateReinforcementFile(file: string, grader: unknown): Promise<ValidationReport> {
  const name = path.basename(file);
  const itemFields = graderItemFields(grader);
  const errors: Issue[] = [];
  let examples = 0;
  let valid = 0;
  let errorCount = 0;
  let number = 0;
  const lines = createInterface({ input: createReadStream(file, { encoding: 'utf8' }), crlfDelay: Infinity });
  for await (const raw of lines) {
    number += 1;
    const line = number === 1 ? raw.replace(/^\uFEFF/, '') : raw;
    if (!line.trim()) continue;
    examples += 1;
    let problems: [string, string, string][];
    try {
      problems = lineProblems(JSON.parse(line), itemFields);
    } catch (err) {
      problems = [['', 'invalid_json', `invalid JSON: ${(err as Error).message} / JSON 格式错误`]];
    }
    if (!problems.length) valid += 1;
    errorCount += problems.length;
    for (const [field, code, message] of problems) {
      if (errors.length < MAX_REPORTED) errors.push({ file: name, line: number, field: field || null, code, severity: 'error', message });
    }
  }
  if (!examples) {
    errorCount += 1;
    errors.push({ file: name, line: null, field: null, code: 'empty_file', severity: 'error', message: 'the file has no prompts / 文件中没有样本' });
  }
  return { file: name, encoding: 'utf-8', examples, valid_examples: valid, errors, warnings: [], label_set: null, error_count: errorCount, warning_count: 0 };
}
