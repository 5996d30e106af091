/**
 * Few-shot turns for the "was fine-tuning worth it?" baseline: k examples of the training file put in the
 * base model's prompt as earlier user/assistant turns. The choice is seeded (the same k, seed and file give
 * the same turns) and, when the answers form a label set, stratified: the labels take turns, so k = 4 on a
 * two-label file shows each label twice instead of whatever four reviews a shuffle happens to draw.
 */
import type { ChatMessage } from '../../engine/protocol.js';
import { mulberry32 } from '../../data/index.js';

export interface FewShotExample {
  messages: ChatMessage[];
}

/** The turns of one example without its system messages (the evaluated prompt brings its own). */
function turns(example: FewShotExample): ChatMessage[] {
  return example.messages
    .filter((m) => m.role === 'user' || m.role === 'assistant')
    .map((m) => ({ role: m.role, content: m.content }));
}

function shuffled<T>(items: T[], random: () => number): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

/** Indexes of the k chosen examples: seeded, stratified by the last answer when `labels` is given. */
export function chooseShots(examples: FewShotExample[], k: number, seed: number, labels: string[] | null): number[] {
  const usable = examples.map((e, i) => ({ e, i })).filter(({ e }) => e.messages.at(-1)?.role === 'assistant');
  const random = mulberry32(seed);
  if (!labels || labels.length === 0) return shuffled(usable, random).slice(0, k).map(({ i }) => i);
  const pools = labels.map((label) => shuffled(usable.filter(({ e }) => e.messages.at(-1)!.content === label), random));
  const chosen: number[] = [];
  // Labels take turns; a label whose examples run out drops out of the rotation.
  while (chosen.length < k && pools.some((p) => p.length)) {
    for (const pool of pools) {
      const next = pool.shift();
      if (next && chosen.length < k) chosen.push(next.i);
    }
  }
  // The shots then appear in a seeded order, not label A, label B, label A… (a pattern the model might copy).
  return shuffled(chosen, random);
}

/** The turns for k examples of `examples` (see chooseShots), ready for EvaluateOptions.prefixMessages. */
export function fewShotTurns(examples: FewShotExample[], k: number, seed: number, labels: string[] | null): ChatMessage[] {
  return chooseShots(examples, k, seed, labels).flatMap((i) => turns(examples[i]));
}
