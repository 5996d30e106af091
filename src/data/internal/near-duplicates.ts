/**
 * Near-duplicate detection shared by `data prepare` (report, --dedupe, train/validation leakage) and the
 * teacher's synthesis filter. Texts are compared as sets of character 3-shingles (characters, so Chinese
 * works without a word segmenter), each shingle hashed to 32 bits and kept sorted: the exact Jaccard of two
 * texts is one merge. MinHash with locality-sensitive banding finds the few candidates worth that merge, so
 * a file of many thousands of rows is not compared pair by pair.
 */

export const SHINGLE_SIZE = 3;
/** Jaccard at or above which two prompts count as near duplicates in a data report (see the tests for what 0.7 catches). */
export const NEAR_DUPLICATE_THRESHOLD = 0.7;
/** Texts indexed at most: past this, later texts are still compared with the indexed ones but not added. */
export const NEAR_DUPLICATE_LIMIT = 200_000;
/**
 * The bounds of the index in `validateChatFile`, which streams files of any size (uploads, the console's
 * check): ~4 MB of band keys for 50,000 prompts (12 bucket entries each, ~25 MB of Map at worst) and
 * 16 MB of shingle hashes. Past either the check stops and the report says from which line.
 */
export const NEAR_DUPLICATE_STREAM_LIMITS = { texts: 50_000, shingles: 4_000_000 } as const;

// LSH: BANDS bands of ROWS min-hashes. A pair is a candidate when one band matches entirely: for Jaccard s
// that happens with probability 1 − (1 − s²)¹²: 0.998 at s = 0.6, 0.9999 at 0.7, 0.42 at 0.2 (then rejected
// by the exact Jaccard). Candidates are checked best first (most matching bands), at most MAX_CANDIDATES.
// A prompt template that every example shares puts thousands of texts in the same buckets: each bucket is read
// from its newest BUCKET_SCAN entries, so a lookup's cost stays bounded. On the 12k waimai reviews behind a
// 31-character template: 1.9 s (a Map of band counts and 64 candidates took 17.6 s) and 3223 of the 3516 near
// duplicates a pairwise scan finds (3096 before). Without a template: 35 of 35 either way.
const BANDS = 12;
const ROWS = 2;
const MAX_CANDIDATES = 256;
const BUCKET_SCAN = 1024;

/** 32-bit FNV-1a of a string, mixed (murmur3's finalizer) so nearby shingles spread. */
function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return mix(h);
}

