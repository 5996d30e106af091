/**
 * Downloading a model repository from the Hugging Face Hub (or a mirror such as hf-mirror.com) or from
 * ModelScope, resumably: each file is written to `<file>.partial`, continued with an HTTP Range request
 * after an interruption, checked (size, and sha256 when the listing gives one), then renamed.
 *
 * Only the files `transformers` needs to load the model are fetched: config, tokenizer, chat template and
 * the weights (safetensors when the repository has them, else PyTorch .bin), never subfolders such as
 * `original/` or `onnx/`.
 */
import { createHash, type Hash } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import path from 'node:path';
import { WeitiaoError } from '../../errors.js';

export type HubSource = 'huggingface' | 'modelscope';

export interface PullProgress {
  file: string;
  downloaded: number;
  /** Null when neither the listing nor the server says how big the file is. */
  total: number | null;
  bytesPerSecond: number;
  /** 0-based position of `file` among the `count` files being fetched. */
  index: number;
  count: number;
}

export interface DownloadRepoOptions {
  repo: string;
  source?: HubSource;
  /** Branch, tag or commit; default `main` (Hub) or `master` (ModelScope). */
  revision?: string;
  /** Default: `HF_ENDPOINT` / `MODELSCOPE_ENDPOINT`, else the public site. */
  endpoint?: string;
  /** Default: `HF_TOKEN` (Hub) / `MODELSCOPE_API_TOKEN` (ModelScope). */
  token?: string;
  /** How many times a broken download is continued before giving up (default 3). */
  retries?: number;
  onProgress?: (progress: PullProgress) => void;
  signal?: AbortSignal;
}

export interface RepoFile {
  path: string;
  size: number | null;
  sha256: string | null;
}

export interface DownloadedRepo {
  source: HubSource;
  endpoint: string;
  revision: string;
  /** The commit the files came from, when the hub says. */
  commit: string | null;
  files: { path: string; size: number }[];
}

const DEFAULT_ENDPOINT: Record<HubSource, string> = {
  huggingface: 'https://huggingface.co',
  modelscope: 'https://www.modelscope.cn',
};

/** Fetches the model files of `repo` into `dir` (created if needed); files already complete are skipped. */
export async function downloadRepo(dir: string, options: DownloadRepoOptions): Promise<DownloadedRepo> {
  const source = options.source ?? 'huggingface';
  const env = source === 'huggingface' ? process.env.HF_ENDPOINT : process.env.MODELSCOPE_ENDPOINT;
  const endpoint = (options.endpoint || env || DEFAULT_ENDPOINT[source]).replace(/\/+$/, '');
  const revision = options.revision ?? (source === 'huggingface' ? 'main' : 'master');
  const token =
    options.token ?? (source === 'huggingface' ? process.env.HF_TOKEN ?? process.env.HUGGING_FACE_HUB_TOKEN : process.env.MODELSCOPE_API_TOKEN);
  const hub: Hub = { source, endpoint, revision, repo: options.repo, headers: token ? { authorization: `Bearer ${token}` } : {}, signal: options.signal };
  const retries = options.retries ?? 3;

  const listing = await withRetries(retries, options.signal, () => listFiles(hub));
  const files = selectFiles(listing.files);
  const names = files.map((f) => f.path);
  if (!names.includes('config.json')) {
    throw new WeitiaoError(
      'invalid_request',
      `${options.repo} has no config.json: not a transformers model repository / ${options.repo} 中没有 config.json，不是 transformers 模型仓库`,
      { param: 'repo' },
    );
  }
  if (!names.some((n) => n.endsWith('.safetensors') || n.endsWith('.bin'))) {
    throw new WeitiaoError(
      'invalid_request',
      `${options.repo} has no weights in safetensors or PyTorch format / ${options.repo} 中没有 safetensors 或 PyTorch 格式的权重`,
      { param: 'repo' },
    );
  }

  mkdirSync(dir, { recursive: true });
  const release = lock(dir, options.repo);
  try {
    startSnapshot(dir, source, listing.commit ?? `revision:${revision}`);
    const done: { path: string; size: number }[] = [];
    for (const [index, file] of files.entries()) {
      const url = fileUrl(hub, listing.commit, file.path);
      const report = options.onProgress && ((p: Omit<PullProgress, 'index' | 'count'>) => options.onProgress!({ ...p, index, count: files.length }));
      const size = await downloadFile(url, path.join(dir, file.path), file, { hub, retries, report });
      done.push({ path: file.path, size });
    }
    return { source, endpoint, revision, commit: listing.commit, files: done };
  } finally {
    release();
  }
}

