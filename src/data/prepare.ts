/** prepareDataset: a source file (CSV/TSV/JSONL/Excel/Parquet) to train.jsonl and validation.jsonl. */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import type { ChatExample } from '../engine/index.js';
import { WeitiaoError } from '../errors.js';
import { writeFilesAtomic } from './internal/atomic.js';
import { answerOf, checkExample, DuplicateFinder, problem } from './internal/check.js';
import { IssueList } from './internal/issues.js';
import { isArrowSource, readArrowTable } from './internal/arrow.js';
import { readParquetTable } from './internal/parquet.js';
import { detectShape, shapeToChat, type RecordShape } from './internal/shapes.js';
import { assertReadable, openSource, readJsonLines, readTable, type OpenedSource } from './internal/source.js';
import { readXlsxTable } from './internal/xlsx.js';
import { detectLabelSet, labelCounts } from './labels.js';
import { isObject, jsonValue, makeMapper, type Mapper } from './mapper.js';
import { leakageWarnings, NearDuplicateCheck, promptText } from './near-duplicates.js';
import { parseOptions, PrepareOptions, type DataDeps, type DataFormat, type Issue, type PrepareResult, type SourceFormat } from './schemas.js';
import { splitExamples } from './split.js';
import { checkLengths, tokenCounter, type Located } from './tokens.js';

/**
 * Turns a CSV/TSV/JSONL file into train.jsonl (and validation.jsonl) in OpenAI's chat format. Every
 * problem is reported at its source line; when there is any error nothing is written. Output is UTF-8
 * without BOM, Chinese unescaped, one `{"messages":[…]}` per line; both files are written atomically.
 */
