#!/usr/bin/env node
// Memory benchmark (not a timed test): does a large upload, checked line by line at upload time, keep the
// server small and responsive? Starts `weitiao serve` (child process, 127.0.0.1, a temp home), streams a
// generated chat JSONL of Chinese reviews (500 MB by default, never built in memory) to POST /v1/files,
// polls /health every ~50 ms meanwhile, and prints the server's RSS before/peak/after (/proc/<pid>/status
// VmRSS, VmHWM), the growth, /health latency p50/p99/max, and pass/fail against the targets.
//
//   node bench/upload_memory.mjs [--mb 500] [--keep] [--compiled]          (make bench-upload)
//
// Targets (issue 13): RSS growth < 200 MB, /health < 100 ms throughout.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { values: args } = parseArgs({
  options: { mb: { type: 'string', default: '500' }, purpose: { type: 'string', default: 'fine-tune' }, keep: { type: 'boolean', default: false }, compiled: { type: 'boolean', default: false }, 'upload-to': { type: 'string' } },
});
const TARGET_BYTES = Number(args.mb) * 1e6;
if (args['upload-to']) {
  // The uploading side runs in its own process: generating 500 MB must not delay this process's /health polls.
  const answer = await upload(args['upload-to']);
  process.stdout.write(JSON.stringify(answer) + '\n');
  process.exit(0);
}
const TARGET_GROWTH_MB = 200;
const TARGET_HEALTH_MS = 100;

const home = mkdtempSync(path.join(os.tmpdir(), 'weitiao-bench-upload-'));
const port = await freePort();
// `weitiao serve` from the TypeScript sources (always the current code); --compiled: bin/weitiao.js (dist/, as installed).
const cli = args.compiled ? [path.join(REPO, 'bin', 'weitiao.js')] : ['--import', 'tsx', path.join(REPO, 'src', 'cli', 'main.ts')];
const server = spawn(process.execPath, [...cli, '--home', home, 'serve', '--no-auth', '--port', String(port)], {
  cwd: REPO,
  stdio: ['ignore', 'ignore', 'pipe'],
});
let serverLog = '';
server.stderr.on('data', (d) => (serverLog += d));
const base = `http://127.0.0.1:${port}`;
try {
  await waitForHealth();
  await sleep(2000); // let start-up settle before the baseline
  const before = memory(server.pid);
  console.log(`server pid ${server.pid}, RSS before ${mb(before.rss)} MB; uploading ${args.mb} MB of chat JSONL…`);

  const latencies = [];
  let polling = true;
  const poller = (async () => {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    while (polling) {
      const t0 = performance.now();
      await get(`${base}/health`, agent);
      latencies.push(performance.now() - t0);
      await sleep(50);
    }
    agent.destroy();
  })();

  const t0 = performance.now();
  const answer = await uploadInChild();
  const seconds = (performance.now() - t0) / 1000;
  polling = false;
  await poller;
  await sleep(2000);
  const after = memory(server.pid);

  const growth = (after.hwm - before.rss) / 1024;
  const sorted = [...latencies].sort((a, b) => a - b);
  const pct = (p) => sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
  const maxHealth = sorted.at(-1);
  console.log(`upload + check: HTTP ${answer.status} in ${seconds.toFixed(1)} s (${answer.bytes} bytes sent): ${answer.body.slice(0, 300)}`);
  console.log(`server RSS  before ${mb(before.rss)} MB  peak ${mb(after.hwm)} MB  after ${mb(after.rss)} MB  growth ${growth.toFixed(0)} MB`);
  console.log(`/health     ${latencies.length} polls  p50 ${pct(50).toFixed(1)} ms  p99 ${pct(99).toFixed(1)} ms  max ${maxHealth.toFixed(1)} ms`);
  const okMemory = growth < TARGET_GROWTH_MB;
  const okHealth = maxHealth < TARGET_HEALTH_MS;
  const okUpload = answer.status === 200;
  console.log(`${okMemory ? 'PASS' : 'FAIL'}  RSS growth ${growth.toFixed(0)} MB < ${TARGET_GROWTH_MB} MB`);
  console.log(`${okHealth ? 'PASS' : 'FAIL'}  /health max ${maxHealth.toFixed(1)} ms < ${TARGET_HEALTH_MS} ms (p99 ${pct(99).toFixed(1)} ms)`);
  console.log(`${okUpload ? 'PASS' : 'FAIL'}  the upload was stored`);
  process.exitCode = okMemory && okHealth && okUpload ? 0 : 1;
} catch (err) {
  console.error(err, '\nserver log:\n', serverLog);
  process.exitCode = 1;
} finally {
  server.kill('SIGTERM');
  await new Promise((r) => server.once('exit', r));
  if (!args.keep) rmSync(home, { recursive: true, force: true });
}

