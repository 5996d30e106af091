/** Labels: the label map (`1=好评,0=差评`) and the rule that tells a label set from free-text answers. */
import { WeitiaoError } from '../errors.js';
import { charLength } from './internal/check.js';

/**
 * Parses `1=好评,0=差评` into `{ "1": "好评", "0": "差评" }`. Half- and full-width `=`/`＝` and
 * `,`/`，` both work; spaces around keys and values are dropped. Labels cannot contain a comma.
 */
export function parseLabelMap(text: string): Record<string, string> {
  const map: Record<string, string> = {};
  for (const raw of text.split(/[,，]/)) {
    const entry = raw.trim();
    if (!entry) continue;
    const eq = entry.search(/[=＝]/);
    const key = eq < 0 ? '' : entry.slice(0, eq).trim();
    const value = eq < 0 ? '' : entry.slice(eq + 1).trim();
    if (!key || !value) {
      throw new WeitiaoError('invalid_request', `label map entry '${entry}' is not key=label (e.g. 1=好评,0=差评) / 标签映射项 '${entry}' 格式应为 键=标签`, {
        param: 'label_map',
      });
    }
    if (Object.hasOwn(map, key)) {
      throw new WeitiaoError('invalid_request', `label map has '${key}' twice / 标签映射中 '${key}' 重复`, { param: 'label_map' });
    }
    map[key] = value;
  }
  if (Object.keys(map).length === 0) {
    throw new WeitiaoError('invalid_request', 'label map is empty (e.g. 1=好评,0=差评) / 标签映射为空', { param: 'label_map' });
  }
  return map;
}

/** Limits of detectLabelSet, exported so documentation and tests quote the same numbers. */
export const LABEL_SET_RULE = { max_labels: 20, max_label_chars: 20, max_share_of_examples: 0.05 } as const;

/**
 * The answers' label set, or null when they look like free text. A label set has 2 to 20 distinct
 * answers, each 1–20 characters on one line, and no more distinct answers than 5 % of the examples
 * (at least 2 are always allowed), so every label repeats on average at least 20 times in a large file.
 * Labels come sorted (code-point order), the same however the file is ordered or split.
 */
export function detectLabelSet(answers: readonly string[]): string[] | null {
  const detector = new LabelSetDetector();
  for (const a of answers) detector.add(a);
  return detector.result();
}

/** detectLabelSet over a stream of answers, in bounded memory: it keeps at most 21 distinct answers and a count. */
export class LabelSetDetector {
  private readonly distinct = new Set<string>();
  private possible = true;
  private n = 0;

  add(answer: string): void {
    this.n++;
    if (!this.possible) return;
    const chars = charLength(answer);
    if (chars < 1 || chars > LABEL_SET_RULE.max_label_chars || /[\r\n]/.test(answer) || answer.trim() === '') return this.giveUp();
    this.distinct.add(answer);
    if (this.distinct.size > LABEL_SET_RULE.max_labels) this.giveUp();
  }

  result(): string[] | null {
    const allowed = Math.max(2, Math.floor(this.n * LABEL_SET_RULE.max_share_of_examples));
    if (!this.possible || this.distinct.size < 2 || this.distinct.size > allowed) return null;
    return [...this.distinct].sort();
  }

  private giveUp(): void {
    this.possible = false;
    this.distinct.clear();
  }
}

/** Examples per label of a split part, when the answers form a label set. */
export function labelCounts(answers: string[], labelSet: string[] | null): Record<string, number> | null {
  if (!labelSet) return null;
  const counts: Record<string, number> = Object.fromEntries(labelSet.map((l) => [l, 0]));
  for (const a of answers) counts[a] = (counts[a] ?? 0) + 1;
  return counts;
}
