/**
 * Near duplicates in `data prepare`: a warning on an example whose prompt is nearly the same as an earlier
 * one's (beside the exact and conflicting duplicates src/data/internal/check.ts finds), `dedupe` leaving
 * such examples out (listed with file:line and the line kept), and train/validation leakage after the split
 * (a validation example nearly the same as a training one). Prompts are compared on their user turns only:
 * a system prompt every example shares would make them all look alike. validateChatFile (the console's and
 * the uploads' check) reports near duplicates the same way, with a bounded index.
 */
import type { ChatExample } from '../engine/index.js';
import { problem, type Problem } from './internal/check.js';
import { NEAR_DUPLICATE_THRESHOLD, NearDuplicateIndex } from './internal/near-duplicates.js';
import { parseTemplate } from './internal/template.js';
import type { Issue } from './schemas.js';

export { NEAR_DUPLICATE_STREAM_LIMITS, NEAR_DUPLICATE_THRESHOLD, NearDuplicateIndex, jaccard, shingleHashes, similarity } from './internal/near-duplicates.js';

/** The user turns of an example, one after the other: what near-duplicate checks compare. */
export function userText(example: ChatExample): string {
  return example.messages
    .filter((m) => m.role === 'user')
    .map((m) => m.content)
    .join('\n');
}

/** What a near-duplicate check compares of an example. */
export type PromptText = (example: ChatExample) => string;

/**
 * The user turn without the literal text that `prepare`'s user template puts before its first and after its
 * last `{column}`: an instruction every prompt shares would make short rows look alike. On the 12k waimai
 * reviews behind a 31-character instruction, 3462 rows were near duplicates and 363 validation rows leaks,
 * against 27 and 10 on the reviews alone. A template without a column is compared whole.
 */
export function promptText(userTemplate: string | undefined): PromptText {
  const parts = userTemplate === undefined ? [] : parseTemplate(userTemplate, 'user').parts;
  if (!parts.some((p) => 'column' in p)) return userText;
  const prefix = parts[0] && 'text' in parts[0] ? parts[0].text : '';
  const last = parts.at(-1)!;
  const suffix = 'text' in last ? last.text : '';
  return (example) => {
    const text = userText(example);
    if (!text.startsWith(prefix) || !text.endsWith(suffix) || text.length < prefix.length + suffix.length) return text;
    return text.slice(prefix.length, text.length - suffix.length);
  };
}

const percent = (s: number) => `${Math.round(s * 100)}%`;

/**
 * Per example in reading order. With `dedupe`, an example whose prompt matches a kept one at or above the
 * threshold (identical prompts included) is dropped and listed in `dropped`; without it, a near (not
 * identical) match is a `near_duplicate` warning.
 * `bounds` (validateChatFile, which streams files of any size: NEAR_DUPLICATE_STREAM_LIMITS): the index
 * holds at most that many prompts and shingles, and the check stops once it is full, with one warning naming the line.
 * `prompt`: what is compared (the user turns, or `promptText(template)`'s part of them).
 */
export class NearDuplicateCheck {
  private readonly index: NearDuplicateIndex;
  /** Source line of each indexed example. */
  private readonly lines: number[] = [];
  readonly dropped: Issue[] = [];
  private warnedFull = false;
  /** The line from which a bounded check stopped (its index was full); null while it runs. */
  stoppedAt: number | null = null;

  private readonly dedupe: boolean;
  private readonly bounds: { texts: number; shingles: number } | null;
  private readonly prompt: PromptText;

  constructor(
    private readonly file: string,
    options: { dedupe?: boolean; threshold?: number; bounds?: { texts: number; shingles: number }; prompt?: PromptText } = {},
  ) {
    const { dedupe = false, threshold = NEAR_DUPLICATE_THRESHOLD, bounds = null, prompt = userText } = options;
    this.dedupe = dedupe;
    this.bounds = bounds;
    this.prompt = prompt;
    this.index = bounds ? new NearDuplicateIndex(threshold, bounds.texts, bounds.shingles) : new NearDuplicateIndex(threshold);
  }