// ---------------------------------------------------------------------------------------------- listing

interface Hub {
  source: HubSource;
  endpoint: string;
  revision: string;
  repo: string;
  headers: Record<string, string>;
  signal?: AbortSignal;
}

async function listFiles(hub: Hub): Promise<{ files: RepoFile[]; commit: string | null }> {
  const { repo, revision, endpoint } = hub;
  const url =
    hub.source === 'huggingface'
      ? `${endpoint}/api/models/${repo}/revision/${encodeURIComponent(revision)}?blobs=true`
      : `${endpoint}/api/v1/models/${repo}/repo/files?Revision=${encodeURIComponent(revision)}&Recursive=true`;
  const res = await request(hub, url, {});
  if (!res.ok) throw await httpError(hub, res, null);
  let body: any;
  try {
    body = await res.json();
  } catch (err) {
    throw new WeitiaoError(
      'internal_error',
      `${endpoint} did not answer like ${hub.source === 'huggingface' ? 'the Hugging Face Hub' : 'ModelScope'} (the file listing of ${repo} is not JSON); check the endpoint / 该地址返回的不是模型文件列表，请检查 endpoint`,
      { cause: err },
    );
  }
  if (hub.source === 'huggingface') {
    if (!Array.isArray(body?.siblings)) throw notARepo(hub);
    const files: RepoFile[] = body.siblings.map((s: any) => ({
      path: String(s.rfilename),
      size: typeof s.lfs?.size === 'number' ? s.lfs.size : typeof s.size === 'number' ? s.size : null,
      sha256: typeof s.lfs?.sha256 === 'string' ? s.lfs.sha256 : null,
    }));
    return { files, commit: typeof body.sha === 'string' ? body.sha : null };
  }
  // ModelScope answers some errors with HTTP 200 and `{Code, Message, Success: false}`.
  if (body?.Success === false || (typeof body?.Code === 'number' && body.Code !== 200) || !Array.isArray(body?.Data?.Files)) {
    const message = typeof body?.Message === 'string' ? body.Message : '';
    throw new WeitiaoError(
      'not_found',
      `ModelScope repository ${repo} (revision ${revision}) not found${message ? `: ${message}` : ''} / 在 ModelScope 上找不到仓库 ${repo}（版本 ${revision}）`,
      { param: 'repo' },
    );
  }
  const files: RepoFile[] = body.Data.Files.filter((f: any) => f.Type !== 'tree').map((f: any) => ({
    path: String(f.Path),
    size: typeof f.Size === 'number' ? f.Size : null,
    sha256: typeof f.Sha256 === 'string' && f.Sha256 ? f.Sha256 : null,
  }));
  return { files, commit: typeof body.Data.LatestCommitter?.Id === 'string' ? body.Data.LatestCommitter.Id : null };
}

function notARepo(hub: Hub): WeitiaoError {
  return new WeitiaoError('internal_error', `${hub.endpoint} sent an unexpected file listing for ${hub.repo} / 文件列表格式不正确`);
}

const WANTED = [/\.safetensors$/, /\.json$/, /\.model$/, /\.txt$/, /\.tiktoken$/, /\.jinja$/, /^pytorch_model.*\.bin$/];
const UNWANTED = [/^\./, /^(tf_model|flax_model|rust_model|model\.onnx)/, /^training_args/, /^trainer_state/, /^optimizer/, /^scheduler/];

