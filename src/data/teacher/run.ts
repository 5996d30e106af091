/**
 * A durable teacher run. Three files beside each other:
 *   OUT                     the data (OpenAI format only, one example per line)
 *   OUT.provenance.jsonl    one line per line of OUT: teacher, prompt, time (the validator never reads it)
 *   OUT.state.jsonl         the journal: the run's settings, every teacher answer received, every unit's outcome
 * Every answer is journaled the moment it arrives and a unit's line is appended as soon as it is done, so
 * a restart (after Ctrl-C or SIGKILL) replays answers from the journal and sends no request twice. A
 * unit whose line was written but whose outcome was not journaled (killed between two appends) has its
 * extra lines cut on restart and is re-assembled from journaled answers, again without a request.
 */
import { appendFileSync, existsSync, openSync, closeSync, readFileSync, truncateSync, fsyncSync } from 'node:fs';
import { WeitiaoError } from '../../errors.js';
import type { ChatAnswer, ChatMessage, ChatRequest, TeacherClient } from './endpoint.js';

export interface RunPaths {
  output: string;
  provenance: string;
  state: string;
}

export function runPaths(output: string): RunPaths {
  return { output, provenance: `${output}.provenance.jsonl`, state: `${output}.state.jsonl` };
}

export type UnitOutcome =
  | { outcome: 'written'; line: unknown; provenance: Record<string, unknown> }
  | { outcome: 'rejected'; reason: string; detail?: Record<string, unknown> };

export interface Unit {
  key: string;
  /** The requests this unit will make, for the cost estimate. */
  planned: ChatRequest[];
}

/** How a unit asks for answers: `ask(requestKey, client, body)` returns the journaled answer if there is one. */
export type Ask = (requestKey: string, client: TeacherClient, request: ChatRequest) => Promise<ChatAnswer>;

export interface RunProgress {
  done: number;
  total: number;
  written: number;
  rejected: number;
  requests: number;
}

export interface Estimate {
  units: number;
  units_done: number;
  requests: number;
  prompt_tokens_estimated: number;
  completion_tokens_max: number;
}

/** Rough token count without a tokenizer: a CJK character is about one token, other text about four characters. */
export function estimateTokens(text: string): number {
  const cjk = text.match(/[\u3000-\u9fff\uf900-\ufaff\uff00-\uffef]/gu)?.length ?? 0;
  return cjk + Math.ceil((text.length - cjk) / 4);
}

function messagesTokens(messages: ChatMessage[]): number {
  return messages.reduce((n, m) => n + 4 + estimateTokens(m.content), 2);
}

interface StateLine {
  t: 'run' | 'answer' | 'unit';
  key?: string;
  settings?: unknown;
  answer?: ChatAnswer;
  outcome?: 'written' | 'rejected';
  reason?: string;
}

/** Complete JSON lines of a file; a torn last line (the process died mid-write) is cut off the file. */
function readLines(file: string): unknown[] {
  if (!existsSync(file)) return [];
  const text = readFileSync(file, 'utf8');
  const end = text.lastIndexOf('\n') + 1;
  if (end < Buffer.byteLength(text)) truncateSync(file, Buffer.byteLength(text.slice(0, end)));
  return text
    .slice(0, end)
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l));
}

/** Keeps the first `n` lines of a file (the rest belonged to a unit whose outcome was never journaled). */
function keepLines(file: string, n: number): void {
  if (!existsSync(file)) return;
  const text = readFileSync(file, 'utf8');
  let at = 0;
  for (let i = 0; i < n; i++) at = text.indexOf('\n', at) + 1;
  if (Buffer.byteLength(text.slice(0, at)) < Buffer.byteLength(text)) truncateSync(file, Buffer.byteLength(text.slice(0, at)));
}

function append(file: string, value: unknown): void {
  appendFileSync(file, JSON.stringify(value) + '\n');
}

export class TeacherRun {
  readonly paths: RunPaths;
  private readonly answers = new Map<string, ChatAnswer>();
  private readonly outcomes = new Map<string, 'written' | 'rejected'>();
  /** Lines already in OUT, in order (synthesis rebuilds its near-duplicate index from them). */
  readonly writtenLines: unknown[] = [];
  requestsThisRun = 0;

  /** Opens (or starts) the run at `output`; `settings` must equal the journaled ones to resume. */
  constructor(output: string, settings: unknown) {
    this.paths = runPaths(output);
    const fresh = !existsSync(this.paths.state);
    if (fresh && existsSync(output)) {
      throw new WeitiaoError('conflict', `${output} exists and has no run state ${this.paths.state}; choose another output / 输出文件已存在且不是可续跑的运行`, { param: 'output' });
    }
    if (fresh) {
      append(this.paths.state, { t: 'run', settings });
      return;
    }
    const state = readLines(this.paths.state) as StateLine[];
    const head = state[0];
    if (head?.t !== 'run' || JSON.stringify(head.settings) !== JSON.stringify(settings)) {
      throw new WeitiaoError(
        'conflict',
        `${output} belongs to a run with other settings (${this.paths.state}); resume with the same command, or choose another output / 该输出属于设置不同的运行，请用相同命令续跑或换输出文件`,
        { param: 'output' },
      );
    }
    for (const s of state) {
      if (s.t === 'answer' && s.key && s.answer) this.answers.set(s.key, s.answer);
      if (s.t === 'unit' && s.key && s.outcome) this.outcomes.set(s.key, s.outcome);
    }
    const written = [...this.outcomes.values()].filter((o) => o === 'written').length;
    readLines(this.paths.output);
    readLines(this.paths.provenance);
    keepLines(this.paths.output, written);
    keepLines(this.paths.provenance, written);
    this.writtenLines.push(...readLines(this.paths.output));
    if (this.writtenLines.length !== written) {
      throw new WeitiaoError('conflict', `${output} has ${this.writtenLines.length} lines but its run state records ${written}: the file was edited / 输出文件被改动过`, { param: 'output' });
    }
  }

