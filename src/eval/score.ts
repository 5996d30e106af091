/**
 * Answers already generated, scored: the engine's `score-answers` (torch-free, so it starts in about a
 * second) gives every metric the data call for, each grader's mean reward, bootstrap intervals and paired
 * tests. Evaluations, baselines, the forgetting check and Evals API runs all score through here.
 *
 * ```ts
 * const t = await scoreAnswers({ expected: ['好评'], systems: { base: ['差评'], tuned: ['好评'] } });
 * t.metrics.tuned.exact_match.value; // 1
 * ```
 */
import { runEngine } from '../engine/index.js';
import type { ScoreAnswersRequest, ScoreAnswersResult } from '../engine/protocol.js';

export async function scoreAnswers(request: ScoreAnswersRequest & { signal?: AbortSignal }): Promise<ScoreAnswersResult> {
  const { signal, ...body } = request;
  return runEngine('score-answers', body, { signal });
}
