// The server side of remote workers over real HTTP (startServer on 127.0.0.1, worker off, auth on, real SQLite in
// a temp home): claims, inputs, events, checkpoint and result uploads, finish, cancel, and the lease reaper. The
// test plays the worker itself with plain fetch; one real engine run (2 steps) supplies the engine's events,
// checkpoints and model, and its recorded events are replayed on a second job for the reaper and the resume.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as tar from 'tar';
import { startServer, type RunningServer } from '../api/index.js';
import { runEngine, type EngineEvent } from '../engine/index.js';
import { createJob, listJobCheckpoints, listJobEvents, retrieveJob, type FineTuningJob } from '../jobs/index.js';
import { createKey } from '../keys/index.js';
import { retrieveModel } from '../models/index.js';
import { setUpFixture, type Fixture } from '../testing/jobs-fixture.js';
import { ClaimResponse, SHA256_HEADER, WORKER_PROTOCOL_VERSION, WORKERS_PATH, type FinishRequest } from './protocol.js';

let fx: Fixture;
let server: RunningServer;
let workerKey: string;
let memberKey: string;
const jobs: string[] = [];
const savedLease = process.env.WEITIAO_LEASE_SECONDS;

const worker = { name: 'gpu-1', host: 'test-host', devices: [{ type: 'cpu' as const, name: 'cpu', memory_bytes: null }], memory_bytes: null };

async function call(method: string, route: string, init: { key?: string; json?: unknown; body?: Buffer; sha?: string } = {}): Promise<Response> {
  const headers: Record<string, string> = { authorization: `Bearer ${init.key ?? workerKey}` };
  let body: string | Uint8Array | undefined;
  if (init.json !== undefined) {
    headers['content-type'] = 'application/json';
    body = JSON.stringify(init.json);
  } else if (init.body) {
    headers['content-type'] = 'application/x-tar';
    body = init.body;
  }
  if (init.sha) headers[SHA256_HEADER] = init.sha;
  return fetch(`${server.url}${route}`, { method, headers, body });
}

async function claim(methods: string[] = ['supervised'], key?: string): Promise<ClaimResponse | null> {
  const res = await call('POST', `${WORKERS_PATH}/claim`, { key, json: { protocol_version: WORKER_PROTOCOL_VERSION, worker: { ...worker, methods } } });
  if (res.status === 204) return null;
  assert.equal(res.status, 200, await res.clone().text());
  return ClaimResponse.parse(await res.json());
}

/** The response's status, with its body in the failure message (a flaky status says why). */
async function expectStatus(res: Response, status: number): Promise<void> {
  assert.equal(res.status, status, `${res.status} ${await res.clone().text()}`);
}

const lease = (c: ClaimResponse) => `${WORKERS_PATH}/leases/${c.lease.id}`;

async function postEvents(c: ClaimResponse, events: EngineEvent[]): Promise<Response> {
  return call('POST', `${lease(c)}/events`, { json: { events } });
}

/** A directory as tar bytes and their sha256, as the worker uploads it. */
async function tarOf(dir: string): Promise<{ body: Buffer; sha: string }> {
  const chunks: Buffer[] = [];
  for await (const chunk of tar.c({ cwd: dir, portable: true }, ['.']) as AsyncIterable<Buffer>) chunks.push(chunk);
  const body = Buffer.concat(chunks);
  return { body, sha: createHash('sha256').update(body).digest('hex') };
}

/** Every input of a claim into `workDir` at its name: files checked against their sha256, dirs extracted. */
async function download(c: ClaimResponse, workDir: string): Promise<void> {
  for (const input of c.inputs) {
    // Names as path segments either way: encoded (files here, as the worker client sends them) or plain (dirs).
    const res = await call('GET', `${lease(c)}/inputs/${input.kind === 'file' ? encodeURIComponent(input.name) : input.name}`);
    assert.equal(res.status, 200, input.name);
    const bytes = Buffer.from(await res.arrayBuffer());
    const target = path.join(workDir, input.name);
    if (input.kind === 'file') {
      assert.equal(createHash('sha256').update(bytes).digest('hex'), input.sha256);
      assert.equal(res.headers.get(SHA256_HEADER), input.sha256);
      mkdirSync(path.dirname(target), { recursive: true });
      writeFileSync(target, bytes);
    } else {
      mkdirSync(target, { recursive: true });
      const tarFile = `${target}.tar`;
      writeFileSync(tarFile, bytes);
      await tar.x({ file: tarFile, cwd: target });
    }
  }
}

