// Exports of a fine-tuned tiny model through the real engine, checked through llama.cpp itself
// (node-llama-cpp), plus a deliberately broken GGUF and the HTTP routes on a real server.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, renameSync, rmSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { enginePython, ENGINE_DIR } from '../engine/index.js';
import { createJob, retrieveJob, Worker } from '../jobs/index.js';
import { setUpFixture, type Fixture } from '../testing/jobs-fixture.js';
import { loadGguf, unloadGguf } from '../llamacpp/index.js';
import { startServer, type RunningServer } from '../api/index.js';
import { checkExport, createExport, ExportObject, listExports, retrieveExport, waitForExport } from './index.js';

let fx: Fixture;
let model: string;

before(async () => {
  fx = await setUpFixture('export');
  // Trained until it answers with a label and its end-of-turn token (24 steps at a high rate).
  const job = createJob(fx.ctx, {
    model: fx.model,
    training_file: fx.train,
    validation_file: fx.validation,
    suffix: 'waimai',
    seed: 7,
    method: { type: 'supervised', supervised: { hyperparameters: { n_epochs: 3, batch_size: 8, learning_rate_multiplier: 10 } } },
    weitiao: { lora: { r: 8, alpha: 16 } },
  });
  await new Worker(fx.ctx, { threads: 1 }).runNext();
  const done = retrieveJob(fx.ctx, job.id);
  assert.equal(done.status, 'succeeded', JSON.stringify(done.error));
  model = done.fine_tuned_model!;
});
after(() => fx?.close());

const exported = (id: string) => waitForExport(fx.ctx, id, undefined, 100);

