/**
 * Near-duplicate filter for generated examples: Jaccard similarity of character 3-shingles (characters,
 * so Chinese works without a word segmenter). Synthesis keeps at most a few thousand examples, so an
 * exact comparison against every kept example is cheap; an inverted index on shingles narrows it further.
 */

export function shingles(text: string, size = 3): Set<string> {
  const chars = [...text.normalize('NFKC').toLowerCase().replace(/\s+/gu, ' ').trim()];
  const out = new Set<string>();
  if (chars.length <= size) {
    if (chars.length) out.add(chars.join(''));
    return out;
  }
  for (let i = 0; i + size <= chars.length; i++) out.add(chars.slice(i, i + size).join(''));
  return out;
}

export function jaccard(a: Set<string>, b: Set<string>): number {
  if (a.size === 0 && b.size === 0) return 1;
  let shared = 0;
  for (const s of a) if (b.has(s)) shared++;
  return shared / (a.size + b.size - shared);
}

export class NearDuplicateIndex {
  private readonly kept: Set<string>[] = [];
  private readonly byShingle = new Map<string, number[]>();

  /** `threshold`: Jaccard at or above which two texts count as the same example. */
  constructor(readonly threshold = 0.7) {}

  /** The index and similarity of the closest kept text at or above the threshold, else null. */
  find(text: string): { index: number; similarity: number } | null {
    const s = shingles(text);
    const candidates = new Set<number>();
    for (const sh of s) for (const i of this.byShingle.get(sh) ?? []) candidates.add(i);
    let best: { index: number; similarity: number } | null = null;
    for (const i of candidates) {
      const sim = jaccard(s, this.kept[i]);
      if (sim >= this.threshold && (!best || sim > best.similarity)) best = { index: i, similarity: sim };
    }
    return best;
  }

  add(text: string): void {
    const s = shingles(text);
    const i = this.kept.length;
    this.kept.push(s);
    for (const sh of s) {
      const list = this.byShingle.get(sh);
      if (list) list.push(i);
      else this.byShingle.set(sh, [i]);
    }
  }
}
