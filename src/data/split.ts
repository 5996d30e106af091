/** The reproducible, optionally stratified train/validation split. */
import { mulberry32, permutation } from './internal/random.js';

/**
 * A reproducible train/validation split: one seeded permutation (mulberry32 + Fisher–Yates, so the same
 * seed gives the same split on any machine); both parts keep the permutation's order, which mixes
 * classes even when the source is sorted by label. Validation gets round(n × fraction) examples (at
 * least 1 and at most n − 1 when the fraction is above 0 and n ≥ 2). Stratified, each answer gives
 * floor or ceil of count × fraction (largest remainders first, ties to the answer met first in the
 * permutation), so every answer is within one example of its exact share.
 */
export function splitExamples(
  answers: readonly string[],
  options: { validation: number; seed: number; stratify: boolean },
): { train: number[]; validation: number[] } {
  const n = answers.length;
  const order = permutation(n, mulberry32(options.seed));
  if (options.validation <= 0 || n < 2) return { train: order, validation: [] };
  const k = Math.min(n - 1, Math.max(1, Math.round(n * options.validation)));
  const keyOf = (i: number) => (options.stratify ? answers[i] : '');

  // Classes in order of first appearance in the permutation, with their sizes.
  const counts = new Map<string, number>();
  for (const i of order) counts.set(keyOf(i), (counts.get(keyOf(i)) ?? 0) + 1);
  const quota = new Map<string, number>();
  const remainders: { key: string; rem: number; rank: number }[] = [];
  let assigned = 0;
  let rank = 0;
  for (const [key, count] of counts) {
    const exact = count * options.validation;
    quota.set(key, Math.floor(exact));
    assigned += Math.floor(exact);
    remainders.push({ key, rem: exact - Math.floor(exact), rank: rank++ });
  }
  remainders.sort((a, b) => b.rem - a.rem || a.rank - b.rank);
  for (let j = 0; assigned < k && j < remainders.length; j++, assigned++) quota.set(remainders[j].key, quota.get(remainders[j].key)! + 1);

  const train: number[] = [];
  const validation: number[] = [];
  for (const i of order) {
    const left = quota.get(keyOf(i))!;
    if (left > 0) {
      quota.set(keyOf(i), left - 1);
      validation.push(i);
    } else {
      train.push(i);
    }
  }
  return { train, validation };
}