describe('export with the post-export check (real engine, llama.cpp)', () => {
  for (const quantize of ['f16', 'q8_0'] as const) {
    test(`GGUF ${quantize}: llama.cpp agrees with the engine on the job's validation file`, async () => {
      const phases = new Set<string>();
      const created = createExport(fx.ctx, { model, format: 'gguf', quantize });
      assert.equal(created.status, 'queued');
      assert.match(created.id, /^export-/);
      const done = await waitForExport(fx.ctx, created.id, (e) => e.progress && phases.add(e.progress.phase.split(':')[0]), 100);
      ExportObject.parse(done);
      assert.equal(done.status, 'succeeded', JSON.stringify([done.error, done.check?.first_difference]));
      assert.equal(done.path, `exports/${done.id}`);
      assert.deepEqual(done.files?.map((f) => f.name), ['model.gguf']);
      assert.ok(phases.has('export') && phases.has('check'), [...phases].join());
      const check = done.check!;
      assert.equal(check.status, 'passed', check.reason);
      assert.equal(check.data, fx.validation);
      assert.deepEqual([check.n, check.mode, check.labels?.slice().sort()], [32, 'labels', ['好评', '差评'].sort()]);
      assert.ok(check.agreement! >= 0.99, `agreement ${check.agreement}`);
      assert.equal(check.threshold, 0.99);
      assert.equal(check.artifact.backend, 'llama.cpp');
      if (check.agreement === 1) assert.equal(check.artifact.accuracy, check.engine.accuracy);
      assert.equal(check.first_difference, null);
    });
  }

  test('a GGUF with wrong end-of-turn ids is caught: the export is marked failed, with both answers', async () => {
    const done = await exported(createExport(fx.ctx, { model, format: 'gguf', quantize: 'f16', check: false }).id);
    assert.equal(done.status, 'succeeded');
    assert.equal(done.check, null);
    // Rewrite the metadata with the gguf package: eos and eot become the first tokens of the two answers, the
    // classic wrong stop token (a tiny model answers the same under a broken template, so the ids are broken).
    const file = path.join(fx.ctx.home.root, done.path!, 'model.gguf');
    const gguf = await loadGguf(file);
    const [good, bad] = ['好评', '差评'].map((label) => gguf.tokenize(label)[0]);
    await unloadGguf(file);
    const original = file + '.orig';
    renameSync(file, original);
    execFileSync(
      enginePython(),
      ['-m', 'gguf.scripts.gguf_new_metadata', original, file, '--force', '--special-token-by-id', 'eos', String(good), '--special-token-by-id', 'eot', String(bad)],
      { cwd: ENGINE_DIR, stdio: 'pipe' },
    );
    rmSync(original);
    const rechecked = await checkExport(fx.ctx, done.id);
    assert.equal(rechecked.status, 'failed', JSON.stringify(rechecked.check));
    assert.equal(rechecked.check!.status, 'failed');
    assert.ok(rechecked.check!.agreement! < 0.99, String(rechecked.check!.agreement));
    assert.equal(rechecked.error!.code, 'unprocessable');
    assert.match(rechecked.error!.message, /agreement.*一致率/s);
    const d = rechecked.check!.first_difference!;
    assert.ok(['好评', '差评'].includes(d.engine), d.engine); // the trained model answers with a label
    assert.notEqual(d.artifact, d.engine);
  });

  test('a base model without data: the check says it was skipped; hf adapter_only is refused for a base', async () => {
    const done = await exported(createExport(fx.ctx, { model: fx.model, format: 'gguf', quantize: 'q8_0' }).id);
    assert.equal(done.status, 'succeeded');
    assert.equal(done.check!.status, 'skipped');
    assert.match(done.check!.reason, /no data.*没有/);
    assert.throws(() => createExport(fx.ctx, { model: fx.model, format: 'hf', adapterOnly: true }), (e: any) => e.code === 'invalid_request' && e.param === 'adapter_only');
    assert.throws(() => createExport(fx.ctx, { model: 'nope', format: 'gguf' }), (e: any) => e.code === 'not_found');
  });

  // The Ollama export is made through the API (one export and check, not one per shell): the service's answer is the API's.
  test('API: create an Ollama export (202, queued), retrieve until done, its Modelfile and import command, list, download the .gguf and a tar, cancel a finished one (409)', async () => {
    const server: RunningServer = await startServer(fx.ctx, { host: '127.0.0.1', port: 0, auth: false, worker: false, handleSignals: false, log: () => {}, webDir: null });
    try {
      const api = (p: string, init?: RequestInit) => fetch(`${server.url}/v1/weitiao${p}`, init);
      const res = await api(`/models/${encodeURIComponent(model)}/exports`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ format: 'ollama', quantize: 'q8_0', check_max_examples: 4 }),
      });
      assert.equal(res.status, 202);
      const created = ExportObject.parse(await res.json());
      assert.deepEqual([created.status, created.model, created.format], ['queued', model, 'ollama']);
      let current = created;
      while (['queued', 'running'].includes(current.status)) {
        await new Promise((r) => setTimeout(r, 200));
        current = ExportObject.parse(await (await api(`/exports/${created.id}`)).json());
      }
      assert.equal(current.status, 'succeeded', JSON.stringify(current.error));
      assert.equal(current.check!.n, 4);
      // The Modelfile: template checked against the Jinja one, stop tokens, the training system prompt; the import command.
      const dir = path.join(fx.ctx.home.root, current.path!);
      const text = readFileSync(path.join(dir, 'Modelfile'), 'utf8');
      assert.match(text, /^FROM \.\/model\.gguf\n/);
      assert.match(text, /TEMPLATE """[\s\S]*<\|im_start\|>assistant\n[\s\S]*"""/);
      for (const stop of current.artifact!.stop_tokens) assert.ok(text.includes(`PARAMETER stop ${JSON.stringify(stop)}`), stop);
      assert.ok(current.artifact!.stop_tokens.includes('<|im_end|>'));
      assert.ok(text.includes('SYSTEM """你是一位外卖评论好评差评评论专家。"""'));
      assert.match(current.ollama!.command, /^ollama create tiny-waimai-[a-z0-9]+ -f Modelfile$/);
      assert.ok(readFileSync(path.join(dir, 'README.md'), 'utf8').includes(current.ollama!.command));
      assert.deepEqual(current.check!.template, { status: 'passed', first_difference: null });
      const body = JSON.stringify(current);
      assert.ok(!body.includes(fx.ctx.home.root), 'no absolute server path in API answers');

      const list = (await (await api(`/exports?model=${encodeURIComponent(model)}&limit=100`)).json()) as any;
      assert.ok(list.data.some((e: any) => e.id === created.id));
      assert.equal(list.data.length, listExports(fx.ctx, { model, limit: 100 }).data.length);

      const tar = Buffer.from(await (await api(`/exports/${created.id}/content`)).arrayBuffer());
      const names: string[] = [];
      for (let at = 0; at + 512 <= tar.length && tar[at] !== 0; ) {
        const name = tar.subarray(at, at + 100).toString('utf8').replace(/\0.*$/s, '');
        const size = parseInt(tar.subarray(at + 124, at + 136).toString('ascii'), 8);
        names.push(name);
        if (name.endsWith('Modelfile')) {
          const local = readFileSync(path.join(fx.ctx.home.root, current.path!, 'Modelfile'));
          assert.ok(tar.subarray(at + 512, at + 512 + size).equals(local));
        }
        at += 512 + Math.ceil(size / 512) * 512;
      }
      assert.deepEqual(names.sort(), [`${created.id}/Modelfile`, `${created.id}/README.md`, `${created.id}/model.gguf`]);

      const ggufExport = listExports(fx.ctx, { model, limit: 100 }).data.find((e) => e.format === 'gguf' && e.status === 'succeeded')!;
      const file = await api(`/exports/${ggufExport.id}/content`);
      assert.equal(file.headers.get('content-type'), 'application/octet-stream');
      const bytes = Buffer.from(await file.arrayBuffer());
      assert.equal(bytes.subarray(0, 4).toString('ascii'), 'GGUF');
      assert.equal(bytes.length, ggufExport.files![0].bytes);

      const cancel = await api(`/exports/${created.id}/cancel`, { method: 'POST' });
      assert.equal(cancel.status, 409);
      assert.equal(((await cancel.json()) as any).error.code, 'conflict');
      assert.equal((await api('/exports/export-nope')).status, 404);

      const openapi = (await (await fetch(`${server.url}/openapi.json`)).json()) as any;
      assert.ok(openapi.paths['/v1/weitiao/models/{model}/exports'].post);
      assert.ok(openapi.paths['/v1/weitiao/exports/{export_id}/content'].get);
      assert.equal(retrieveExport(fx.ctx, created.id).status, 'succeeded');
    } finally {
      await server.close();
    }
  });
});
