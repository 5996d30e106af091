/**
 * Data preparation: read a user's CSV/TSV/JSONL (UTF-8, GBK/GB18030, UTF-16), map columns to chat
 * turns, check every example, split reproducibly and write OpenAI chat fine-tuning JSONL atomically.
 *
 * ```ts
 * const result = await prepareDataset({
 *   input: 'waimai_10k.csv', output_dir: 'out',
 *   system: '你是一位外卖评论好评差评评论专家。', user: '{review}', assistant: '{label}',
 *   label_map: '1=好评,0=差评', validation: 0.3, seed: 100,
 * });
 * if (result.errors.length) process.exitCode = 3; // nothing was written
 * ```
 * Data problems never throw: they come back as `Issue`s (file, line, field, code, bilingual message),
 * all of them, so a person can fix a file in one go. Bad options throw `invalid_request`, a missing
 * file `not_found`.
 */
// The one entry module of src/data: every service and type other domains use, re-exported from the
// modules that hold them (no module inside src/data imports this file).

export { MAX_REPORTED_ISSUES, validationCancelled } from './internal/issues.js';
/** Validation and upload checks off the event loop (worker thread), cancellable. */
export { IN_PROCESS_MAX_BYTES, runValidationTask, type ThreadTask } from './internal/thread.js';
export type { UploadCheck } from './internal/upload.js';

export { writeFileAtomic, writeFilesAtomic, type AtomicFile } from './internal/atomic.js';
export { detectEncoding } from './internal/encoding.js';
export { mulberry32 } from './internal/random.js';
/** OpenAI's preference format (DPO): `{input: {messages}, preferred_output, non_preferred_output}` per line. */
export { checkPreferencePair, validatePreferenceFile } from './internal/preference.js';
/** Readers for source files, exactly as prepare reads them (the console's preview uses them). */
export { openSource, readJsonLines, readTable, type OpenedSource, type TableRow, type JsonRow } from './internal/source.js';

export {
  DataFormat, DatasetStats, Encoding, Issue, MAX_TOKEN_COUNTS, PrepareOptions, PrepareResult, SourceFormat, StatsOptions,
  ValidateOptions, ValidationReport, type DataDeps, type TokenCounter, type TokenCounts,
} from './schemas.js';
export { engineTokenCounter } from './tokens.js';
export { detectLabelSet, LABEL_SET_RULE, LabelSetDetector, parseLabelMap } from './labels.js';
export { splitExamples } from './split.js';
export { formatIssue, reportError } from './report.js';
export { jsonValue, makeMapper } from './mapper.js';
export { prepareDataset } from './prepare.js';
export { validateChatFile } from './validate.js';
export { datasetStats } from './stats.js';