  /** `drop`: leave the example out (already listed in `dropped`); else a warning to report, or null. */
  check(example: ChatExample, line: number): { drop: true } | { problem: Problem } | null {
    if (this.stoppedAt !== null) return null;
    const full = this.index.full;
    if (full && this.bounds) {
      // Memory and time stay bounded however big the file: later lines are not checked at all.
      this.stoppedAt = line;
      const { texts, shingles } = this.bounds;
      const note =
        `near-duplicate check stopped at line ${line}: its index is full (${this.index.size} prompts; at most ${texts} prompts or ${shingles} shingles); later lines are not checked for near duplicates / ` +
        `近似重复检查在第 ${line} 行停止：索引已满（${this.index.size} 条提示），之后的行不再检查近似重复`;
      return { problem: problem('near_duplicate_check_limited', null, note, 'warning') };
    }
    const text = this.prompt(example);
    const { match, index } = this.dedupe ? this.findThenMaybeAdd(text) : this.index.findAndAdd(text);
    if (index >= 0) this.lines.push(line);
    if (full && !this.warnedFull) {
      this.warnedFull = true;
      const n = this.index.limit;
      const note = `more than ${n} examples: later ones are compared for near duplicates with the first ${n} only / 样本超过 ${n} 条，之后的样本只与前 ${n} 条比较近似重复`;
      if (!match) return { problem: problem('near_duplicate_check_limited', null, note, 'warning') };
    }
    if (!match) return null;
    const kept = this.lines[match.index];
    if (this.dedupe) {
      this.dropped.push({
        file: this.file,
        line,
        field: 'messages',
        code: 'near_duplicate',
        severity: 'warning',
        message: `left out: prompt ${percent(match.similarity)} like line ${kept}, which is kept / 已去除：提示与第 ${kept} 行（保留）相似度 ${percent(match.similarity)}`,
      });
      return { drop: true };
    }
    if (match.similarity >= 1) return null; // identical prompts: the exact/conflicting duplicate check speaks for them
    return {
      problem: problem(
        'near_duplicate',
        'messages',
        `prompt is ${percent(match.similarity)} like line ${kept}'s (near duplicate) / 提示与第 ${kept} 行近似重复（相似度 ${percent(match.similarity)}）`,
        'warning',
      ),
    };
  }

  /** Dedupe indexes kept examples only, so every drop names a line that is in the output. */
  private findThenMaybeAdd(text: string): { match: ReturnType<NearDuplicateIndex['find']>; index: number } {
    const match = this.index.find(text);
    return { match, index: match ? -1 : this.index.add(text) };
  }
}

/**
 * `validation_leak` warnings: each validation example whose prompt is at or above the threshold like a
 * training example's, naming the training line. Lines are the source file's.
 */
export function leakageWarnings(
  file: string,
  train: { line: number; example: ChatExample }[],
  validation: { line: number; example: ChatExample }[],
  prompt: PromptText = userText,
  threshold = NEAR_DUPLICATE_THRESHOLD,
): Issue[] {
  const index = new NearDuplicateIndex(threshold);
  const lines: number[] = [];
  for (const t of train) if (index.add(prompt(t.example)) >= 0) lines.push(t.line);
  const out: Issue[] = [];
  for (const v of validation) {
    const match = index.find(prompt(v.example));
    if (!match) continue;
    const at = lines[match.index];
    out.push({
      file,
      line: v.line,
      field: 'messages',
      code: 'validation_leak',
      severity: 'warning',
      message:
        `validation example is ${percent(match.similarity)} like training line ${at}: it measures memory, not generalisation (prepare with dedupe) / ` +
        `验证样本与训练集第 ${at} 行相似度 ${percent(match.similarity)}（数据泄漏，可用去重）`,
    });
  }
  return out.sort((a, b) => (a.line ?? 0) - (b.line ?? 0));
}
