/**
 * Token counts per model kept across requests. The console asks about the same examples several times
 * (validate, prepare, then the estimate), and each count is an engine process that loads the tokenizer:
 * with the cache a dataset costs one engine run, not one per request.
 */
import { statSync } from 'node:fs';
import path from 'node:path';
import type { ChatExample } from '../engine/index.js';
import type { DataDeps } from './schemas.js';
import { engineTokenCounter } from './tokens.js';

const tokenCache = new Map<string, { maxLength: number; counts: Map<string, { all: number; trained: number | null }> }>();
const TOKEN_CACHE_ENTRIES = 200_000;
const TOKEN_CACHE_MODELS = 4;

const exampleKey = (e: ChatExample): string => JSON.stringify(e.messages.map((m) => [m.role, m.content, m.weight ?? null]));

/** src/data's dependencies for a model's tokenizer (none without a model: characters are counted), through the cache. */
export function cachedTokenDeps(modelDir: string | undefined): DataDeps {
  if (!modelDir) return {};
  const count = engineTokenCounter(modelDir);
  // A model rebuilt in place (create-tiny --overwrite) has a new tokenizer: its files' times change.
  const version = ['tokenizer.json', 'config.json'].map((f) => statSync(path.join(modelDir, f), { throwIfNoEntry: false })?.mtimeMs ?? 0).join(':');
  const cacheKey = `${modelDir}\0${version}`;
  return {
    countTokens: async (examples) => {
      let entry = tokenCache.get(cacheKey);
      if (!entry || entry.counts.size > TOKEN_CACHE_ENTRIES) {
        tokenCache.delete(cacheKey);
        if (tokenCache.size >= TOKEN_CACHE_MODELS) tokenCache.delete(tokenCache.keys().next().value!);
        tokenCache.set(cacheKey, (entry = { maxLength: 0, counts: new Map() }));
      }
      const counts = entry.counts;
      const missing = new Map<string, ChatExample>();
      for (const e of examples) {
        const k = exampleKey(e);
        if (!counts.has(k)) missing.set(k, e);
      }
      if (missing.size || !entry.maxLength) {
        const batch = missing.size ? [...missing.values()] : examples.slice(0, 1);
        const result = await count(batch);
        batch.forEach((x, i) => counts.set(exampleKey(x), { all: result.counts[i], trained: result.trained_counts?.[i] ?? null }));
        entry.maxLength = result.model_max_length;
      }
      const found = examples.map((e) => counts.get(exampleKey(e)) ?? { all: 0, trained: null });
      const trained = found.every((c) => c.trained !== null) ? found.map((c) => c.trained!) : null;
      return { counts: found.map((c) => c.all), trained_counts: trained, model_max_length: entry.maxLength };
    },
  };
}
