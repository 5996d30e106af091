/**
 * What an upload goes through once, before it is stored: its text is re-encoded to UTF-8 without BOM
 * (GBK/GB18030, UTF-16 LE/BE with BOM, UTF-8 with BOM), so nothing after it (validation, the engine) ever
 * sees another encoding; then, when asked, it is checked the way `weitiao data validate` checks (chat or
 * preference JSONL: every line; plain-record JSONL: JSON objects; CSV/TSV: syntax and field counts).
 * Streams both passes; memory stays bounded whatever the file's size.
 */
import { createWriteStream } from 'node:fs';
import { open, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ValidationReport } from '../schemas.js';
import { validateChatFile } from '../validate.js';
import { isObjectValue, problem } from './check.js';
import { decodeFile, detectEncoding, type Encoding } from './encoding.js';
import { IssueList, MAX_REPORTED_ISSUES, validationCancelled } from './issues.js';
import { validatePreferenceFile } from './preference.js';
import { validateReinforcementFile } from '../reinforcement.js';
import { guessFormat, readJsonLines, readTable, type DataFormat } from './source.js';

export interface UploadCheck {
  /** The encoding the file came in; it is UTF-8 (no BOM) now. */
  original_encoding: Encoding | 'utf8-bom';
  normalized: boolean;
  /** Size after normalisation. */
  bytes: number;
  format: DataFormat;
  /** What the lines are: chat examples, preference pairs, plain records (for prepare), or a table. */
  kind: 'chat' | 'preference' | 'reinforcement' | 'records' | 'table';
  /** Present when checked; issues name the upload's own filename, never a server path. */
  report: ValidationReport | null;
}

/**
 * Re-encodes `file` to UTF-8 in place and, with `check`, validates it. `filename` is the name the user
 * gave (it decides the format by extension and is the `file` of every issue).
 */
export async function normalizeUpload(file: string, options: { filename: string; check: boolean; signal?: AbortSignal }): Promise<UploadCheck> {
  const { filename, signal } = options;
  const bom = await hasUtf8Bom(file);
  const encoding = await detectEncoding(file);
  if (signal?.aborted) throw validationCancelled(filename);
  const normalized = bom || encoding !== 'utf8';
  if (normalized) await reencode(file, encoding);

  const format = await guessFormat(withExtension(file, filename), 'utf8').catch(() => 'jsonl' as const);
  const kind = format === 'jsonl' ? await jsonlKind(file) : 'table';
  let report: ValidationReport | null = null;
  if (options.check) {
    if (kind === 'chat') report = await validateChatFile(file, { encoding: 'utf8' }, { signal });
    else if (kind === 'preference') report = await validatePreferenceFile(file, { encoding: 'utf8' }, { signal });
    else if (kind === 'reinforcement') report = await validateReinforcementFile(file, {}); // the grader's fields: at job creation
    else report = await checkRecords(file, format, kind, signal);
    for (const issue of [...report.errors, ...report.warnings]) {
      issue.file = filename;
      issue.message = issue.message.replaceAll(file, filename); // e.g. empty_file names the file
    }
    report.file = filename;
    report.encoding = bom ? 'utf8-bom' : encoding;
  }
  return { original_encoding: bom ? 'utf8-bom' : encoding, normalized, bytes: (await stat(file)).size, format, kind, report };
}

async function hasUtf8Bom(file: string): Promise<boolean> {
  const fh = await open(file, 'r');
  try {
    const head = Buffer.alloc(3);
    const { bytesRead } = await fh.read(head, 0, 3, 0);
    return bytesRead === 3 && head[0] === 0xef && head[1] === 0xbb && head[2] === 0xbf;
  } finally {
    await fh.close();
  }
}

/** Decodes (BOM dropped) and writes UTF-8 next to the file, then renames it over the original. */
async function reencode(file: string, encoding: Encoding): Promise<void> {
  const temp = `${file}.utf8-${process.pid}`;
  try {
    await pipeline(Readable.from(decodeFile(file, encoding)), createWriteStream(temp, { flags: 'wx', encoding: 'utf8' }));
    await rename(temp, file);
  } catch (err) {
    await rm(temp, { force: true });
    throw err;
  }
}

/** guessFormat decides by the extension: the stored temp file may not carry the user's. */
function withExtension(file: string, filename: string): string {
  const ext = path.extname(filename).toLowerCase();
  return ['.csv', '.tsv', '.tab', '.jsonl', '.ndjson', '.json'].includes(ext) ? filename : file;
}

/** The first JSON object line decides: `messages` → chat (reinforcement when the last message is the user's), `input`/`preferred_output` → preference, else records. */
async function jsonlKind(file: string): Promise<UploadCheck['kind']> {
  for await (const row of readJsonLines(file, 'utf8')) {
    if (!isObjectValue(row.value)) continue;
    if (Object.hasOwn(row.value, 'messages')) {
      // Reinforcement prompts end with the user's message (the model answers it); chat examples with the answer.
      const messages = row.value.messages;
      return Array.isArray(messages) && (messages.at(-1) as { role?: unknown } | undefined)?.role === 'user' ? 'reinforcement' : 'chat';
    }
    if (Object.hasOwn(row.value, 'preferred_output') || Object.hasOwn(row.value, 'input')) return 'preference';
    return 'records';
  }
  return 'chat'; // nothing readable: the chat validator reports why, line by line
}

/** Plain-record JSONL (one object per line) and CSV/TSV (syntax, field counts), before prepare maps them. */
async function checkRecords(file: string, format: DataFormat, kind: UploadCheck['kind'], signal?: AbortSignal): Promise<ValidationReport> {
  const issues = new IssueList(file, MAX_REPORTED_ISSUES);
  let examples = 0;
  let valid = 0;
  if (kind === 'records') {
    for await (const row of readJsonLines(file, 'utf8')) {
      if (signal?.aborted) throw validationCancelled(file);
      examples++;
      if (row.problem) issues.add(row.line, row.problem);
      else if (!isObjectValue(row.value)) issues.add(row.line, problem('data_type', null, 'record is not a JSON object / 记录不是 JSON 对象'));
      else valid++;
    }
  } else {
    const table = await readTable(file, { format, encoding: 'utf8' });
    if (table.header) {
      table.header.problems.forEach((p) => issues.add(table.header!.line, p));
      for await (const row of table.rows) {
        if (signal?.aborted) throw validationCancelled(file);
        examples++;
        row.problems.forEach((p) => issues.add(row.line, p));
        if (row.problems.length === 0) valid++;
      }
    }
  }
  if (examples === 0) issues.add(null, problem('empty_file', null, `${file} has no ${kind === 'table' ? 'rows' : 'lines'} / 文件中没有数据`));
  const { errors, warnings } = issues.sorted();
  return {
    file,
    encoding: 'utf8',
    examples,
    valid_examples: valid,
    errors,
    warnings,
    error_count: issues.errorCount,
    warning_count: issues.warningCount,
    label_set: null,
  };
}