/** The files `transformers` needs: top-level config, tokenizer and weights; safetensors over .bin. */
export function selectFiles(all: RepoFile[]): RepoFile[] {
  const top = all.filter((f) => !f.path.includes('/') && !f.path.includes('\\') && f.path !== '..' && f.path !== '.');
  const hasSafetensors = top.some((f) => f.path.endsWith('.safetensors'));
  return top.filter((f) => {
    const n = f.path;
    if (UNWANTED.some((re) => re.test(n))) return false;
    if (hasSafetensors && (n.endsWith('.bin') || n === 'pytorch_model.bin.index.json')) return false;
    return WANTED.some((re) => re.test(n));
  });
}

function fileUrl(hub: Hub, commit: string | null, file: string): string {
  if (hub.source === 'huggingface') {
    // Resolve by commit when the listing gave one, so every file comes from the same snapshot.
    const rev = encodeURIComponent(commit ?? hub.revision);
    return `${hub.endpoint}/${hub.repo}/resolve/${rev}/${file.split('/').map(encodeURIComponent).join('/')}`;
  }
  return `${hub.endpoint}/api/v1/models/${hub.repo}/repo?Revision=${encodeURIComponent(hub.revision)}&FilePath=${encodeURIComponent(file)}`;
}

// ------------------------------------------------------------------------------------------- one file

interface FileContext {
  hub: Hub;
  retries: number;
  report?: (p: Omit<PullProgress, 'index' | 'count'>) => void;
}

/** Downloads one file to `dest` through `dest.partial`, continuing a previous partial download; returns its size. */
async function downloadFile(url: string, dest: string, file: RepoFile, fc: FileContext): Promise<number> {
  if (existsSync(dest) && (file.size === null || statSync(dest).size === file.size)) {
    const size = statSync(dest).size;
    fc.report?.({ file: file.path, downloaded: size, total: size, bytesPerSecond: 0 });
    return size;
  }
  const partial = `${dest}.partial`;
  return withRetries(fc.retries, fc.hub.signal, async () => {
    let offset = existsSync(partial) ? statSync(partial).size : 0;
    if (file.size !== null && offset > file.size) offset = 0;
    const hash = file.sha256 ? await hashOf(partial, offset) : null;

    const res = await request(fc.hub, url, offset > 0 ? { range: `bytes=${offset}-` } : {});
    if (res.status === 416) {
      await res.body?.cancel();
      // The previous run stopped just before the rename; else the partial file is not what we think: start over.
      if (file.size !== null && offset === file.size) return finish(partial, dest, file, offset, hash);
      rmSync(partial, { force: true });
      throw new RetryableError(`${file.path}: the server refused to continue at byte ${offset}`);
    }
    if (!res.ok) throw await httpError(fc.hub, res, file.path);
    let total: number | null;
    if (res.status === 206) {
      const range = /bytes (\d+)-\d+\/(\d+|\*)/.exec(res.headers.get('content-range') ?? '');
      if (!range || Number(range[1]) !== offset) {
        // A range we did not ask for: start again rather than guess.
        await res.body?.cancel();
        rmSync(partial, { force: true });
        throw new RetryableError(`${file.path}: server answered an unexpected range ${res.headers.get('content-range')}`);
      }
      total = range[2] === '*' ? null : Number(range[2]);
    } else {
      // 200: the server ignored (or we did not send) the range; the body is the whole file.
      offset = 0;
      const length = res.headers.get('content-length');
      total = length === null ? null : Number(length);
    }
    total = file.size ?? total;
    const digest = res.status === 206 ? hash : file.sha256 ? createHash('sha256') : null;

    const fh = await open(partial, offset > 0 ? 'a' : 'w');
    let downloaded = offset;
    const started = Date.now();
    let lastReport = 0;
    const report = (force: boolean) => {
      const t = Date.now();
      if (!fc.report || (!force && t - lastReport < 200)) return;
      lastReport = t;
      const seconds = Math.max((t - started) / 1000, 1e-3);
      fc.report({ file: file.path, downloaded, total, bytesPerSecond: Math.round((downloaded - offset) / seconds) });
    };
    report(true);
    try {
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        await fh.write(chunk);
        digest?.update(chunk);
        downloaded += chunk.length;
        report(false);
      }
    } catch (err) {
      if (fc.hub.signal?.aborted) throw cancelled();
      throw new RetryableError(`${file.path}: the download broke off after ${downloaded} bytes (${describe(err)})`, err);
    } finally {
      await fh.close();
    }
    report(true);
    if (total !== null && downloaded < total) {
      throw new RetryableError(`${file.path}: the connection closed after ${downloaded} of ${total} bytes`);
    }
    return finish(partial, dest, file, downloaded, digest);
  });
}