function mix(h: number): number {
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** Lower-cased NFKC characters with runs of white space as one space: full-width and half-width forms compare equal. */
function normalizedChars(text: string): string[] {
  return [...text.normalize('NFKC').toLowerCase().replace(/\s+/gu, ' ').trim()];
}

/** The text's character shingles as sorted, distinct 32-bit hashes (a text shorter than a shingle is one shingle). */
export function shingleHashes(text: string, size = SHINGLE_SIZE): Uint32Array {
  const chars = normalizedChars(text);
  const hashes: number[] = [];
  if (chars.length <= size) {
    if (chars.length) hashes.push(hashString(chars.join('')));
  } else {
    for (let i = 0; i + size <= chars.length; i++) hashes.push(hashString(chars.slice(i, i + size).join('')));
  }
  const sorted = Uint32Array.from(hashes).sort();
  let n = 0;
  for (let i = 0; i < sorted.length; i++) if (i === 0 || sorted[i] !== sorted[i - 1]) sorted[n++] = sorted[i];
  return sorted.slice(0, n);
}

/** Exact Jaccard of two sorted, distinct hash sets (two empty texts are the same text). */
export function jaccard(a: Uint32Array, b: Uint32Array): number {
  if (a.length === 0 && b.length === 0) return 1;
  let i = 0;
  let j = 0;
  let shared = 0;
  while (i < a.length && j < b.length) {
    if (a[i] === b[j]) {
      shared++;
      i++;
      j++;
    } else if (a[i] < b[j]) i++;
    else j++;
  }
  return shared / (a.length + b.length - shared);
}

/** Jaccard of two texts' character shingles. */
export function similarity(a: string, b: string): number {
  return jaccard(shingleHashes(a), shingleHashes(b));
}

const SEEDS = Uint32Array.from({ length: BANDS * ROWS }, (_, k) => mix(0x9e3779b9 + k * 0x7f4a7c15));

/** One key per band: the band's min-hashes folded into 32 bits with the band's number. */
function bandKeys(shingles: Uint32Array): number[] {
  const mins = new Uint32Array(BANDS * ROWS).fill(0xffffffff);
  for (const s of shingles) {
    for (let k = 0; k < mins.length; k++) {
      const h = mix(s ^ SEEDS[k]);
      if (h < mins[k]) mins[k] = h;
    }
  }
  const keys: number[] = [];
  for (let b = 0; b < BANDS; b++) {
    let h = mix(b + 1);
    for (let r = 0; r < ROWS; r++) h = mix(h ^ mins[b * ROWS + r]);
    keys.push(h);
  }
  return keys;
}

export interface NearMatch {
  /** The matching text's index, in the order texts were added. */
  index: number;
  /** Exact Jaccard of the two texts' shingles. */
  similarity: number;
}

/** Texts added one by one; `find` gives the most similar of the best candidates (see MAX_CANDIDATES) at or above the threshold. */
export class NearDuplicateIndex {
  private readonly shingles: Uint32Array[] = [];
  private readonly buckets = new Map<number, number | number[]>();
  private shinglesHeld = 0;
  /** Scratch for lookup: band matches per text, all zero between lookups. */
  private bandHits = new Uint8Array(0);

  /** `threshold`: Jaccard at or above which two texts count as the same; `limit` texts and `maxShingles` shingle hashes held at most. */
  constructor(
    readonly threshold = NEAR_DUPLICATE_THRESHOLD,
    readonly limit = NEAR_DUPLICATE_LIMIT,
    readonly maxShingles = Infinity,
  ) {}

  get size(): number {
    return this.shingles.length;
  }

  get full(): boolean {
    return this.shingles.length >= this.limit || this.shinglesHeld >= this.maxShingles;
  }

  find(text: string): NearMatch | null {
    return this.lookup(shingleHashes(text)).match;
  }

  /** Adds the text (unless the index is full) and returns its index, or -1 when it was not added. */
  add(text: string): number {
    const s = shingleHashes(text);
    return this.insert(s, bandKeys(s));
  }

  /** find then add in one shingling: the match among texts added before, and this text's index (-1 if not added). */
  findAndAdd(text: string): { match: NearMatch | null; index: number } {
    const s = shingleHashes(text);
    const { match, keys } = this.lookup(s);
    return { match, index: this.insert(s, keys) };
  }

  private lookup(s: Uint32Array): { match: NearMatch | null; keys: number[] } {
    const keys = bandKeys(s);
    // Band matches per text in a reusable counter (a Map here made long buckets the whole cost).
    const touched: number[] = [];
    for (const key of keys) {
      const bucket = this.buckets.get(key);
      if (bucket === undefined) continue;
      if (typeof bucket === 'number') {
        if (this.bandHits[bucket]++ === 0) touched.push(bucket);
      } else {
        for (let j = bucket.length - 1, end = Math.max(0, bucket.length - BUCKET_SCAN); j >= end; j--) if (this.bandHits[bucket[j]]++ === 0) touched.push(bucket[j]);
      }
    }
    // The candidates with the most matching bands first (the earliest of equals), by counting sort.
    const byHits: number[][] = Array.from({ length: BANDS + 1 }, () => []);
    for (const i of touched) {
      byHits[this.bandHits[i]].push(i);
      this.bandHits[i] = 0;
    }
    const ranked: number[] = [];
    for (let h = BANDS; h > 0 && ranked.length < MAX_CANDIDATES; h--) ranked.push(...byHits[h].sort((x, y) => x - y));
    let match: NearMatch | null = null;
    for (const i of ranked.slice(0, MAX_CANDIDATES)) {
      const sim = jaccard(s, this.shingles[i]);
      if (sim >= this.threshold && (!match || sim > match.similarity)) match = { index: i, similarity: sim };
    }
    return { match, keys };
  }

  private insert(s: Uint32Array, keys: number[]): number {
    if (this.full) return -1;
    const i = this.shingles.length;
    this.shingles.push(s);
    if (i >= this.bandHits.length) {
      const grown = new Uint8Array(Math.max(1024, 2 * this.bandHits.length));
      grown.set(this.bandHits);
      this.bandHits = grown;
    }
    this.shinglesHeld += s.length;
    for (const key of keys) {
      const bucket = this.buckets.get(key);
      if (bucket === undefined) this.buckets.set(key, i);
      else if (typeof bucket === 'number') this.buckets.set(key, [bucket, i]);
      else bucket.push(i);
    }
    return i;
  }
}
