// pullModel against a local HTTP server that answers the way the Hugging Face Hub and ModelScope do:
// a JSON file listing, a 302 from `resolve/` to a CDN path, Range requests answered with 206.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, beforeEach, describe, test } from 'node:test';
import { openContext, type Context } from '../context.js';
import { WeitiaoError } from '../errors.js';
import { deleteModel, pullModel, resolveModel, retrieveModel, type PullProgress } from './index.js';

const WEIGHTS = randomBytes(300_000);
const FILES: Record<string, Buffer> = {
  'config.json': Buffer.from(JSON.stringify({ model_type: 'qwen2', hidden_size: 64 })),
  'generation_config.json': Buffer.from('{"eos_token_id": 2}'),
  'tokenizer.json': Buffer.from(JSON.stringify({ model: { vocab: { 好评: 0, 差评: 1 } } })),
  'tokenizer_config.json': Buffer.from('{"chat_template": "{{ messages }}"}'),
  'merges.txt': Buffer.from('#version: 0.2\n'),
  'model.safetensors': WEIGHTS,
  // Everything below must be left alone.
  'pytorch_model.bin': randomBytes(1000),
  '.gitattributes': Buffer.from('*.safetensors filter=lfs\n'),
  'README.md': Buffer.from('# 模型卡\n'),
  'original/consolidated.pth': randomBytes(100),
  'assets/logo.png': randomBytes(50),
};
const WANTED = ['config.json', 'generation_config.json', 'merges.txt', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json'];
let COMMIT = 'a'.repeat(40);
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const LFS = (name: string) => name.endsWith('.safetensors') || name.endsWith('.bin') || name.endsWith('.pth') || name.endsWith('.png');

interface Seen {
  url: string;
  range?: string;
  authorization?: string;
}

/** The fake hub: repos `acme/tiny`, `acme/corrupt` (wrong sha256 listed), `acme/gated` (needs token `good-token`). */
class FakeHub {
  server = http.createServer((req, res) => this.handle(req, res));
  seen: Seen[] = [];
  /** file name -> bytes after which the connection is cut, on the next request for it only. */
  breakAfter = new Map<string, number>();
  url = '';

  async start(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  stop(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = new URL(req.url!, 'http://x');
    this.seen.push({ url: req.url!, range: req.headers.range, authorization: req.headers.authorization });
    let m: RegExpExecArray | null;
    if ((m = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(url.pathname))) {
      const [repo, rev] = [m[1], decodeURIComponent(m[2])];
      if (!this.access(repo, req, res)) return;
      if (rev !== 'main' && rev !== COMMIT) return this.error(res, 404, 'RevisionNotFound', `Invalid rev id: ${rev}`);
      const blobs = url.searchParams.get('blobs') === 'true';
      const siblings = Object.entries(FILES).map(([name, data]) => {
        const s: Record<string, unknown> = { rfilename: name };
        if (blobs) {
          s.size = data.length;
          if (LFS(name)) s.lfs = { size: data.length, sha256: repo === 'acme/corrupt' && name === 'model.safetensors' ? '0'.repeat(64) : sha256(data) };
        }
        return s;
      });
      return this.json(res, { id: repo, sha: COMMIT, siblings });
    }
    if ((m = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname))) {
      const [repo, rev, file] = [m[1], decodeURIComponent(m[2]), decodeURIComponent(m[3])];
      if (!this.access(repo, req, res)) return;
      if (rev !== COMMIT) return this.error(res, 404, 'RevisionNotFound', 'resolve by the listed commit');
      if (!FILES[file]) return this.error(res, 404, 'EntryNotFound', file);
      // Like the Hub: LFS files redirect to the CDN, small files are served in place.
      if (LFS(file)) {
        res.writeHead(302, { location: `/cdn/${sha256(FILES[file])}?name=${encodeURIComponent(file)}` });
        return void res.end();
      }
      return this.file(req, res, file);
    }
    if ((m = /^\/cdn\/([0-9a-f]{64})$/.exec(url.pathname))) return this.file(req, res, url.searchParams.get('name')!);
    if ((m = /^\/api\/v1\/models\/([^/]+\/[^/]+)\/repo\/files$/.exec(url.pathname))) {
      if (m[1] !== 'acme/tiny') return this.json(res, { Code: 10010205, Message: 'model not exists', Success: false });
      const files = [
        { Path: 'original', Name: 'original', Type: 'tree', Size: 0, Sha256: '' },
        ...Object.entries(FILES).map(([name, data]) => ({ Path: name, Name: path.basename(name), Type: 'blob', Size: data.length, Sha256: sha256(data) })),
      ];
      return this.json(res, { Code: 200, Data: { Files: files }, Message: 'success', Success: true });
    }
    if ((m = /^\/api\/v1\/models\/([^/]+\/[^/]+)\/repo$/.exec(url.pathname))) {
      const file = url.searchParams.get('FilePath')!;
      if (url.searchParams.get('Revision') !== 'master' || !FILES[file]) return this.error(res, 404, null, 'not found');
      return this.file(req, res, file);
    }
    this.error(res, 404, null, 'no route');
  }

  private access(repo: string, req: http.IncomingMessage, res: http.ServerResponse): boolean {
    if (repo === 'acme/gated' && req.headers.authorization !== 'Bearer good-token') {
      this.error(res, 401, 'GatedRepo', 'Access to model acme/gated is restricted.');
      return false;
    }
    if (!['acme/tiny', 'acme/corrupt', 'acme/gated'].includes(repo)) {
      this.error(res, 404, 'RepoNotFound', 'Repository not found');
      return false;
    }
    return true;
  }

  private file(req: http.IncomingMessage, res: http.ServerResponse, name: string): void {
    const data = FILES[name];
    const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    let body = data;
    if (range) {
      const start = Number(range[1]);
      if (start >= data.length) {
        res.writeHead(416, { 'content-range': `bytes */${data.length}` });
        return void res.end();
      }
      body = data.subarray(start);
      res.writeHead(206, { 'content-length': body.length, 'content-range': `bytes ${start}-${data.length - 1}/${data.length}`, 'accept-ranges': 'bytes' });
    } else {
      res.writeHead(200, { 'content-length': body.length, 'accept-ranges': 'bytes' });
    }
    const cut = this.breakAfter.get(name);
    if (cut !== undefined) {
      this.breakAfter.delete(name);
      // Send the first `cut` bytes, then drop the connection mid-body.
      res.write(body.subarray(0, cut), () => setTimeout(() => res.socket?.destroy(), 20));
      return;
    }
    res.end(body);
  }

  private json(res: http.ServerResponse, body: unknown): void {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  }

  private error(res: http.ServerResponse, status: number, code: string | null, message: string): void {
    res.writeHead(status, { 'content-type': 'application/json', ...(code ? { 'x-error-code': code, 'x-error-message': message } : {}) });
    res.end(JSON.stringify({ error: message }));
  }
}

const hub = new FakeHub();
let ctx: Context;
let home: string;

before(() => hub.start());
after(() => hub.stop());
beforeEach(() => {
  ctx?.close();
  if (home) rmSync(home, { recursive: true, force: true });
  home = mkdtempSync(path.join(os.tmpdir(), 'weitiao-hub-'));
  ctx = openContext({ home });
  hub.seen = [];
  hub.breakAfter.clear();
});
after(() => {
  ctx?.close();
  rmSync(home, { recursive: true, force: true });
});

function assertPulled(dir: string): void {
  // Besides the model files, only the marker of the snapshot they came from (the lock is gone).
  assert.deepEqual(readdirSync(dir).sort(), ['.weitiao-pull.json', ...WANTED]);
  for (const name of WANTED) assert.ok(readFileSync(path.join(dir, name)).equals(FILES[name]), `${name} is byte-identical`);
}

async function rejects(p: Promise<unknown>): Promise<WeitiaoError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof WeitiaoError, `a WeitiaoError, got ${String(err)}`);
    return err;
  }
  assert.fail('expected the pull to fail');
}

