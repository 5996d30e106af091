/**
 * Serving benchmark: concurrent streamed chat requests through `weitiao serve` (startServer on 127.0.0.1,
 * the official openai SDK as the client), the llama.cpp backend (a q8_0 GGUF from the engine's export)
 * against the engine's warm process (no deployment); then LoRA adapters of one base served at once.
 * bench/run.py calls it (the `serving` row of `make bench`); alone:
 *
 *   node --import tsx bench/serve_bench.ts --model DIR --work DIR [--adapters DIR,DIR,…] [--requests 16] [--max-tokens 64]
 *
 * Prints one line `RESULT {json}`. Every request asks for the same max_tokens; the output tokens counted
 * are each answer's own usage (random weights rarely end early, and when they do the counts say so).
 */
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import OpenAI from 'openai';
import { startServer } from '../src/api/index.js';
import { openContext, type Context } from '../src/context.js';
import { runEngine } from '../src/engine/index.js';
import { llamaLibraryPath } from '../src/llamacpp/index.js';
import { addLocalModel, registerModel } from '../src/models/index.js';
import { closeChatEngine, deployModel } from '../src/chat/index.js';

const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    work: { type: 'string' },
    adapters: { type: 'string', default: '' },
    requests: { type: 'string', default: '16' },
    'max-tokens': { type: 'string', default: '64' },
    parallel: { type: 'string', default: '' },
  },
});
if (!values.model || !values.work) throw new Error('--model and --work are required');
const MODEL_DIR = path.resolve(values.model);
const WORK = path.resolve(values.work);
const REQUESTS = Number(values.requests);
const MAX_TOKENS = Number(values['max-tokens']);
const PARALLEL = values.parallel ? Number(values.parallel) : REQUESTS;
const ADAPTERS = values.adapters.split(',').filter(Boolean).map((a) => path.resolve(a));
const WAIMAI = path.resolve(import.meta.dirname, '..', '..', 'shared', 'data', 'waimai_10k.csv');

/** Short real reviews, one per request, so prompts differ as they would. */
function prompts(n: number): string[] {
  const rows = readFileSync(WAIMAI, 'utf8').split(/\r?\n/).slice(1);
  const reviews = rows.map((r) => r.slice(r.indexOf(',') + 1)).filter((r) => r.length >= 8 && r.length <= 40 && !r.includes('"'));
  const step = Math.floor(reviews.length / n);
  return Array.from({ length: n }, (_, i) => reviews[i * step]);
}

interface Timing {
  latency: number;
  ttft: number;
  tokens: number;
}

export interface ServingRow {
  name: string;
  requests: number;
  max_tokens: number;
  seconds: number;
  requests_per_second: number;
  output_tokens_per_second: number;
  mean_output_tokens: number;
  p50_latency: number;
  p95_latency: number;
  p50_ttft: number;
  p95_ttft: number;
}

const quantile = (xs: number[], q: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))];
};

/** `REQUESTS` streamed requests started at once, spread over `models`; per-request latency and time to first token. */
async function measure(client: OpenAI, name: string, models: string[]): Promise<ServingRow> {
  const texts = prompts(REQUESTS);
  const one = async (i: number): Promise<Timing> => {
    const start = performance.now();
    let ttft = NaN;
    let tokens = 0;
    const stream = await client.chat.completions.create({
      model: models[i % models.length],
      messages: [
        { role: 'system', content: '你是一位外卖评论好评差评评论专家。' },
        { role: 'user', content: texts[i] },
      ],
      temperature: 0,
      max_tokens: MAX_TOKENS,
      stream: true,
      stream_options: { include_usage: true },
    });
    for await (const chunk of stream) {
      if (Number.isNaN(ttft) && chunk.choices[0]?.delta.content) ttft = performance.now() - start;
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
    }
    return { latency: (performance.now() - start) / 1000, ttft: (Number.isNaN(ttft) ? performance.now() - start : ttft) / 1000, tokens };
  };
  const start = performance.now();
  const timings = await Promise.all(Array.from({ length: REQUESTS }, (_, i) => one(i)));
  const seconds = (performance.now() - start) / 1000;
  const tokens = timings.reduce((a, t) => a + t.tokens, 0);
  const row: ServingRow = {
    name,
    requests: REQUESTS,
    max_tokens: MAX_TOKENS,
    seconds,
    requests_per_second: REQUESTS / seconds,
    output_tokens_per_second: tokens / seconds,
    mean_output_tokens: tokens / REQUESTS,
    p50_latency: quantile(timings.map((t) => t.latency), 0.5),
    p95_latency: quantile(timings.map((t) => t.latency), 0.95),
    p50_ttft: quantile(timings.map((t) => t.ttft), 0.5),
    p95_ttft: quantile(timings.map((t) => t.ttft), 0.95),
  };
  process.stderr.write(`[serving] ${name}: ${row.output_tokens_per_second.toFixed(1)} tok/s, p50 ${row.p50_latency.toFixed(2)} s, ttft p50 ${row.p50_ttft.toFixed(2)} s\n`);
  return row;
}

