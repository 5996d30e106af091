/**
 * A set of 64-bit digests with two 32-bit values each, in typed arrays: 16 bytes a slot and no object
 * per entry, so remembering a million examples costs ~32 MB instead of the ~250 MB a Map of strings
 * takes. It stops taking new entries at `maxEntries` (lookups still work), which bounds its memory.
 */
import { createHash } from 'node:crypto';

/** The first 64 bits of SHA-1, as two unsigned 32-bit halves (never both 0: that marks an empty slot). */
export function digest64(text: string): [number, number] {
  const h = createHash('sha1').update(text).digest();
  const hi = h.readUInt32BE(0);
  const lo = h.readUInt32BE(4);
  return hi === 0 && lo === 0 ? [0, 1] : [hi, lo];
}

export class DigestTable {
  private keys: Uint32Array;
  private values: Uint32Array;
  private mask: number;
  private count = 0;

  constructor(
    readonly maxEntries: number,
    initialSlots = 1 << 12,
  ) {
    this.keys = new Uint32Array(initialSlots * 2);
    this.values = new Uint32Array(initialSlots * 2);
    this.mask = initialSlots - 1;
  }

  get size(): number {
    return this.count;
  }

  get full(): boolean {
    return this.count >= this.maxEntries;
  }

  /** The two values stored under the digest, or null. */
  get([hi, lo]: [number, number]): [number, number] | null {
    const slot = this.find(hi, lo);
    if (this.keys[2 * slot] === 0 && this.keys[2 * slot + 1] === 0) return null;
    return [this.values[2 * slot], this.values[2 * slot + 1]];
  }

  /** Stores the values unless the digest is there already or the table is full; false when not stored. */
  add([hi, lo]: [number, number], a: number, b: number): boolean {
    if (this.full) return false;
    // Grow at 50 % load: probes stay short.
    if ((this.count + 1) * 2 > this.mask + 1) this.grow();
    const slot = this.find(hi, lo);
    if (this.keys[2 * slot] !== 0 || this.keys[2 * slot + 1] !== 0) return false;
    this.keys[2 * slot] = hi;
    this.keys[2 * slot + 1] = lo;
    this.values[2 * slot] = a;
    this.values[2 * slot + 1] = b;
    this.count++;
    return true;
  }

  /** The slot holding the digest, or the empty slot where it would go (linear probing). */
  private find(hi: number, lo: number): number {
    let slot = (lo ^ hi) & this.mask;
    for (;;) {
      const khi = this.keys[2 * slot];
      const klo = this.keys[2 * slot + 1];
      if ((khi === hi && klo === lo) || (khi === 0 && klo === 0)) return slot;
      slot = (slot + 1) & this.mask;
    }
  }

  private grow(): void {
    const { keys, values } = this;
    const slots = (this.mask + 1) * 2;
    this.keys = new Uint32Array(slots * 2);
    this.values = new Uint32Array(slots * 2);
    this.mask = slots - 1;
    for (let i = 0; i < keys.length; i += 2) {
      if (keys[i] === 0 && keys[i + 1] === 0) continue;
      const slot = this.find(keys[i], keys[i + 1]);
      this.keys[2 * slot] = keys[i];
      this.keys[2 * slot + 1] = keys[i + 1];
      this.values[2 * slot] = values[i];
      this.values[2 * slot + 1] = values[i + 1];
    }
  }
}