/** Checks size and sha256, then renames the partial file into place. */
function finish(partial: string, dest: string, file: RepoFile, size: number, digest: Hash | null): number {
  if (file.size !== null && size !== file.size) {
    rmSync(partial, { force: true });
    throw new WeitiaoError(
      'invalid_file',
      `${file.path}: downloaded ${size} bytes but the repository lists ${file.size}; the partial file was removed, pull again / 文件大小不符，已删除，请重新下载`,
      { file: file.path },
    );
  }
  if (digest && file.sha256) {
    const actual = digest.digest('hex');
    if (actual !== file.sha256.toLowerCase()) {
      rmSync(partial, { force: true });
      throw new WeitiaoError(
        'invalid_file',
        `${file.path}: sha256 mismatch (expected ${file.sha256}, got ${actual}); the download was removed, pull again / sha256 校验失败，已删除下载内容，请重新下载`,
        { file: file.path },
      );
    }
  }
  renameSync(partial, dest);
  return size;
}

/** A sha256 already fed with the first `size` bytes of `file` (the part downloaded before). */
async function hashOf(file: string, size: number): Promise<Hash> {
  const hash = createHash('sha256');
  if (size > 0) {
    for await (const chunk of createReadStream(file, { start: 0, end: size - 1 })) hash.update(chunk as Buffer);
  }
  return hash;
}

// ---------------------------------------------------------------------------------------------- HTTP

class RetryableError extends Error {
  constructor(message: string, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
  }
}

async function request(hub: Hub, url: string, headers: Record<string, string>): Promise<Response> {
  if (hub.signal?.aborted) throw cancelled();
  try {
    // fetch follows the Hub's 302 to its CDN, and drops Authorization when the redirect leaves the origin.
    return await fetch(url, { headers: { ...hub.headers, ...headers, 'user-agent': 'weitiao' }, redirect: 'follow', signal: hub.signal });
  } catch (err) {
    if (hub.signal?.aborted) throw cancelled();
    throw new RetryableError(unreachableMessage(hub, err), err);
  }
}

function unreachableMessage(hub: Hub, err: unknown): string {
  const why = describe(err);
  if (hub.source === 'huggingface') {
    return (
      `cannot reach ${hub.endpoint} (${why}). Set HF_ENDPOINT to a mirror (e.g. HF_ENDPOINT=https://hf-mirror.com), ` +
      `or use \`--source modelscope\`, or copy the model directory onto this machine and use its path as the model. ` +
      `/ 无法连接 ${hub.endpoint}：可将 HF_ENDPOINT 设为镜像（如 https://hf-mirror.com），或改用 --source modelscope，或把模型目录拷贝到本机后直接使用其路径`
    );
  }
  return (
    `cannot reach ${hub.endpoint} (${why}). Set MODELSCOPE_ENDPOINT, or use \`--source huggingface\` (with HF_ENDPOINT for a mirror), ` +
    `or copy the model directory onto this machine and use its path as the model. ` +
    `/ 无法连接 ${hub.endpoint}：可设置 MODELSCOPE_ENDPOINT，或改用 --source huggingface（可配合 HF_ENDPOINT 镜像），或把模型目录拷贝到本机后直接使用其路径`
  );
}

/** The innermost useful reason of a fetch failure, e.g. `ECONNREFUSED` or `other side closed`. */
function describe(err: unknown): string {
  let e: any = err;
  const parts: string[] = [];
  for (let depth = 0; e && depth < 4; depth++, e = e.cause) {
    const text = e.code ?? e.message;
    if (text && !parts.includes(text)) parts.push(String(text));
  }
  return parts.slice(-2).join(': ') || String(err);
}

