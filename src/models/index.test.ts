// The model registry on a real store, with a real tiny model built by the engine from the waimai reviews.
import assert from 'node:assert/strict';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { openContext, type Context } from '../context.js';
import { WeitiaoError } from '../errors.js';
import {
  addLocalModel,
  createTinyModel,
  deleteModel,
  listModels,
  registerModel,
  resolveModel,
  retrieveModel,
  type ModelObject,
} from './index.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const WAIMAI = path.resolve(REPO, '../shared/data/waimai_10k.csv');
// This file checks the engine's own build (and the cache on a directory of its own): not the test runner's cache.
delete process.env.WEITIAO_TINY_CACHE;

let home: string;
let ctx: Context;
let tiny: ModelObject;
const phases: string[] = [];

before(async () => {
  home = mkdtempSync(path.join(os.tmpdir(), 'weitiao-models-'));
  ctx = openContext({ home });
  tiny = await createTinyModel(ctx, {
    name: 'tiny-qwen2',
    corpusFiles: [WAIMAI],
    hiddenSize: 64,
    layers: 2,
    vocabSize: 1024,
    onProgress: (p) => phases.push(p.phase),
  });
});
after(() => {
  ctx.close();
  rmSync(home, { recursive: true, force: true });
});

/** A fake adapter directory inside the home, as a job leaves it. */
function adapterDir(...parts: string[]): string {
  const dir = path.join(home, 'jobs', ...parts);
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'adapter_config.json'), '{"r": 8}');
  return dir;
}

function code(fn: () => unknown): WeitiaoError {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof WeitiaoError, String(err));
    return err;
  }
  assert.fail('expected an error');
}

describe('createTinyModel', () => {
  test('builds a Hugging Face model directory under models/ and registers it', () => {
    const dir = path.join(home, 'models', 'tiny-qwen2');
    for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']) assert.ok(existsSync(path.join(dir, f)), f);
    const config = JSON.parse(readFileSync(path.join(dir, 'config.json'), 'utf8'));
    assert.deepEqual([config.model_type, config.hidden_size, config.num_hidden_layers, config.vocab_size], ['qwen2', 64, 2, 1024]);
    assert.equal(config.intermediate_size, 256);
    assert.equal(tiny.weitiao.source, 'tiny');
    assert.equal(tiny.weitiao.path, dir);
    assert.equal(tiny.weitiao.metadata.vocab_size, 1024);
    assert.ok((tiny.weitiao.metadata.parameters as number) > 100_000);
    assert.deepEqual([...new Set(phases)], ['tokenizer', 'model', 'save']);
    assert.deepEqual(retrieveModel(ctx, 'tiny-qwen2'), tiny);
  });

  test('refuses a name in use, a bad name, or a missing corpus before starting the engine', async () => {
    await assert.rejects(createTinyModel(ctx, { name: 'tiny-qwen2', corpusFiles: [WAIMAI] }), { code: 'conflict', param: 'name' });
    await assert.rejects(createTinyModel(ctx, { name: '../escape', corpusFiles: [WAIMAI] }), { code: 'invalid_request', param: 'name' });
    await assert.rejects(createTinyModel(ctx, { name: 'other', corpusFiles: [path.join(home, 'nope.csv')] }), {
      code: 'invalid_file',
      param: 'corpus_files',
    });
  });

  test('with WEITIAO_TINY_CACHE, two concurrent builds of one request run the engine once and get the same files', async () => {
    process.env.WEITIAO_TINY_CACHE = path.join(home, 'tiny-cache');
    try {
      const built: string[][] = [[], []];
      const options = { corpusFiles: [WAIMAI], hiddenSize: 64, layers: 2, vocabSize: 512, seed: 3 };
      const [a, b] = await Promise.all(
        ['cached-a', 'cached-b'].map((name, i) => createTinyModel(ctx, { ...options, name, onProgress: (p) => built[i].push(p.phase) })),
      );
      assert.equal(built.filter((phases) => phases.length > 0).length, 1, 'one engine build, one copy');
      assert.deepEqual({ ...b.weitiao.metadata }, { ...a.weitiao.metadata });
      assert.equal(b.weitiao.metadata.vocab_size, 512);
      for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) {
        assert.ok(readFileSync(path.join(b.weitiao.path, f)).equals(readFileSync(path.join(a.weitiao.path, f))), f);
      }
      assert.deepEqual([a.weitiao.path, b.weitiao.path], ['cached-a', 'cached-b'].map((n) => path.join(home, 'models', n)));
    } finally {
      delete process.env.WEITIAO_TINY_CACHE;
    }
  });
});