export async function prepareDataset(input: PrepareOptions, deps: DataDeps = {}): Promise<PrepareResult> {
  const options = parseOptions(PrepareOptions, input);
  const file = options.input;
  await assertReadable(file, 'input');
  const arrow = options.format === 'arrow' || (options.format === undefined && isArrowSource(file));
  const binary = arrow ? 'arrow' : options.format === 'xlsx' || options.format === 'parquet' ? options.format : options.format === undefined ? /\.(xlsx|parquet)$/i.exec(file)?.[1].toLowerCase() : undefined;
  const source: { format: SourceFormat; encoding: string } = binary
    ? { format: binary as 'xlsx' | 'parquet' | 'arrow', encoding: binary }
    : await openSource(file, options.format as Exclude<DataFormat, 'xlsx'> | undefined, options.encoding);
  const issues = new IssueList(file);
  const duplicates = new DuplicateFinder(options.conflicts);
  // Compared without the user template's shared instruction (columns mode; chat lines have no template).
  const prompt = promptText(options.user);
  const nearDuplicates = new NearDuplicateCheck(file, { dedupe: options.dedupe, prompt });
  /** The object written per example: the mapped example, or a chat line as it was (keeping e.g. `name`). */
  let items: (Located & { output: unknown })[] = [];
  let rows = 0;
  /** Problems on this line are the file's, not a row's: `skip` cannot leave them out. */
  let headerLine: number | null = null;
  let mode: PrepareResult['mode'] = 'columns';

  const accept = (line: number, example: ChatExample, output: unknown) => {
    const dup = duplicates.check(example, line);
    const near = nearDuplicates.check(example, line);
    if (near && 'drop' in near) return; // dedupe: listed in `skipped` with the line kept
    if (dup || near) issues.add(line, dup ?? near!.problem);
    items.push({ line, example, output });
  };

  if (source.format === 'jsonl') {
    const hasTemplates = options.user !== undefined || options.assistant !== undefined || options.system !== undefined;
    let decided = false;
    let mapper: Mapper | null = null;
    let shape: RecordShape | null = null;
    for await (const row of readJsonLines(file, (source as OpenedSource).encoding)) {
      rows++;
      if (row.problem) {
        issues.add(row.line, row.problem);
        continue;
      }
      const value = row.value;
      if (!decided && isObject(value)) {
        decided = true;
        shape = hasTemplates ? null : detectShape(value);
        mode = shape ?? (Object.hasOwn(value, 'messages') && !hasTemplates ? 'chat' : 'columns');
        if (shape && options.label_map !== undefined) {
          throw new WeitiaoError('invalid_request', `a label map applies to CSV/TSV and plain-record JSONL, not ${shape} records / ${shape} 格式不使用标签映射`, {
            param: 'label_map',
          });
        }
        if (Object.hasOwn(value, 'messages') && hasTemplates) {
          throw new WeitiaoError(
            'invalid_request',
            `${file} is already in chat format ("messages" on line ${row.line}); templates apply to CSV/TSV and plain-record JSONL / 文件已是对话格式，无需模板`,
            { param: options.user !== undefined ? 'user' : options.assistant !== undefined ? 'assistant' : 'system', file, line: row.line },
          );
        }
        if (mode === 'columns') mapper = makeMapper(options, Object.keys(value), `${file} (keys of the record on line ${row.line})`);
      }
      if (shape) {
        // Alpaca/ShareGPT: mapped to messages, then the checks every chat example gets.
        const mapped = shapeToChat(shape, value);
        if ('problems' in mapped) {
          mapped.problems.forEach((p) => issues.add(row.line, p));
          continue;
        }
        const { example, problems } = checkExample(mapped.value);
        problems.forEach((p) => issues.add(row.line, p));
        if (example) accept(row.line, example, example);
      } else if (mapper) {
        if (!isObject(value)) {
          issues.add(row.line, problem('data_type', null, 'record is not a JSON object / 记录不是 JSON 对象'));
          continue;
        }
        const { example, problems } = mapper.map((c) => jsonValue(value, c));
        problems.forEach((p) => issues.add(row.line, p));
        if (example) accept(row.line, example, example);
      } else {
        mode = 'chat';
        if (options.label_map !== undefined) {
          throw new WeitiaoError('invalid_request', 'a label map applies to CSV/TSV and plain-record JSONL, not chat files / 对话格式文件不使用标签映射', {
            param: 'label_map',
          });
        }
        const { example, problems } = checkExample(value);
        problems.forEach((p) => issues.add(row.line, p));
        if (example) accept(row.line, example, value);
      }
    }
  } else {
    const table =
      source.format === 'xlsx'
        ? await readXlsxTable(file, { sheet: options.sheet, header_row: options.header_row })
        : source.format === 'parquet'
          ? await readParquetTable(file)
          : source.format === 'arrow'
            ? await readArrowTable(file, { signal: deps.signal })
          : await readTable(file, source as OpenedSource);
    if (table.header) {
      headerLine = table.header.line;
      table.header.problems.forEach((p) => issues.add(table.header!.line, p));
      const mapper = makeMapper(options, table.header.columns, `the header of ${file}`);
      if (table.header.problems.length === 0) {
        for await (const row of table.rows) {
          rows++;
          if (row.problems.length) {
            row.problems.forEach((p) => issues.add(row.line, p));
            continue;
          }
          const { example, problems } = mapper.map((c) => ({ value: row.values[c] }));
          problems.forEach((p) => issues.add(row.line, p));
          if (example) accept(row.line, example, example);
        }
      }
    }
  }
  if (rows === 0 && issues.errors.length === 0) {
    issues.add(null, problem('empty_file', null, `${file} has no ${source.format === 'jsonl' ? 'lines' : 'rows'} / 文件中没有数据`));
  }

  const counter = tokenCounter(options, deps);
  if (counter && items.length) await checkLengths(items, counter, options.max_length, issues, undefined, options.long_examples);

  let { errors, warnings } = issues.sorted();
  let skipped: Issue[] = [];
  let skippedRows = 0;
  const tooLong = (e: Issue) => e.code === 'too_many_tokens';
  const skippable = (e: Issue) =>
    tooLong(e) ? options.long_examples === 'skip' || (options.on_invalid === 'skip' && options.long_examples !== 'error') : options.on_invalid === 'skip' && e.line !== null && e.line !== headerLine;
  if (errors.some(skippable)) {
    skipped = errors.filter(skippable);
    errors = errors.filter((e) => !skippable(e));
    const badLines = new Set(skipped.map((e) => e.line));
    skippedRows = badLines.size;
    if (errors.length === 0) {
      // A row is one example: any error on its line leaves the whole row out (a conflicting duplicate too).
      items = items.filter((i) => !badLines.has(i.line));
      if (items.length === 0) {
        errors = [
          { file, line: null, field: null, code: 'empty_file', severity: 'error',
            message: `no valid rows left after skipping ${skippedRows} / 跳过 ${skippedRows} 行后没有有效数据` }, // prettier-ignore
        ];
      }
    }
  }
  skipped.push(...nearDuplicates.dropped);
  skippedRows += nearDuplicates.dropped.length;
  const answers = items.map((i) => answerOf(i.example));
  const labelSet = detectLabelSet(answers);
  const stratified = options.stratify === 'auto' ? labelSet !== null : options.stratify;
  const result: PrepareResult = {
    input: file,
    format: source.format,
    encoding: source.encoding,
    mode,
    rows,
    examples: items.length,
    skipped_rows: skippedRows,
    skipped,
    label_set: labelSet,
    stratified,
    seed: options.seed,
    validation_fraction: options.validation,
    written: false,
    train: null,
    validation: null,
    errors,
    warnings,
  };
  if (errors.length) return result;

  const split = splitExamples(answers, { validation: options.validation, seed: options.seed, stratify: stratified });
  result.warnings.push(...leakageWarnings(file, split.train.map((i) => items[i]), split.validation.map((i) => items[i]), prompt));
  const trainPath = path.resolve(options.output_dir, options.train_file);
  const validationPath = path.resolve(options.output_dir, options.validation_file);
  const lines = (indices: number[]) => indices.map((i) => JSON.stringify(items[i].output) + '\n');
  const files = [{ path: trainPath, chunks: lines(split.train) }];
  if (split.validation.length) files.push({ path: validationPath, chunks: lines(split.validation) });
  try {
    await mkdir(path.resolve(options.output_dir), { recursive: true });
    await writeFilesAtomic(files);
  } catch (err) {
    throw new WeitiaoError('internal_error', `cannot write the prepared files: ${err instanceof Error ? err.message : String(err)} / 无法写入文件`, {
      cause: err,
      file: (err as { path?: string }).path,
    });
  }
  const part = (file: string, indices: number[]) => ({
    file,
    examples: indices.length,
    label_counts: labelCounts(
      indices.map((i) => answers[i]),
      labelSet,
    ),
  });
  result.written = true;
  result.train = part(trainPath, split.train);
  result.validation = split.validation.length ? part(validationPath, split.validation) : null;
  return result;
}