/** The engine's GGUF export of `model` (+ `adapter`), kept in the work dir between runs. */
async function gguf(model: string, adapter: string | null, out: string, quantize: 'q8_0' | 'f16'): Promise<string> {
  const file = path.join(out, adapter ? 'adapter.gguf' : 'model.gguf');
  if (existsSync(file)) return file;
  const r = await runEngine('export', {
    model,
    adapter,
    adapter_only: adapter !== null,
    format: 'gguf',
    quantize,
    output_dir: out,
    llama_library: llamaLibraryPath(),
  });
  return r.path;
}

/** A warm-up request per model, so load times are not counted as serving. */
async function warm(client: OpenAI, models: string[]): Promise<void> {
  for (const model of models) await client.chat.completions.create({ model, messages: [{ role: 'user', content: '你好' }], max_tokens: 2 });
}

async function main(): Promise<void> {
  mkdirSync(WORK, { recursive: true });
  const home = path.join(WORK, `serve-home-${process.pid}`);
  const ctx: Context = openContext({ home });
  const base = addLocalModel(ctx, { name: 'bench-base', path: MODEL_DIR }).id;
  const adapterIds = ADAPTERS.map((dir, i) => registerModel(ctx, { id: `bench-lora-${i}`, kind: 'fine-tuned', path: dir, base_model: base, source: 'local' }).id);
  const server = await startServer(ctx, { port: 0, auth: false, worker: false, handleSignals: false, webDir: null, log: () => {} });
  const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 3_600_000 });
  const rows: ServingRow[] = [];
  try {
    const q8 = await gguf(MODEL_DIR, null, path.join(WORK, 'gguf-q8_0'), 'q8_0');
    await warm(client, [base]);
    rows.push(await measure(client, 'engine warm process', [base]));
    await deployModel(ctx, base, { backend: 'llamacpp', gguf: q8, parallel: PARALLEL, context_size: 512 });
    await warm(client, [base]);
    rows.push(await measure(client, `llama.cpp q8_0 (${PARALLEL} sequences)`, [base]));

    if (adapterIds.length) {
      await warm(client, adapterIds);
      rows.push(await measure(client, `engine warm process, ${adapterIds.length} LoRA adapters`, adapterIds));
      const per = Math.max(1, Math.ceil(PARALLEL / adapterIds.length));
      for (const [i, id] of adapterIds.entries()) {
        const lora = await gguf(MODEL_DIR, ADAPTERS[i], path.join(WORK, `gguf-lora-${i}`), 'f16');
        await deployModel(ctx, id, { backend: 'llamacpp', gguf: q8, lora, parallel: per, context_size: 512 });
      }
      await warm(client, adapterIds);
      rows.push(await measure(client, `llama.cpp q8_0, ${adapterIds.length} LoRA adapters (${per} sequences each)`, adapterIds));
    }
  } finally {
    // The warm engine's process does not keep Node alive (by design): without this timer Node would exit
    // while waiting for it to stop, before RESULT is printed.
    const keepAlive = setInterval(() => {}, 1000);
    await server.close();
    await closeChatEngine();
    clearInterval(keepAlive);
    ctx.close();
    rmSync(home, { recursive: true, force: true });
  }
  process.stdout.write(`RESULT ${JSON.stringify({ rows })}\n`);
}

await main();