async function httpError(hub: Hub, res: Response, file: string | null): Promise<Error> {
  const detail = (res.headers.get('x-error-message') ?? (await res.text().catch(() => '')).slice(0, 200)).trim();
  const errorCode = res.headers.get('x-error-code');
  const what = file ? `${file} of ${hub.repo}` : hub.repo;
  const tokenVar = hub.source === 'huggingface' ? 'HF_TOKEN' : 'MODELSCOPE_API_TOKEN';
  const suffix = detail ? ` (${detail})` : '';
  if (res.status === 404 || errorCode === 'RevisionNotFound' || errorCode === 'EntryNotFound') {
    return new WeitiaoError(
      'not_found',
      `${what} not found on ${hub.endpoint} at revision '${hub.revision}' (HTTP ${res.status})${suffix}: check the repository name and revision / 找不到 ${what}（版本 ${hub.revision}），请检查仓库名和版本`,
      { param: file ? undefined : 'repo' },
    );
  }
  if (res.status === 401 || res.status === 403) {
    const gated = errorCode === 'GatedRepo' ? ' The repository is gated: accept its conditions on the model page first.' : '';
    return new WeitiaoError(
      'permission_denied',
      `access to ${what} on ${hub.endpoint} was refused (HTTP ${res.status})${suffix}: the repository is private or gated, or does not exist.${gated} ` +
        `Set ${tokenVar} to an access token that can read it. / 无权访问 ${what}：仓库为私有、需授权或不存在，请设置 ${tokenVar} 为有权限的访问令牌`,
      { param: 'repo' },
    );
  }
  if (res.status >= 500 || res.status === 429) {
    return new RetryableError(`${hub.endpoint} answered HTTP ${res.status} for ${what}${suffix}`);
  }
  return new WeitiaoError('internal_error', `${hub.endpoint} answered HTTP ${res.status} for ${what}${suffix} / 服务器返回 HTTP ${res.status}`);
}

function cancelled(): WeitiaoError {
  return new WeitiaoError('cancelled', 'download stopped; run the same pull again to continue / 下载已停止，再次运行即可继续');
}

/** Runs `fn`, again after a short pause when it fails with a RetryableError, `retries` times at most. */
async function withRetries<T>(retries: number, signal: AbortSignal | undefined, fn: () => Promise<T>): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (!(err instanceof RetryableError)) throw err;
      if (attempt >= retries) {
        // The hub is unreachable or keeps failing (5xx, 429, dropped connections): a remote problem, not ours.
        throw new WeitiaoError('unavailable', `${err.message}. Run the same pull again to continue. / 下载中断，再次运行即可继续`, {
          cause: err,
        });
      }
      await sleep(Math.min(250 * 2 ** attempt, 4000), signal);
    }
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(cancelled());
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(cancelled());
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

// ------------------------------------------------------------------------------------------------ lock

const SNAPSHOT = '.weitiao-pull.json';

/**
 * Files in `dir` are only reused (skipped, or continued from `.partial`) when they come from the same
 * snapshot: pulling another commit into the same folder first clears what the old one left.
 */
function startSnapshot(dir: string, source: HubSource, key: string): void {
  const file = path.join(dir, SNAPSHOT);
  let previous: { source?: string; key?: string } | null = null;
  try {
    previous = JSON.parse(readFileSync(file, 'utf8'));
  } catch {
    /* first pull into this folder */
  }
  if (previous && (previous.source !== source || previous.key !== key)) {
    for (const name of readdirSync(dir)) if (name !== LOCK) rmSync(path.join(dir, name), { recursive: true, force: true });
  }
  writeFileSync(file, JSON.stringify({ source, key }) + '\n');
}

const LOCK = '.weitiao-pull.lock';

/** One pull per directory at a time: two would write the same partial files. */
function lock(dir: string, repo: string): () => void {
  const file = path.join(dir, LOCK);
  try {
    const pid = Number(readFileSync(file, 'utf8'));
    if (pid && pid !== process.pid && alive(pid)) {
      throw new WeitiaoError('conflict', `${repo} is already being pulled by process ${pid} / ${repo} 正在由进程 ${pid} 下载`, { param: 'repo' });
    }
  } catch (err) {
    if (err instanceof WeitiaoError) throw err;
  }
  writeFileSync(file, String(process.pid));
  return () => rmSync(file, { force: true });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