const metricsSteps = (id: string) =>
  listJobEvents(fx.ctx, id, { limit: 1000, order: 'asc' })
    .data.filter((e) => e.type === 'metrics')
    .map((e) => (e.data as { step: number }).step);

async function until<T>(what: string, probe: () => T | undefined | null | false, deadlineMs = 120_000): Promise<T> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    const got = probe();
    if (got) return got;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

before(async () => {
  process.env.WEITIAO_LEASE_SECONDS = '600'; // the reaper test shortens it when it wants a lease to expire
  fx = await setUpFixture('leases');
  workerKey = createKey(fx.ctx, { name: 'gpu-1', role: 'worker' }).key;
  memberKey = createKey(fx.ctx, { name: 'alice', role: 'member' }).key;
  server = await startServer(fx.ctx, { port: 0, auth: true, worker: false, handleSignals: false, log: () => {}, webDir: null });
  for (let i = 0; i < 3; i++) {
    const job = createJob(fx.ctx, {
      model: fx.model,
      training_file: fx.train,
      validation_file: fx.validation,
      suffix: `remote${i}`,
      seed: 7,
      method: { type: 'supervised', supervised: { hyperparameters: { batch_size: 8, n_epochs: 1 } } },
      weitiao: { lora: { r: 4, alpha: 8 }, save_every_steps: 1, max_steps: 2 },
    });
    jobs.push(job.id);
  }
  // With the worker off, the API validates the jobs' files itself once remote workers ask for work: a claim for a
  // method no job has starts that (and gets 204) until all three are queued.
  const end = Date.now() + 600_000;
  while (!jobs.every((id) => retrieveJob(fx.ctx, id).status === 'queued')) {
    for (const id of jobs) assert.ok(['validating_files', 'queued'].includes(retrieveJob(fx.ctx, id).status), JSON.stringify(retrieveJob(fx.ctx, id).error));
    assert.ok(Date.now() < end, 'timed out waiting for the API to validate the jobs');
    assert.equal(await claim(['dpo']), null);
    await new Promise((r) => setTimeout(r, 300));
  }
});

after(async () => {
  await server?.close();
  fx?.close();
  if (savedLease === undefined) delete process.env.WEITIAO_LEASE_SECONDS;
  else process.env.WEITIAO_LEASE_SECONDS = savedLease;
});

