/** Token counts for the length checks: the engine's tokenizer, in batches, and the too_many_tokens issues. */
import { runEngine, type ChatExample } from '../engine/index.js';
import { WeitiaoError } from '../errors.js';
import { problem } from './internal/check.js';
import type { IssueList } from './internal/issues.js';
import type { DataDeps, TokenCounter, TokenCounts } from './schemas.js';

/** Valid examples (or ~8 MB of their text) sent to the tokenizer at a time, so a file is never held whole. */
export const TOKEN_BATCH_EXAMPLES = 20_000;
export const TOKEN_BATCH_CHARS = 8 * 1024 * 1024;

/** The base model's tokenizer, through the engine's `count-tokens` command (one process per call). */
export function engineTokenCounter(modelDir: string): TokenCounter {
  return (examples, options) => runEngine('count-tokens', { model: modelDir, examples }, { signal: options?.signal, killAfterMs: 500 });
}

export interface Located {
  line: number;
  example: ChatExample;
}

export function tokenCounter(options: { model_dir?: string }, deps: DataDeps): TokenCounter | null {
  return deps.countTokens ?? (options.model_dir ? engineTokenCounter(options.model_dir) : null);
}

export async function countTokens(counter: TokenCounter, examples: ChatExample[], signal?: AbortSignal): Promise<TokenCounts> {
  if (examples.length === 0) return { counts: [], trained_counts: [], model_max_length: 0 };
  const result = await counter(examples, signal ? { signal } : undefined);
  for (const counts of [result.counts, result.trained_counts ?? examples]) {
    if (counts.length !== examples.length) {
      throw new WeitiaoError('engine_error', `token counter returned ${counts.length} counts for ${examples.length} examples`);
    }
  }
  return result;
}

/**
 * Adds `too_many_tokens` issues: errors (`error`, and `skip`, whose rows the caller leaves out), or with
 * `truncate` warnings, since training then cuts the earliest prompt tokens and keeps the answer whole.
 */
export async function checkLengths(
  items: Located[],
  counter: TokenCounter,
  maxLength: number | undefined,
  issues: IssueList,
  signal?: AbortSignal,
  long: 'truncate' | 'skip' | 'error' = 'error',
): Promise<{ counts: number[]; max_length: number }> {
  const { counts, model_max_length } = await countTokens(counter, items.map((i) => i.example), signal);
  const max = maxLength ?? model_max_length;
  counts.forEach((n, i) => {
    if (n > max) {
      const what = `example has ${n} tokens, more than the maximum length ${max}`;
      const zh = `样本有 ${n} 个 token，超过最大长度 ${max}`;
      issues.add(
        items[i].line,
        long === 'truncate'
          ? problem('too_many_tokens', 'messages', `${what}; training will cut the earliest prompt tokens and keep the answer / ${zh}，训练时将截去最早的提示、保留回答`, 'warning')
          : problem('too_many_tokens', 'messages', `${what} / ${zh}`),
      );
    }
  });
  return { counts, max_length: max };
}