describe('pullModel from a Hugging Face-like hub', () => {
  test('fetches only the model files, follows the CDN redirect, registers the model', async () => {
    const progress: PullProgress[] = [];
    const model = await pullModel(ctx, { repo: 'acme/tiny', endpoint: hub.url, onProgress: (p) => progress.push(p) });
    const dir = path.join(home, 'models', 'acme', 'tiny');
    assertPulled(dir);
    assert.equal(model.id, 'acme/tiny');
    assert.equal(model.owned_by, 'acme');
    assert.deepEqual(
      { kind: model.weitiao.kind, source: model.weitiao.source, path: model.weitiao.path },
      { kind: 'base', source: 'huggingface', path: dir },
    );
    assert.equal(model.weitiao.metadata.commit, COMMIT);
    assert.equal(model.weitiao.metadata.bytes, WANTED.reduce((n, f) => n + FILES[f].length, 0));
    assert.deepEqual(resolveModel(ctx, 'acme/tiny'), { id: 'acme/tiny', kind: 'base', basePath: dir, adapterPath: null, baseId: 'acme/tiny' });
    // Files were resolved by the listed commit, the weights through the redirect; nothing unwanted was asked for.
    assert.ok(hub.seen.some((s) => s.url === `/acme/tiny/resolve/${COMMIT}/model.safetensors`));
    assert.ok(hub.seen.some((s) => s.url.startsWith(`/cdn/${sha256(WEIGHTS)}`)));
    assert.ok(!hub.seen.some((s) => /pytorch_model|README|original|logo|gitattributes/.test(s.url)));
    const last = progress.filter((p) => p.file === 'model.safetensors').at(-1)!;
    assert.deepEqual([last.downloaded, last.total, last.count], [WEIGHTS.length, WEIGHTS.length, WANTED.length]);

    // Pulling again finds every file complete: only the listing is fetched.
    hub.seen = [];
    await pullModel(ctx, { repo: 'acme/tiny', endpoint: hub.url });
    assert.deepEqual(
      hub.seen.map((s) => s.url),
      [`/api/models/acme/tiny/revision/main?blobs=true`],
    );

    // Deleting it (base models need force) removes the download, and the empty org folder with it.
    deleteModel(ctx, 'acme/tiny', { force: true });
    assert.ok(!existsSync(path.join(home, 'models', 'acme')));
    assert.ok(existsSync(path.join(home, 'models')));
  });

  test('pulling a newer commit into the same folder replaces files even when their size is unchanged', async () => {
    const dir = path.join(home, 'models', 'acme', 'tiny');
    await pullModel(ctx, { repo: 'acme/tiny', endpoint: hub.url });
    const [oldCommit, oldConfig] = [COMMIT, FILES['config.json']];
    try {
      COMMIT = 'b'.repeat(40);
      FILES['config.json'] = Buffer.from(oldConfig.toString().replace('64', '32'));
      assert.equal(FILES['config.json'].length, oldConfig.length);
      const model = await pullModel(ctx, { repo: 'acme/tiny', endpoint: hub.url });
      assertPulled(dir);
      assert.equal(JSON.parse(readFileSync(path.join(dir, 'config.json'), 'utf8')).hidden_size, 32);
      assert.equal(model.weitiao.metadata.commit, COMMIT);
    } finally {
      [COMMIT, FILES['config.json']] = [oldCommit, oldConfig];
    }
  });

  test('an interrupted download leaves a partial file that the next pull continues with a Range request', async () => {
    const cut = 123_457;
    hub.breakAfter.set('model.safetensors', cut);
    const err = await rejects(pullModel(ctx, { repo: 'acme/tiny', endpoint: hub.url, retries: 0 }));
    assert.match(err.message, /model\.safetensors/);
    assert.match(err.message, /pull again/);
    const dir = path.join(home, 'models', 'acme', 'tiny');
    const partial = path.join(dir, 'model.safetensors.partial');
    assert.equal(statSync(partial).size, cut);
    assert.ok(!existsSync(path.join(dir, 'model.safetensors')));
    assert.throws(() => retrieveModel(ctx, 'acme/tiny'), /not found/);

    hub.seen = [];
    await pullModel(ctx, { repo: 'acme/tiny', endpoint: hub.url, retries: 0 });
    const ranged = hub.seen.filter((s) => s.range);
    assert.deepEqual(
      ranged.map((s) => s.range),
      [`bytes=${cut}-`, `bytes=${cut}-`], // the resolve URL, then the CDN it redirects to
    );
    assertPulled(dir);
    assert.ok(!existsSync(partial));
  });

  test('within one pull, a broken connection is retried from where it stopped', async () => {
    hub.breakAfter.set('model.safetensors', 50_000);
    await pullModel(ctx, { repo: 'acme/tiny', endpoint: hub.url });
    assert.ok(hub.seen.some((s) => s.url.startsWith('/cdn/') && s.range === 'bytes=50000-'));
    assertPulled(path.join(home, 'models', 'acme', 'tiny'));
  });

  test('a sha256 mismatch is an error and the bad download is removed', async () => {
    const err = await rejects(pullModel(ctx, { repo: 'acme/corrupt', endpoint: hub.url }));
    assert.equal(err.code, 'invalid_file');
    assert.match(err.message, /model\.safetensors: sha256 mismatch/);
    const dir = path.join(home, 'models', 'acme', 'corrupt');
    assert.ok(!existsSync(path.join(dir, 'model.safetensors')));
    assert.ok(!existsSync(path.join(dir, 'model.safetensors.partial')));
    assert.throws(() => retrieveModel(ctx, 'acme/corrupt'), /not found/);
  });

  test('unknown repository or revision: not_found naming it', async () => {
    const repo = await rejects(pullModel(ctx, { repo: 'acme/nope', endpoint: hub.url }));
    assert.equal(repo.code, 'not_found');
    assert.equal(repo.param, 'repo');
    assert.match(repo.message, /acme\/nope not found .*HTTP 404/);
    assert.match(repo.message, /找不到/);
    const rev = await rejects(pullModel(ctx, { repo: 'acme/tiny', revision: 'v9', endpoint: hub.url }));
    assert.equal(rev.code, 'not_found');
    assert.match(rev.message, /revision 'v9'/);
  });

  test('HF_ENDPOINT is honoured, and HF_TOKEN is sent to a gated repository', async () => {
    const saved = { endpoint: process.env.HF_ENDPOINT, token: process.env.HF_TOKEN };
    try {
      process.env.HF_ENDPOINT = hub.url;
      delete process.env.HF_TOKEN;
      const denied = await rejects(pullModel(ctx, { repo: 'acme/gated' }));
      assert.equal(denied.code, 'permission_denied');
      assert.match(denied.message, /HTTP 401.*gated.*Set HF_TOKEN/s);
      process.env.HF_TOKEN = 'good-token';
      await pullModel(ctx, { repo: 'acme/gated' });
      assertPulled(path.join(home, 'models', 'acme', 'gated'));
      const listing = hub.seen.filter((s) => s.url.startsWith('/api/models/acme/gated'));
      assert.equal(listing.at(-1)!.authorization, 'Bearer good-token');
    } finally {
      for (const [k, v] of [['HF_ENDPOINT', saved.endpoint], ['HF_TOKEN', saved.token]] as const) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });

  test('an unreachable endpoint suggests a mirror, ModelScope or a local copy', async () => {
    const closed = http.createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((resolve) => closed.close(resolve));
    const err = await rejects(pullModel(ctx, { repo: 'acme/tiny', endpoint: `http://127.0.0.1:${port}`, retries: 0 }));
    // A remote service that is down: 503 over HTTP, its own CLI exit code, not an internal error.
    assert.equal(err.code, 'unavailable');
    assert.equal(err.httpStatus, 503);
    assert.equal(err.exitCode, 10);
    assert.match(err.message, /cannot reach http:\/\/127\.0\.0\.1:\d+ \(.*ECONNREFUSED.*\)/);
    assert.match(err.message, /HF_ENDPOINT/);
    assert.match(err.message, /--source modelscope/);
    assert.match(err.message, /its path/);
    assert.match(err.message, /镜像/);
  });
});

describe('pullModel from a ModelScope-like hub', () => {
  test('lists recursively, skips folders, verifies sha256, registers with source modelscope', async () => {
    const model = await pullModel(ctx, { repo: 'acme/tiny', source: 'modelscope', endpoint: hub.url });
    assertPulled(path.join(home, 'models', 'acme', 'tiny'));
    assert.equal(model.weitiao.source, 'modelscope');
    assert.equal(model.weitiao.metadata.revision, 'master');
    assert.ok(hub.seen[0].url.startsWith('/api/v1/models/acme/tiny/repo/files?Revision=master&Recursive=true'));
    assert.ok(hub.seen.some((s) => s.url === '/api/v1/models/acme/tiny/repo?Revision=master&FilePath=model.safetensors'));
  });

  test('a missing ModelScope repository is not_found even when the server says so with HTTP 200', async () => {
    const err = await rejects(pullModel(ctx, { repo: 'acme/nope', source: 'modelscope', endpoint: hub.url }));
    assert.equal(err.code, 'not_found');
    assert.match(err.message, /ModelScope repository acme\/nope .*not found: model not exists/);
  });
});
