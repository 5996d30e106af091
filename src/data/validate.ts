/** validateChatFile: every problem of a chat-format JSONL file, read as a stream. */
import { answerOf, checkExample, DuplicateFinder, problem } from './internal/check.js';
import { resolveEncoding } from './internal/encoding.js';
import { IssueList, MAX_REPORTED_ISSUES, validationCancelled } from './internal/issues.js';
import { assertReadable, readJsonLines } from './internal/source.js';
import { LabelSetDetector } from './labels.js';
import { NEAR_DUPLICATE_STREAM_LIMITS, NearDuplicateCheck } from './near-duplicates.js';
import { MAX_TOKEN_COUNTS, parseOptions, ValidateOptions, type DataDeps, type ValidationReport } from './schemas.js';
import { checkLengths, tokenCounter, TOKEN_BATCH_CHARS, TOKEN_BATCH_EXAMPLES, type Located } from './tokens.js';

/**
 * Checks a chat-format JSONL file and reports every problem (OpenAI cookbook categories, weights,
 * duplicates, conflicting answers, near-duplicate prompts as `data prepare` finds them, and with a model
 * the token length). Errors mean the file must not be
 * trained on; warnings are for a person to look at.
 */
export async function validateChatFile(file: string, options: ValidateOptions = {}, deps: DataDeps = {}): Promise<ValidationReport> {
  const opts = parseOptions(ValidateOptions, options);
  const { signal } = deps;
  await assertReadable(file, 'file');
  const encoding = await resolveEncoding(file, opts.encoding);
  const issues = new IssueList(file, MAX_REPORTED_ISSUES);
  const duplicates = new DuplicateFinder(opts.conflicts);
  const nearDuplicates = new NearDuplicateCheck(file, { bounds: NEAR_DUPLICATE_STREAM_LIMITS });
  const labels = new LabelSetDetector();
  const counter = tokenCounter(opts, deps);
  let tokenCounts: number[] | null = counter ? [] : null;
  let maxLength: number | undefined;
  let examples = 0;
  let valid = 0;

  // Valid examples wait here for the tokenizer, a batch at a time: never the whole file.
  let batch: Located[] = [];
  let batchChars = 0;
  const countBatch = async () => {
    if (!counter || batch.length === 0) return;
    const { counts, max_length } = await checkLengths(batch, counter, opts.max_length, issues, signal);
    maxLength = max_length;
    if (tokenCounts && tokenCounts.length + counts.length <= MAX_TOKEN_COUNTS) for (const n of counts) tokenCounts.push(n);
    else tokenCounts = null;
    batch = [];
    batchChars = 0;
  };

  for await (const row of readJsonLines(file, encoding)) {
    if (signal?.aborted) throw validationCancelled(file);
    examples++;
    if (row.problem) {
      issues.add(row.line, row.problem);
      continue;
    }
    const { example, problems } = checkExample(row.value);
    problems.forEach((p) => issues.add(row.line, p));
    if (!example) continue;
    const dup = duplicates.check(example, row.line);
    // Every example goes into the near-duplicate index; an exact or conflicting duplicate is reported once, as such.
    const near = nearDuplicates.check(example, row.line);
    if (near && 'problem' in near && near.problem.code === 'near_duplicate_check_limited') issues.add(null, near.problem); // names its line
    else if (dup) issues.add(row.line, dup);
    else if (near && 'problem' in near) issues.add(row.line, near.problem);
    labels.add(answerOf(example));
    valid++;
    if (counter) {
      batch.push({ line: row.line, example });
      for (const m of example.messages) batchChars += m.content.length;
      if (batch.length >= TOKEN_BATCH_EXAMPLES || batchChars >= TOKEN_BATCH_CHARS) await countBatch();
    }
  }
  await countBatch();
  if (signal?.aborted) throw validationCancelled(file);
  if (examples === 0) issues.add(null, problem('empty_file', null, `${file} has no examples / 文件中没有样本`));

  const report: ValidationReport = {
    file,
    encoding,
    examples,
    valid_examples: valid,
    errors: [],
    warnings: [],
    label_set: labels.result(),
  };
  if (counter && valid) {
    if (tokenCounts) report.token_counts = tokenCounts;
    report.max_length = maxLength;
  }
  Object.assign(report, issues.sorted(), { error_count: issues.errorCount, warning_count: issues.warningCount });
  return report;
}
