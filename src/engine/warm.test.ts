// The warm inference process: through src/chat's chatCompletion, and the WarmEngine class directly,
// on a tiny model built from the waimai reviews plus a random LoRA adapter.
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { openContext, type Context } from '../context.js';
import { createTinyModel, registerModel, resolveModel } from '../models/index.js';
import { chatCompletion, type ChatCompletionParams, type ChatCompletionResult } from '../chat/index.js';
import { chatEngine, closeChatEngine } from '../chat/internal/runner.js';
import { enginePython, runEngine } from './index.js';
import { WarmEngine } from './warm.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const WAIMAI = path.resolve(REPO, '../shared/data/waimai_10k.csv');

// A LoRA adapter with random (non-zero) weights, so it really changes the answers.
const MAKE_ADAPTER = `
import sys, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
torch.manual_seed(7)
base = AutoModelForCausalLM.from_pretrained(sys.argv[1])
get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)).save_pretrained(sys.argv[2])
`;

let home: string;
let ctx: Context;

before(async () => {
  home = mkdtempSync(path.join(os.tmpdir(), 'weitiao-warm-'));
  ctx = openContext({ home });
  const tiny = await createTinyModel(ctx, { name: 'tiny', corpusFiles: [WAIMAI], hiddenSize: 64, layers: 2, vocabSize: 1024 });
  const adapter = path.join(home, 'adapter');
  await promisify(execFile)(enginePython(), ['-c', MAKE_ADAPTER, tiny.weitiao.path, adapter], { env: { ...process.env, OMP_WAIT_POLICY: 'PASSIVE' } });
  registerModel(ctx, { id: 'ft:tiny:warm:abc123', kind: 'fine-tuned', path: adapter, base_model: 'tiny', source: 'training' });
});
after(async () => {
  await closeChatEngine();
  ctx.close();
  rmSync(home, { recursive: true, force: true });
});

