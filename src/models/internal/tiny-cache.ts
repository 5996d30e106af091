/**
 * A build cache for `create-tiny`, used only when WEITIAO_TINY_CACHE names a directory (scripts/run-node-tests.mjs
 * sets a fresh one per test run and removes it after): the node suite builds the same tiny model in ~20 test
 * files, ~10 s of CPU each (an engine process importing torch, a tokenizer trained on the waimai reviews).
 * A build is keyed by the engine files that make it, the request (its output_dir aside) and the corpus and
 * config files' bytes; the first caller builds under a lock directory, the others wait for it, and each
 * gets its own copy at its output_dir (the same files the engine writes there).
 */
import { createHash } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ENGINE_DIR, type CreateTinyRequest, type CreateTinyResult } from '../../engine/index.js';

// tiny.py builds the model; chat_format.py holds the templates and special tokens it writes; requirements.txt pins the libraries.
const KEY_FILES = ['weitiao_engine/tiny.py', 'weitiao_engine/chat_format.py', 'requirements.txt'];
// A build takes ~10 s alone and a few minutes on a loaded CI machine; a lock older than this lost its builder.
const LOCK_WAIT_MS = 15 * 60 * 1000;

function fileBytes(hash: ReturnType<typeof createHash>, file: string): void {
  const stat = existsSync(file) ? statSync(file) : null;
  hash.update(`\0${file}\0`);
  if (stat?.isFile()) hash.update(readFileSync(file));
  else if (stat?.isDirectory() && existsSync(path.join(file, 'config.json'))) hash.update(readFileSync(path.join(file, 'config.json')));
}

export function tinyCacheKey(request: CreateTinyRequest): string {
  const hash = createHash('sha256');
  for (const f of KEY_FILES) fileBytes(hash, path.join(ENGINE_DIR, f));
  hash.update(JSON.stringify({ ...request, output_dir: null }));
  for (const f of request.corpus_files) fileBytes(hash, f);
  if (request.config_from) fileBytes(hash, request.config_from);
  return hash.digest('hex').slice(0, 24);
}

/** `build(request)` through the cache when WEITIAO_TINY_CACHE is set, else `build(request)` itself. */
export async function buildTinyCached(
  request: CreateTinyRequest,
  build: (request: CreateTinyRequest) => Promise<CreateTinyResult>,
): Promise<CreateTinyResult> {
  const root = process.env.WEITIAO_TINY_CACHE;
  if (!root) return build(request);
  const entry = path.join(root, tinyCacheKey(request));
  const model = path.join(entry, 'model');
  const resultFile = path.join(entry, 'result.json');
  mkdirSync(root, { recursive: true });
  const lock = `${entry}.lock`;
  const deadline = Date.now() + LOCK_WAIT_MS;
  while (!existsSync(resultFile)) {
    try {
      mkdirSync(lock); // atomic: one builder per key, across the test runner's processes
    } catch (err: any) {
      if (err.code !== 'EEXIST') throw err;
      if (Date.now() > deadline) throw new Error(`tiny model cache: ${lock} is still held after ${LOCK_WAIT_MS / 60000} min`);
      await sleep(250);
      continue;
    }
    try {
      if (!existsSync(resultFile)) {
        rmSync(entry, { recursive: true, force: true });
        const result = await build({ ...request, output_dir: model });
        writeFileSync(resultFile, JSON.stringify(result)); // written last: its presence marks a finished entry
      }
    } finally {
      rmSync(lock, { recursive: true, force: true });
    }
  }
  const result = JSON.parse(readFileSync(resultFile, 'utf8')) as CreateTinyResult;
  // Copied next to the target then renamed, as the engine writes it (an overwrite replaces the old directory).
  const out = request.output_dir;
  const tmp = `${out}.tmp-${process.pid}`;
  mkdirSync(path.dirname(out), { recursive: true });
  rmSync(tmp, { recursive: true, force: true });
  cpSync(model, tmp, { recursive: true });
  rmSync(out, { recursive: true, force: true });
  renameSync(tmp, out);
  return { ...result, path: out };
}
