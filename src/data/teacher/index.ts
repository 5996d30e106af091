/**
 * Data made with a teacher model (issue 18): label a column, synthesize examples, make DPO preference
 * pairs — through any OpenAI-compatible endpoint. Every run is durable (run.ts): answers are journaled
 * as they arrive, a restart requests nothing twice, and each output line has a provenance line.
 */
import { WeitiaoError } from '../../errors.js';
import { readChatExamples } from './chat-file.js';
import { TeacherClient, type TeacherConfigInput } from './endpoint.js';
import { checkLabelOptions, labelUnits, readLabelRows, type LabelOptions } from './label.js';
import { pairsPlan, type PairsOptions } from './pairs.js';
import { TeacherRun, type Estimate, type RunPaths, type RunProgress, type Unit } from './run.js';
import { checkSynthesizeOptions, synthesisPlan, type SynthesizeOptions } from './synthesize.js';
import { trainedPrompt } from './trained-prompt.js';

export { TeacherClient, TeacherConfig, DEFAULT_API_KEY_ENV, retryAfterMs, type TeacherConfigInput, type ChatAnswer } from './endpoint.js';
export { mapToLabel, labelScores, labelReport, type LabelOptions, type LabelReport } from './label.js';
export { NearDuplicateIndex, jaccard, shingleHashes, similarity } from '../internal/near-duplicates.js';
export { runPaths, estimateTokens, rejectedUnits, provenanceLines, type Estimate, type RunProgress } from './run.js';
export { DEFAULT_PERSONAS, parseGenerated, type SynthesizeOptions } from './synthesize.js';
export { trainedPrompt, type TrainedPrompt } from './trained-prompt.js';

export interface RunControls {
  output: string;
  teacher: TeacherConfigInput;
  /** Aborting it cancels requests in flight (their answers are lost and asked again on resume). */
  signal?: AbortSignal;
  /** Aborting it takes no new work but lets requests in flight finish and be journaled (a clean stop). */
  stop?: AbortSignal;
  onProgress?: (p: RunProgress) => void;
  /** Shown the cost estimate before any request; returning false stops there (a dry run). */
  onEstimate?: (e: Estimate) => boolean | Promise<boolean>;
}

export interface RunSummary {
  files: RunPaths;
  estimate: Estimate;
  progress: RunProgress | null;
  /** Requests this invocation sent (answers journaled by an earlier one are not asked again). */
  requests_sent: number;
  retries: number;
  started: boolean;
}

async function drive(
  run: TeacherRun,
  clients: TeacherClient[],
  units: Unit[],
  work: Parameters<TeacherRun['run']>[1],
  c: RunControls,
  accept?: (line: unknown) => string | null,
): Promise<RunSummary> {
  const estimate = run.estimate(units);
  const summary: RunSummary = { files: run.paths, estimate, progress: null, requests_sent: 0, retries: 0, started: false };
  if (c.onEstimate && !(await c.onEstimate(estimate))) return summary;
  summary.started = true;
  try {
    summary.progress = await run.run(units, work, { concurrency: clients[0].config.concurrency, signal: c.signal, stop: c.stop, onProgress: c.onProgress, accept });
  } finally {
    summary.requests_sent = run.requestsThisRun;
    summary.retries = clients.reduce((n, cl) => n + cl.retriesDone, 0);
  }
  return summary;
}

/** Fills `answer_column` of every row that lacks it; output rows keep all input columns (JSONL). */
export async function labelFile(options: LabelOptions, c: RunControls): Promise<RunSummary> {
  checkLabelOptions(options);
  const teacher = new TeacherClient(c.teacher);
  const rows = await readLabelRows(options);
  const trained = (options.prompt ?? 'auto') === 'auto' ? await trainedPrompt(teacher, options.labels, c.signal) : null;
  // The prompt used is part of the run's settings: a resume must ask the same way (absent = the generic prompt, as before).
  const run = new TeacherRun(c.output, { command: 'label', options, teacher: teacher.describe(), ...(trained ? { trained_prompt: trained } : {}) });
  const { units, work } = labelUnits(options, rows, teacher, trained);
  return drive(run, [teacher], units, work, c);
}

/** Writes `n` new chat examples (fewer if max_requests runs out) from a task and seed examples. */
export async function synthesizeFile(options: Omit<SynthesizeOptions, 'seeds'> & { seeds_file: string }, c: RunControls): Promise<RunSummary> {
  const seeds = (await readChatExamples(options.seeds_file, { needAssistant: true })).map((s) => s.example);
  const o: SynthesizeOptions = { ...options, seeds };
  checkSynthesizeOptions(o);
  const teacher = new TeacherClient(c.teacher);
  const plan = synthesisPlan(o, teacher);
  const { seeds_file: _, ...settings } = options;
  const run = new TeacherRun(c.output, { command: 'synthesize', options: settings, seeds, teacher: teacher.describe() });
  for (const line of run.writtenLines) plan.remember(line);
  // Rounds: numbers 0..n-1 first, then one new number per rejected answer, until n are kept or the cap.
  let planned = Math.min(o.n, plan.maxRequests);
  let summary: RunSummary | null = null;
  let firstEstimate: Estimate | null = null;
  let sent = 0;
  for (;;) {
    const units = Array.from({ length: planned }, (_, i) => plan.unit(i));
    const round = await drive(run, [teacher], units, plan.work, summary ? { ...c, onEstimate: undefined } : c, plan.accept);
    if (!round.started) return round;
    sent = run.requestsThisRun;
    firstEstimate ??= round.estimate;
    summary = { ...round, estimate: firstEstimate };
    const kept = run.writtenLines.length;
    if (kept >= o.n || planned >= plan.maxRequests) break;
    planned = Math.min(plan.maxRequests, planned + (o.n - kept));
  }
  return { ...summary!, requests_sent: sent };
}

/** Preference pairs: the teacher's answer preferred over the student's, for each prompt of `input`. */
export async function pairsFile(
  options: PairsOptions & { input: string; student: { model: string; base_url?: string; api_key_env?: string } },
  c: RunControls,
): Promise<RunSummary> {
  const prompts = await readChatExamples(options.input, { needAssistant: false });
  const teacher = new TeacherClient(c.teacher);
  const student = new TeacherClient({ ...c.teacher, model: options.student.model, base_url: options.student.base_url ?? c.teacher.base_url, api_key_env: options.student.api_key_env ?? c.teacher.api_key_env });
  if (teacher.describe().model === student.describe().model && teacher.describe().base_url === student.describe().base_url) {
    throw new WeitiaoError('invalid_request', 'student and teacher are the same model at the same endpoint / 学生模型与教师模型相同', { param: 'student' });
  }
  const { input: _, ...settings } = options;
  const run = new TeacherRun(c.output, { command: 'pairs', options: settings, input_lines: prompts.length, teacher: teacher.describe() });
  const { units, work } = pairsPlan(prompts, options, teacher, student);
  return drive(run, [teacher, student], units, work, c);
}