/** The pids of this process's `weitiao_engine serve` children. */
function servePids(): number[] {
  return execFileSync('ps', ['-o', 'pid=,args=', '--ppid', String(process.pid)], { encoding: 'utf8' })
    .split('\n')
    .filter((line) => line.includes('weitiao_engine serve'))
    .map((line) => Number(line.trim().split(/\s+/)[0]));
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function until(what: string, check: () => boolean, ms = 15_000): Promise<void> {
  for (const started = Date.now(); !check(); await new Promise((r) => setTimeout(r, 100))) {
    if (Date.now() - started > ms) assert.fail(`timed out waiting: ${what}`);
  }
}

type Message = { role: 'system' | 'user'; content: string };
const GOOD: Message[] = [
  { role: 'system', content: '你是一位外卖评论好评差评评论专家。' },
  { role: 'user', content: '味道不错，送餐也很快，下次还点！' },
];
const BAD: Message[] = [{ role: 'user', content: '太难吃了，再也不点了。' }];
const FT = 'ft:tiny:warm:abc123';

describe('chat through the warm engine', () => {
  test('concurrent requests mixing base and adapter share one process and equal sequential answers', async () => {
    const requests: ChatCompletionParams[] = [
      { model: 'tiny', messages: GOOD, temperature: 0, max_tokens: 16 },
      { model: FT, messages: GOOD, temperature: 0, max_tokens: 16 },
      { model: 'tiny', messages: BAD, temperature: 1, seed: 5, max_tokens: 16 },
      { model: FT, messages: BAD, temperature: 1, seed: 5, max_tokens: 16 },
    ];
    const engine = chatEngine();
    const starts = engine.starts;
    const streamed = requests.map(() => [] as string[]);
    const together = await Promise.all(requests.map((r, i) => chatCompletion(ctx, r, { onToken: (t) => streamed[i].push(t) })));
    const pid = engine.pid!;
    const one = [] as ChatCompletionResult[];
    for (const r of requests) one.push(await chatCompletion(ctx, r));

    assert.deepEqual(together, one);
    together.forEach((result, i) => assert.equal(streamed[i].join(''), result.text, `request ${i} streamed its own text`));
    assert.notEqual(together[0].text, together[1].text, 'the adapter changes the answer');
    assert.notEqual(together[2].text, together[3].text);
    assert.equal(engine.starts - starts, 1, 'one engine process for all eight requests');
    assert.equal(engine.pid, pid);
    assert.deepEqual(servePids(), [pid]);

    // The one-shot `chat` command (its own process, its own load of base + adapter) gives the same answer.
    const resolved = resolveModel(ctx, FT);
    const shot = await runEngine('chat', { model: resolved.basePath, adapter: resolved.adapterPath, messages: GOOD, temperature: 0, max_tokens: 16 });
    // chatCompletion also lists the answer as `choices` (OpenAI's n); the engine command answers one.
    const { choices: _choices, ...first } = together[1] as ChatCompletionResult & { choices?: unknown };
    assert.deepEqual(shot, first);
  });

  test('aborting a running request frees the queue without restarting the process', async () => {
    const engine = chatEngine();
    const pid = engine.pid;
    const stop = new AbortController();
    let tokens = 0;
    const long = chatCompletion(ctx, { model: FT, messages: GOOD, temperature: 1, seed: 1, max_tokens: 500 }, {
      signal: stop.signal,
      onToken: () => ++tokens === 1 && stop.abort(),
    });
    const next = chatCompletion(ctx, { model: 'tiny', messages: BAD, temperature: 0, max_tokens: 4 });
    await assert.rejects(long, { code: 'cancelled', message: /对话请求已取消/ });
    const started = Date.now();
    assert.ok((await next).text !== undefined);
    assert.ok(Date.now() - started < 10_000, 'the next request did not wait for 500 tokens');
    assert.equal(engine.pid, pid);
  });

  test('a killed engine fails its requests clearly and the next request starts a fresh one', async () => {
    const engine = chatEngine();
    const starts = engine.starts;
    let killed: number | undefined;
    const running = chatCompletion(ctx, { model: 'tiny', messages: GOOD, temperature: 1, seed: 2, max_tokens: 500 }, {
      onToken: () => {
        if (killed === undefined) process.kill((killed = engine.pid!), 'SIGKILL');
      },
    });
    const queued = chatCompletion(ctx, { model: FT, messages: GOOD, temperature: 0, max_tokens: 8 });
    for (const pending of [running, queued]) {
      await assert.rejects(pending, (err: Error & { code?: string }) => {
        assert.equal(err.code, 'engine_error');
        assert.match(err.message, /inference engine exited \(SIGKILL\)/);
        assert.match(err.message, /推理引擎进程意外退出/);
        return true;
      });
    }
    assert.ok(killed !== undefined);
    const answer = await chatCompletion(ctx, { model: FT, messages: GOOD, temperature: 0, max_tokens: 16 });
    assert.ok(answer.text.length > 0);
    assert.equal(engine.starts, starts + 1);
    assert.notEqual(engine.pid, killed);
    assert.deepEqual(servePids(), [engine.pid]);
    // An engine-side error (a model directory that does not exist) names the parameter; the process serves on.
    const pid = engine.pid;
    await assert.rejects(engine.request('chat', { model: path.join(home, '没有这个模型'), messages: GOOD }), { code: 'not_found', param: 'model' });
    assert.deepEqual(await chatCompletion(ctx, { model: FT, messages: GOOD, temperature: 0, max_tokens: 16 }), answer);
    assert.equal(engine.pid, pid);

    await closeChatEngine();
    assert.equal(engine.pid, undefined);
    await until('no engine process left', () => servePids().length === 0);
  });
});

describe('WarmEngine', () => {
  test('shuts the process down after the idle timeout; a bad request fails before reaching it', async () => {
    const engine = new WarmEngine({ idleTimeoutMs: 500 });
    await assert.rejects(engine.request('chat', { model: '', messages: [] }), { code: 'invalid_request', param: 'messages' });
    assert.equal(engine.starts, 0);
    const { basePath } = resolveModel(ctx, 'tiny');
    const result = await engine.request('chat', { model: basePath, messages: GOOD, temperature: 0, max_tokens: 4 });
    assert.equal(result.usage.completion_tokens <= 4, true);
    const pid = engine.pid!;
    assert.ok(alive(pid));
    await until('the idle engine exits', () => !alive(pid));
    assert.equal(engine.pid, undefined);
    await engine.close(); // nothing left to close: resolves at once
  });
});