/** VmRSS (now) and VmHWM (peak since start), in kB. */
function memory(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (field) => Number(status.match(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm'))[1]);
  return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
}

function mb(kb) {
  return (kb / 1024).toFixed(0);
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

async function freePort() {
  const s = net.createServer().listen(0, '127.0.0.1');
  await new Promise((r) => s.once('listening', r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

async function waitForHealth() {
  for (let i = 0; i < 600; i++) {
    if (server.exitCode !== null) throw new Error(`server exited with ${server.exitCode}`);
    try {
      if ((await get(`${base}/health`)).status === 200) return;
    } catch {
      /* not listening yet */
    }
    await sleep(100);
  }
  throw new Error('server did not start in 60 s');
}

function get(url, agent) {
  return new Promise((resolve, reject) => {
    http
      .get(url, { agent }, (res) => {
        res.resume();
        res.on('end', () => resolve({ status: res.statusCode }));
      })
      .on('error', reject);
  });
}

/** Chat examples of varied Chinese reviews, generated a line at a time (never the whole file). */
function* chatLines() {
  const dishes = ['宫保鸡丁', '麻婆豆腐', '红烧肉', '酸菜鱼', '小笼包', '牛肉面', '煲仔饭', '水煮鱼', '回锅肉', '炒河粉'];
  const good = ['送餐很快，味道不错', '分量足，包装也很好', '热乎乎的，下次还点', '老板很贴心，还送了饮料'];
  const bad = ['等了两个小时，菜都凉了', '太咸了，吃不下去', '少送了一份米饭', '包装漏了，汤洒了一袋子'];
  for (let i = 0; ; i++) {
    const positive = i % 2 === 0;
    const review = `第${i}单：${dishes[i % dishes.length]}${(positive ? good : bad)[(i >> 1) % 4]}。`;
    yield JSON.stringify({
      messages: [
        { role: 'system', content: '你是一位外卖评论好评差评评论专家。' },
        { role: 'user', content: review },
        { role: 'assistant', content: positive ? '好评' : '差评' },
      ],
    }) + '\n';
  }
}

function uploadInChild() {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [fileURLToPath(import.meta.url), '--upload-to', base, '--mb', args.mb, '--purpose', args.purpose], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`uploader exited with ${code}`))));
  });
}

/** POST /v1/files as multipart (purpose first, then the file), chunked, with backpressure. */
function upload(base) {
  const boundary = `----weitiao-bench-${Date.now()}`;
  return new Promise((resolve, reject) => {
    const req = http.request(`${base}/v1/files`, { method: 'POST', headers: { 'content-type': `multipart/form-data; boundary=${boundary}` } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode, body, bytes: sent }));
    });
    req.on('error', reject);
    let sent = 0;
    const head =
      `--${boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n${args.purpose}\r\n` +
      `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="外卖-bench.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n`;
    req.write(head);
    const lines = chatLines();
    const pump = () => {
      while (sent < TARGET_BYTES) {
        // ~256 KB per write: large enough to be quick, small enough to stay bounded.
        let chunk = '';
        while (chunk.length < 128 * 1024) chunk += lines.next().value;
        const buf = Buffer.from(chunk);
        sent += buf.length;
        if (!req.write(buf)) return void req.once('drain', pump);
      }
      req.end(`\r\n--${boundary}--\r\n`);
    };
    pump();
  });
}
