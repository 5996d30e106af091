// The token-length paths with the real engine: a tiny model built by `create-tiny`, then
// validateChatFile and datasetStats counting through `count-tokens` (chat template included).
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { runEngine } from '../engine/index.js';
import { datasetStats, validateChatFile } from './index.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const WAIMAI = path.resolve(repoRoot, '../shared/data/waimai_10k.csv');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'weitiao-data-engine-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const ok = (user: string, answer: string) =>
  JSON.stringify({
    messages: [
      { role: 'system', content: '你是评论专家。' },
      { role: 'user', content: user },
      { role: 'assistant', content: answer },
    ],
  });
const LONG = '这家店的菜真的很好吃，'.repeat(8);

describe('with the real engine on a tiny model', () => {
  // A 1-layer model whose context is 64 tokens, its BPE tokenizer trained on 300 waimai lines: the
  // real count-tokens path (chat template included) in about 30 s on 2 cores.
  test('too_many_tokens and stats use the base model tokenizer through count-tokens', async () => {
    const corpus = path.join(tmp, 'corpus.txt');
    writeFileSync(corpus, readFileSync(WAIMAI, 'utf8').split('\n').slice(0, 300).join('\n'));
    const modelDir = path.join(tmp, 'tiny');
    await runEngine('create-tiny', {
      output_dir: modelDir,
      corpus_files: [corpus],
      hidden_size: 32,
      num_hidden_layers: 1,
      num_attention_heads: 2,
      num_key_value_heads: 1,
      intermediate_size: 64,
      vocab_size: 512,
      max_position_embeddings: 64,
    });
    const maxLength = JSON.parse(readFileSync(path.join(modelDir, 'config.json'), 'utf8')).max_position_embeddings;
    assert.equal(maxLength, 64);

    const chat = path.join(tmp, 'lengths.jsonl');
    writeFileSync(chat, [ok('好吃', '好评'), ok(LONG, '好评'), ok('很快', '好评')].join('\n') + '\n');
    const report = await validateChatFile(chat, { model_dir: modelDir });
    assert.equal(report.max_length, maxLength);
    assert.equal(report.token_counts!.length, 3);
    const [short, long] = report.token_counts!;
    assert.ok(short > 0 && short <= maxLength && long > maxLength, `counts ${report.token_counts}`);
    assert.deepEqual(
      report.errors.map((e) => [e.line, e.field, e.code]),
      [[2, 'messages', 'too_many_tokens']],
    );

    const stats = await datasetStats(chat, { model_dir: modelDir });
    assert.equal(stats.token_unit, 'tokens');
    assert.equal(stats.tokens_per_example!.max, Math.max(...report.token_counts!));
    // Trained tokens are "好评" (one or two tokens with this tiny vocabulary) and <|im_end|>; no role headers.
    const trained = stats.assistant_tokens_per_example!;
    assert.ok(trained.min === trained.max && trained.min >= 2 && trained.max <= 3, JSON.stringify(trained));
    assert.equal(stats.total_assistant_tokens, 3 * trained.max);
    assert.equal(stats.over_max_length, 1);
  });
});