describe('remote worker leases over HTTP', () => {
  const claims: ClaimResponse[] = [];
  let recorded: EngineEvent[] = [];
  let workA = '';

  test('keys, version and methods: only worker or operator keys claim, a worker key calls nothing else', async () => {
    await expectStatus(await call('GET', '/v1/fine_tuning/jobs'), 403); // the worker key outside its routes
    const member = await call('POST', `${WORKERS_PATH}/claim`, { key: memberKey, json: { protocol_version: 1, worker: { ...worker, methods: ['supervised'] } } });
    await expectStatus(member, 403);
    const old = await call('POST', `${WORKERS_PATH}/claim`, { json: { protocol_version: 99, worker: { ...worker, methods: ['supervised'] } } });
    await expectStatus(old, 400);
    assert.match(((await old.json()) as { error: { message: string } }).error.message, /protocol.*99/);
    assert.equal(await claim(['dpo', 'reinforcement']), null); // only supervised jobs wait
  });

  test('two concurrent claimers get distinct jobs, a third the last, a fourth 204; no server path in the request', async () => {
    const [a, b] = await Promise.all([claim(), claim()]);
    assert.ok(a && b);
    assert.notEqual(a.lease.job_id, b.lease.job_id);
    const c = await claim();
    assert.ok(c);
    assert.deepEqual(new Set([a, b, c].map((x) => x.lease.job_id)), new Set(jobs));
    assert.equal(await claim(), null);
    for (const x of [a, b, c]) {
      assert.equal(retrieveJob(fx.ctx, x.lease.job_id).status, 'running');
      const wire = JSON.stringify(x);
      assert.ok(!wire.includes(fx.tmp), `server path in ${wire}`);
      assert.equal(x.request.base_model, 'inputs/base');
      assert.equal(x.request.output_dir, 'output');
      assert.equal(x.request.resume, false);
      assert.deepEqual(x.inputs.map((i) => i.name), ['inputs/base', 'inputs/training.jsonl', 'inputs/validation.jsonl']);
      assert.match(x.inputs[0].cache_key!, /^tiny@[0-9a-f]{16}$/);
    }
    claims.push(...[a, b, c].sort((x, y) => jobs.indexOf(x.lease.job_id) - jobs.indexOf(y.lease.job_id)));
  });

  test('a run relayed by a worker: events, uploaded checkpoints, result; the model registered as a local run registers it', async () => {
    const c = claims[0];
    workA = path.join(fx.tmp, 'worker-a');
    await download(c, workA);
    const at = (p: string | null) => (p === null ? null : path.join(workA, p));
    const request = { ...c.request, base_model: at(c.request.base_model)!, output_dir: at(c.request.output_dir)!, training_file: at(c.request.training_file)!, validation_file: at(c.request.validation_file), threads: 1 };
    // Relayed in engine order; a checkpoint's directory goes up before its event.
    let relay = Promise.resolve();
    const relayOne = async (e: EngineEvent) => {
      if (e.type === 'checkpoint') {
        const { body, sha } = await tarOf(e.path);
        const up = await call('PUT', `${lease(c)}/checkpoints/${e.step}`, { body, sha });
        assert.equal(up.status, 200, await up.clone().text());
      }
      const res = await postEvents(c, [e]);
      assert.equal(res.status, 200, await res.clone().text());
      assert.deepEqual(await res.json(), { requested_action: null });
    };
    const result = await runEngine('train', request, {
      onEvent: (e) => {
        recorded.push(e);
        relay = relay.then(() => relayOne(e));
      },
    });
    await relay;
    assert.ok(result.model_dir);
    const up = await tarOf(result.model_dir);
    await expectStatus(await call('PUT', `${lease(c)}/result`, { body: up.body, sha: up.sha }), 200);
    const finish: FinishRequest = { result, failure: null, engine_error: false, stop_reason: null };
    const res = await call('POST', `${lease(c)}/finish`, { json: finish });
    assert.equal(res.status, 200, await res.clone().text());
    assert.deepEqual(await res.json(), { job_id: c.lease.job_id, status: 'succeeded' });

    const done: FineTuningJob = retrieveJob(fx.ctx, c.lease.job_id);
    assert.equal(done.status, 'succeeded');
    assert.deepEqual(metricsSteps(done.id), [1, 2]);
    const model = retrieveModel(fx.ctx, done.fine_tuned_model!);
    assert.equal(model.weitiao.metadata.steps, 2);
    assert.equal(model.weitiao.metadata.format, 'lora');
    assert.equal(done.result_files.length, 1);
    const home = fx.ctx.home.jobs;
    assert.ok(existsSync(path.join(home, done.id, 'model', 'adapter_model.safetensors')));
    const checkpoints = listJobCheckpoints(fx.ctx, done.id, {}).data;
    assert.deepEqual(checkpoints.map((k) => k.step_number).sort(), [1, 2]);
    for (const k of [1, 2]) assert.ok(existsSync(path.join(home, done.id, 'checkpoints', `step-00000${k}`, 'manifest.json')));
    // The lease is gone with the job settled.
    await expectStatus(await call('POST', `${lease(c)}/heartbeat`), 409);
  });

  test('a cancel asked through the jobs API comes back as requested_action, and finish settles it cancelled', async () => {
    const c = claims[2];
    const asked = await call('POST', `/v1/fine_tuning/jobs/${c.lease.job_id}/cancel`, { key: memberKey });
    assert.equal(asked.status, 200, await asked.clone().text());
    const beat = await call('POST', `${lease(c)}/heartbeat`);
    assert.deepEqual(await beat.json(), { requested_action: 'cancel' });
    const res = await call('POST', `${lease(c)}/finish`, { json: { result: null, failure: null, engine_error: false, stop_reason: 'cancel' } });
    assert.deepEqual(await res.json(), { job_id: c.lease.job_id, status: 'cancelled' });
  });

  test('a wrong sha256 is refused and leaves no files; an unrenewed lease is reaped, the job resumes from its checkpoint, steps once', async () => {
    const c = claims[1];
    const id = c.lease.job_id;
    const ckptA = path.join(workA, 'output', 'checkpoints', 'step-000001');
    const good = await tarOf(ckptA);
    const bad = await call('PUT', `${lease(c)}/checkpoints/1`, { body: good.body, sha: '0'.repeat(64) });
    await expectStatus(bad, 400);
    const jobDir = path.join(fx.ctx.home.jobs, id);
    assert.deepEqual(existsSync(path.join(jobDir, 'checkpoints')) ? readdirSync(path.join(jobDir, 'checkpoints')) : [], []);
    // An event for a checkpoint the server does not hold is refused.
    const early = recorded.filter((e) => e.type === 'checkpoint')[0];
    await expectStatus(await postEvents(c, [early]), 400);

    // The first run gets through step 2 but only checkpoint 1 goes up.
    await expectStatus(await call('PUT', `${lease(c)}/checkpoints/1`, { body: good.body, sha: good.sha }), 200);
    const upToStep2 = recorded.filter((e) => e.type !== 'checkpoint' || e.step === 1).filter((e) => !(e.type === 'metrics' && e.step > 2));
    await expectStatus(await postEvents(c, upToStep2), 200);
    assert.deepEqual(metricsSteps(id), [1, 2]);

    process.env.WEITIAO_LEASE_SECONDS = '1';
    try {
      await until('the reaper to queue the job again', () => retrieveJob(fx.ctx, id).status === 'queued');
    } finally {
      process.env.WEITIAO_LEASE_SECONDS = '600';
    }
    const warn = listJobEvents(fx.ctx, id, { limit: 1000, order: 'asc' }).data.find((e) => e.level === 'warn' && /lease/.test(e.message));
    assert.ok(warn, 'a warn event names the expired lease');
    const lost = await call('POST', `${lease(c)}/heartbeat`);
    await expectStatus(lost, 409);
    assert.equal(((await lost.json()) as { error: { code: string } }).error.code, 'lease_lost');

    const again = await claim();
    assert.ok(again);
    assert.equal(again.lease.job_id, id);
    assert.equal(again.request.resume, true);
    assert.ok(again.inputs.some((i) => i.name === 'output/checkpoints/step-000001' && i.kind === 'dir'));
    const workB = path.join(fx.tmp, 'worker-b');
    await download(again, workB);
    assert.ok(existsSync(path.join(workB, 'output', 'checkpoints', 'step-000001', 'manifest.json')));
    assert.ok(listJobEvents(fx.ctx, id, { limit: 1000, order: 'asc' }).data.some((e) => /Resuming fine-tuning from checkpoint step-000001/.test(e.message)));
    // The resumed run trains step 2 again: it replaces the first run's figures, so the history holds it once.
    const step2 = recorded.filter((e) => e.type === 'metrics' && e.step === 2);
    await expectStatus(await postEvents(again, step2), 200);
    assert.deepEqual(metricsSteps(id), [1, 2]);
    const res = await call('POST', `${lease(again)}/finish`, { json: { result: null, failure: null, engine_error: false, stop_reason: 'shutdown' } });
    assert.deepEqual(await res.json(), { job_id: id, status: 'queued' });
    assert.equal(readFileSync(path.join(jobDir, 'checkpoints', 'step-000001', 'manifest.json'), 'utf8'), readFileSync(path.join(ckptA, 'manifest.json'), 'utf8'));
  });
});
