/** datasetStats: sizes, lengths, answer distribution and the trained-token estimate of a chat file. */
import type { ChatExample } from '../engine/index.js';
import { answerOf, charLength, checkExample, DUPLICATE_CHECK_LIMIT } from './internal/check.js';
import { DigestTable, digest64 } from './internal/digests.js';
import { resolveEncoding } from './internal/encoding.js';
import { validationCancelled } from './internal/issues.js';
import { assertReadable, readJsonLines } from './internal/source.js';
import { histogram, summarize } from './internal/summary.js';
import { LABEL_SET_RULE, LabelSetDetector } from './labels.js';
import { parseOptions, StatsOptions, type DataDeps, type DatasetStats } from './schemas.js';
import { countTokens, tokenCounter, TOKEN_BATCH_CHARS, TOKEN_BATCH_EXAMPLES } from './tokens.js';

/**
 * Figures about a chat-format JSONL file: sizes, lengths (real tokens with model_dir, else characters),
 * answer distribution, the trained-token estimate for some epochs and a length histogram. Lines with
 * errors are skipped and counted in `invalid_examples`.
 */
export async function datasetStats(file: string, options: StatsOptions = {}, deps: DataDeps = {}): Promise<DatasetStats> {
  const opts = parseOptions(StatsOptions, options);
  const { signal } = deps;
  await assertReadable(file, 'file');
  const encoding = await resolveEncoding(file, opts.encoding);
  const counter = tokenCounter(opts, deps);
  // Three numbers per valid example (for exact percentiles) and the answers' label set: never the examples.
  const sizes: number[] = [];
  let assistantSizes: number[] | null = [];
  const messageCounts: number[] = [];
  const labels = new LabelSetDetector();
  const answerCounts = new Map<string, number>(); // while the answers may still be a label set
  const distinctAnswers = new DigestTable(DUPLICATE_CHECK_LIMIT, 1);
  let maxLength: number | undefined;
  let invalid = 0;

  let batch: ChatExample[] = [];
  let batchChars = 0;
  const countBatch = async () => {
    if (!counter || batch.length === 0) return;
    // Trained tokens are the ones training labels (every assistant turn + its end-of-turn token), not
    // the template's role headers around them.
    const { counts, trained_counts, model_max_length } = await countTokens(counter, batch, signal);
    for (const n of counts) sizes.push(n);
    if (trained_counts && assistantSizes) for (const n of trained_counts) assistantSizes.push(n);
    else assistantSizes = null;
    maxLength = opts.max_length ?? model_max_length;
    batch = [];
    batchChars = 0;
  };

  for await (const row of readJsonLines(file, encoding)) {
    if (signal?.aborted) throw validationCancelled(file);
    const example = row.problem ? null : checkExample(row.value).example;
    if (!example) {
      invalid++;
      continue;
    }
    const answer = answerOf(example);
    labels.add(answer);
    if (answerCounts.size <= LABEL_SET_RULE.max_labels || answerCounts.has(answer)) answerCounts.set(answer, (answerCounts.get(answer) ?? 0) + 1);
    distinctAnswers.add(digest64(answer), 0, 0);
    messageCounts.push(example.messages.length);
    if (counter) {
      batch.push(example);
      for (const m of example.messages) batchChars += m.content.length;
      if (batch.length >= TOKEN_BATCH_EXAMPLES || batchChars >= TOKEN_BATCH_CHARS) await countBatch();
    } else {
      sizes.push(example.messages.reduce((n, m) => n + charLength(m.content), 0));
      assistantSizes!.push(charLength(answer));
    }
  }
  await countBatch();

  const n = messageCounts.length;
  const unit: 'tokens' | 'characters' = counter && n > 0 ? 'tokens' : 'characters';
  const labelSet = labels.result();
  const counts = labelSet ? Object.fromEntries(labelSet.map((l) => [l, answerCounts.get(l) ?? 0])) : null;
  const sum = (xs: number[]) => xs.reduce((s, x) => s + x, 0);
  const total = sum(sizes);
  const totalAssistant = assistantSizes ? sum(assistantSizes) : 0;
  const hist = histogram(sizes, opts.bins);
  const stats: DatasetStats = {
    file,
    encoding,
    examples: n,
    invalid_examples: invalid,
    token_unit: unit,
    messages_per_example: summarize(messageCounts),
    tokens_per_example: summarize(sizes),
    assistant_tokens_per_example: assistantSizes ? summarize(assistantSizes) : null,
    total_tokens: total,
    total_assistant_tokens: totalAssistant,
    epochs: opts.epochs,
    estimated_trained_tokens: total * opts.epochs,
    estimated_trained_assistant_tokens: totalAssistant * opts.epochs,
    label_set: labelSet,
    /** Exact up to DUPLICATE_CHECK_LIMIT distinct answers (the set's bound). */
    distinct_answers: distinctAnswers.size,
    answer_distribution: counts
      ? Object.entries(counts)
          .map(([answer, count]) => ({ answer, count, share: count / n }))
          .sort((a, b) => b.count - a.count || (a.answer < b.answer ? -1 : 1))
      : null,
    histogram: { unit, ...hist },
  };
  if (maxLength !== undefined) {
    stats.max_length = maxLength;
    stats.over_max_length = sizes.filter((s) => s > maxLength!).length;
  }
  return stats;
}