  isDone(key: string): boolean {
    return this.outcomes.has(key);
  }

  /** Requests not yet answered, tokens estimated from the planned prompts; completion at most max_tokens each. */
  estimate(units: Unit[]): Estimate {
    const e: Estimate = { units: units.length, units_done: 0, requests: 0, prompt_tokens_estimated: 0, completion_tokens_max: 0 };
    for (const u of units) {
      if (this.isDone(u.key)) {
        e.units_done++;
        continue;
      }
      u.planned.forEach((r, i) => {
        if (this.answers.has(`${u.key}#${i}`)) return;
        e.requests++;
        e.prompt_tokens_estimated += messagesTokens(r.messages);
        e.completion_tokens_max += r.max_tokens ?? 0;
      });
    }
    return e;
  }

  /**
   * Runs every unit not yet done, `concurrency` at a time (the client caps requests on its own too).
   * `work` asks through `ask`; `accept` (called in completion order, synchronously before the append)
   * may still reject a finished line, e.g. as a near duplicate of one already written.
   */
  async run(
    units: Unit[],
    work: (unit: Unit, ask: (index: number, client: TeacherClient, request: ChatRequest) => Promise<ChatAnswer>) => Promise<UnitOutcome>,
    options: { concurrency: number; signal?: AbortSignal; stop?: AbortSignal; onProgress?: (p: RunProgress) => void; accept?: (line: unknown) => string | null },
  ): Promise<RunProgress> {
    const pending = units.filter((u) => !this.isDone(u.key));
    const progress: RunProgress = {
      done: units.length - pending.length,
      total: units.length,
      written: units.filter((u) => this.outcomes.get(u.key) === 'written').length,
      rejected: units.filter((u) => this.outcomes.get(u.key) === 'rejected').length,
      requests: 0,
    };
    options.onProgress?.({ ...progress });
    const askFor = (unit: Unit) => async (index: number, client: TeacherClient, request: ChatRequest) => {
      const key = `${unit.key}#${index}`;
      const cached = this.answers.get(key);
      if (cached) return cached;
      const answer = await client.chat(request, options.signal);
      this.answers.set(key, answer);
      append(this.paths.state, { t: 'answer', key, answer });
      this.requestsThisRun++;
      progress.requests++;
      return answer;
    };
    let next = 0;
    let failure: { error: unknown } | null = null;
    // Units finish out of order; lines are committed in input order (answers are journaled at once, so
    // a unit waiting here for an earlier one costs no request if the run dies).
    const finished = new Map<number, UnitOutcome>();
    let committed = 0;
    const flush = () => {
      while (finished.has(committed)) {
        let result = finished.get(committed)!;
        finished.delete(committed);
        if (result.outcome === 'written' && options.accept) {
          const reason = options.accept(result.line);
          if (reason) result = { outcome: 'rejected', reason };
        }
        this.commit(pending[committed].key, result);
        committed++;
        progress.done++;
        if (result.outcome === 'written') progress.written++;
        else progress.rejected++;
        options.onProgress?.({ ...progress });
      }
    };
    const worker = async () => {
      while (next < pending.length && !options.signal?.aborted && !options.stop?.aborted && !failure) {
        const at = next++;
        try {
          finished.set(at, await work(pending[at], askFor(pending[at])));
        } catch (error) {
          // The other workers stop taking units; their answers in flight are still journaled.
          failure ??= { error };
          return;
        }
        flush();
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, Math.min(options.concurrency, pending.length)) }, worker));
    if (options.signal?.aborted) throw options.signal.reason;
    if (failure) throw (failure as { error: unknown }).error;
    if (options.stop?.aborted && committed < pending.length) throw options.stop.reason;
    const fd = openSync(this.paths.output, 'a');
    fsyncSync(fd);
    closeSync(fd);
    return progress;
  }

  /** Output line, then its provenance, then the outcome: the outcome is the commit point (see the header). */
  private commit(key: string, result: UnitOutcome): void {
    if (result.outcome === 'written') {
      append(this.paths.output, result.line);
      append(this.paths.provenance, { line: this.writtenLines.length + 1, key, ...result.provenance });
      this.writtenLines.push(result.line);
      append(this.paths.state, { t: 'unit', key, outcome: 'written' });
    } else {
      append(this.paths.state, { t: 'unit', key, outcome: 'rejected', reason: result.reason, ...(result.detail ?? {}) });
    }
    this.outcomes.set(key, result.outcome);
  }
}

/** Units a run rejected, with their reasons (from the journal). */
export function rejectedUnits(paths: RunPaths): { key: string; reason: string }[] {
  return (readLines(paths.state) as StateLine[]).filter((s) => s.t === 'unit' && s.outcome === 'rejected').map((s) => ({ key: s.key!, reason: s.reason ?? '' }));
}

/** The provenance lines of a run's output. */
export function provenanceLines(paths: RunPaths): Record<string, unknown>[] {
  return readLines(paths.provenance) as Record<string, unknown>[];
}