describe('registry', () => {
  test('fine-tuned models and checkpoints resolve to their base directory plus their adapter', () => {
    const ftDir = adapterDir('ftjob-1', 'model');
    const ckDir = adapterDir('ftjob-1', 'checkpoints', 'step-000010');
    const ft = registerModel(ctx, {
      id: 'ft:tiny-qwen2:外卖:abc123',
      kind: 'fine-tuned',
      path: ftDir,
      base_model: 'tiny-qwen2',
      job_id: 'ftjob-1',
      source: 'training',
      metadata: { training_file: 'file-1', 说明: '中文元数据' },
    });
    registerModel(ctx, { id: 'ft:tiny-qwen2:外卖:abc123:ckpt-step-10', kind: 'checkpoint', path: ckDir, base_model: 'tiny-qwen2', job_id: 'ftjob-1', source: 'training' });
    assert.equal(ft.weitiao.metadata.说明, '中文元数据');
    const base = path.join(home, 'models', 'tiny-qwen2');
    assert.deepEqual(resolveModel(ctx, 'ft:tiny-qwen2:外卖:abc123'), {
      id: 'ft:tiny-qwen2:外卖:abc123',
      kind: 'fine-tuned',
      basePath: base,
      adapterPath: ftDir,
      baseId: 'tiny-qwen2',
    });
    assert.deepEqual(resolveModel(ctx, 'ft:tiny-qwen2:外卖:abc123:ckpt-step-10'), {
      id: 'ft:tiny-qwen2:外卖:abc123:ckpt-step-10',
      kind: 'checkpoint',
      basePath: base,
      adapterPath: ckDir,
      baseId: 'tiny-qwen2',
    });
    assert.deepEqual(
      listModels(ctx, { kind: 'checkpoint' }).data.map((m) => m.id),
      ['ft:tiny-qwen2:外卖:abc123:ckpt-step-10'],
    );
    assert.equal(listModels(ctx).object, 'list');
    assert.ok(listModels(ctx).data.length >= 3);
    // A fine-tune needs a base.
    assert.equal(code(() => registerModel(ctx, { id: 'ft:x', kind: 'fine-tuned', path: ftDir, source: 'training' })).param, 'base_model');
  });

  test('registering an id again updates it and keeps its creation time', () => {
    const first = registerModel(ctx, { id: 'again', kind: 'base', path: tiny.weitiao.path, source: 'local', metadata: { v: 1 } });
    const second = registerModel(ctx, { id: 'again', kind: 'base', path: tiny.weitiao.path, source: 'local', metadata: { v: 2 } });
    assert.equal(second.created, first.created);
    assert.deepEqual(second.weitiao.metadata, { v: 2 });
    assert.equal(listModels(ctx).data.filter((m) => m.id === 'again').length, 1);
    deleteModel(ctx, 'again', { force: true });
  });

  test('a path is never resolved, even to a model directory: models go by registered name', () => {
    const dir = path.join(home, 'models', 'tiny-qwen2');
    const relative = path.relative(process.cwd(), dir);
    for (const p of [dir, relative.startsWith('.') ? relative : `./${relative}`, home, '/etc', '~/models']) {
      const err = code(() => resolveModel(ctx, p));
      assert.equal(err.code, 'not_found');
      assert.equal(err.param, 'model');
      assert.match(err.message, /registered id, not a path: see `weitiao models list`, or register a model directory with `weitiao models add/);
      assert.doesNotMatch(err.message, /config\.json/);
    }
  });

  test('unknown ids are not_found with param model and close names suggested', () => {
    const err = code(() => retrieveModel(ctx, 'tiny-qwen'));
    assert.equal(err.code, 'not_found');
    assert.equal(err.param, 'model');
    assert.match(err.message, /model 'tiny-qwen' not found\. Did you mean 'tiny-qwen2'/);
    assert.match(err.message, /找不到模型/);
    assert.equal(code(() => resolveModel(ctx, 'Tiny_Qwen2')).code, 'not_found');
    assert.match(code(() => resolveModel(ctx, 'Tiny_Qwen2')).message, /tiny-qwen2/);
    assert.doesNotMatch(code(() => resolveModel(ctx, 'llama-70b')).message, /Did you mean/);
  });

  test('a fine-tune whose adapter directory vanished says so', () => {
    const dir = adapterDir('ftjob-gone', 'model');
    registerModel(ctx, { id: 'ft:tiny-qwen2::gone', kind: 'fine-tuned', path: dir, base_model: 'tiny-qwen2', job_id: 'ftjob-gone', source: 'training' });
    rmSync(dir, { recursive: true });
    assert.match(code(() => resolveModel(ctx, 'ft:tiny-qwen2::gone')).message, /files of model 'ft:tiny-qwen2::gone' are missing/);
    deleteModel(ctx, 'ft:tiny-qwen2::gone');
  });
});

describe('deleteModel', () => {
  test('deleting a fine-tuned model removes it, its checkpoint models and their directories, and nothing else', () => {
    const ftDir = adapterDir('ftjob-2', 'model');
    const ck1 = adapterDir('ftjob-2', 'checkpoints', 'step-000005');
    const ck2 = adapterDir('ftjob-2', 'checkpoints', 'step-000010');
    const otherCk = adapterDir('ftjob-3', 'checkpoints', 'step-000005');
    registerModel(ctx, { id: 'ft:tiny-qwen2::job2', kind: 'fine-tuned', path: ftDir, base_model: 'tiny-qwen2', job_id: 'ftjob-2', source: 'training' });
    registerModel(ctx, { id: 'ft:tiny-qwen2::job2:ckpt-step-5', kind: 'checkpoint', path: ck1, base_model: 'tiny-qwen2', job_id: 'ftjob-2', source: 'training' });
    registerModel(ctx, { id: 'ft:tiny-qwen2::job2:ckpt-step-10', kind: 'checkpoint', path: ck2, base_model: 'tiny-qwen2', job_id: 'ftjob-2', source: 'training' });
    registerModel(ctx, { id: 'ft:tiny-qwen2::job3:ckpt-step-5', kind: 'checkpoint', path: otherCk, base_model: 'tiny-qwen2', job_id: 'ftjob-3', source: 'training' });

    assert.deepEqual(deleteModel(ctx, 'ft:tiny-qwen2::job2'), { id: 'ft:tiny-qwen2::job2', object: 'model', deleted: true });
    const ids = listModels(ctx).data.map((m) => m.id);
    assert.ok(!ids.some((id) => id.startsWith('ft:tiny-qwen2::job2')));
    assert.ok(ids.includes('ft:tiny-qwen2::job3:ckpt-step-5'));
    for (const dir of [ftDir, ck1, ck2]) assert.ok(!existsSync(dir), `${dir} removed`);
    assert.ok(existsSync(otherCk));
    assert.ok(existsSync(path.join(home, 'jobs')));

    // A checkpoint on its own.
    deleteModel(ctx, 'ft:tiny-qwen2::job3:ckpt-step-5');
    assert.ok(!existsSync(otherCk));
    assert.equal(code(() => deleteModel(ctx, 'ft:tiny-qwen2::job3:ckpt-step-5')).code, 'not_found');
  });

  test('base models need force, and not while fine-tunes depend on them', () => {
    const denied = code(() => deleteModel(ctx, 'tiny-qwen2'));
    assert.equal(denied.code, 'permission_denied');
    assert.match(denied.message, /--force/);
    const conflict = code(() => deleteModel(ctx, 'tiny-qwen2', { force: true }));
    assert.equal(conflict.code, 'conflict');
    assert.match(conflict.message, /ft:tiny-qwen2:外卖:abc123/);
    assert.ok(existsSync(path.join(home, 'models', 'tiny-qwen2', 'config.json')));
    // Nor may new weights replace the ones those fine-tunes were trained on.
    const replace = createTinyModel(ctx, { name: 'tiny-qwen2', corpusFiles: [WAIMAI], overwrite: true });
    return assert.rejects(replace, { code: 'conflict', param: 'name' });
  });

  test('a local model is registered in place, validated, and its directory survives deletion', () => {
    const copy = path.join(home, 'elsewhere', 'my-model');
    cpSync(path.join(home, 'models', 'tiny-qwen2'), copy, { recursive: true });
    const local = addLocalModel(ctx, { name: 'my-model', path: copy });
    assert.deepEqual([local.weitiao.source, local.weitiao.path, local.weitiao.metadata.architecture], ['local', copy, 'qwen2']);
    assert.equal(resolveModel(ctx, 'my-model').basePath, copy);
    deleteModel(ctx, 'my-model', { force: true });
    assert.ok(existsSync(path.join(copy, 'model.safetensors')), 'the user’s own directory is left alone');

    rmSync(path.join(copy, 'tokenizer.json'));
    rmSync(path.join(copy, 'tokenizer_config.json'));
    const err = code(() => addLocalModel(ctx, { name: 'broken', path: copy }));
    assert.equal(err.code, 'invalid_request');
    assert.match(err.message, /no tokenizer/);
    assert.match(code(() => addLocalModel(ctx, { name: 'none', path: path.join(home, 'missing') })).message, /not a directory/);
  });

  test('a pulled or tiny base model deleted with force loses its files', () => {
    const dir = path.join(home, 'models', 'scratch');
    cpSync(path.join(home, 'models', 'tiny-qwen2'), dir, { recursive: true });
    registerModel(ctx, { id: 'scratch', kind: 'base', path: dir, source: 'tiny' });
    deleteModel(ctx, 'scratch', { force: true });
    assert.ok(!existsSync(dir));
    assert.ok(existsSync(path.join(home, 'models')));
  });
});
