/**
 * llama.cpp in this process, through node-llama-cpp's prebuilt CPU binaries (shipped in its npm package:
 * nothing is downloaded or built at run time). Used by the post-export check (src/export) and by the
 * llama.cpp serving backend (src/chat).
 *
 * ```ts
 * const model = await loadGguf('/home/me/.weitiao/exports/export-…/model.gguf');
 * const context = await model.createContext({ sequences: 4 });
 * ```
 */
import { createRequire } from 'node:module';
import { existsSync, readdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Llama, LlamaModel } from 'node-llama-cpp';
import { WeitiaoError } from '../errors.js';

let llama: Promise<Llama> | null = null;
const models = new Map<string, Promise<LlamaModel>>();

/** The one llama.cpp runtime of this process (CPU unless WEITIAO_LLAMA_GPU=auto asks for a GPU build). */
export function getLlama(): Promise<Llama> {
  llama ??= import('node-llama-cpp')
    .then(({ getLlama, LlamaLogLevel }) =>
      getLlama({
        gpu: process.env.WEITIAO_LLAMA_GPU === 'auto' ? 'auto' : false,
        build: 'never', // a prebuilt binary or nothing: never compile or download at run time
        // Never more threads than cores (node-llama-cpp's default can be twice that): llama.cpp's threads
        // spin at every barrier, and oversubscribed they wait seconds for each token.
        maxThreads: os.availableParallelism(),
        logLevel: LlamaLogLevel.error,
        progressLogs: false,
      }),
    )
    .catch((e: unknown) => {
      llama = null;
      throw new WeitiaoError('unavailable', `llama.cpp could not be loaded (node-llama-cpp's prebuilt binaries): ${(e as Error).message} / 无法加载 llama.cpp`);
    });
  return llama;
}

/** A GGUF model, loaded once per path and shared (its weights are memory-mapped). */
export function loadGguf(file: string): Promise<LlamaModel> {
  const key = path.resolve(file);
  let model = models.get(key);
  if (!model) {
    model = getLlama().then((l) => l.loadModel({ modelPath: key }));
    model.catch(() => models.delete(key));
    models.set(key, model);
  }
  return model;
}

const holds = new Map<string, number>();

/**
 * Marks `file` as in use (a serving deployment's model): unloadGguf leaves it loaded until every hold is
 * released. Returns the release.
 */
export function holdGguf(file: string): () => void {
  const key = path.resolve(file);
  holds.set(key, (holds.get(key) ?? 0) + 1);
  let released = false;
  return () => {
    if (released) return;
    released = true;
    const left = (holds.get(key) ?? 1) - 1;
    if (left > 0) holds.set(key, left);
    else holds.delete(key);
  };
}

/** Unloads a model loaded by `loadGguf` (its contexts must be disposed first); a held model stays loaded. */
export async function unloadGguf(file: string): Promise<void> {
  const key = path.resolve(file);
  if (holds.has(key)) return;
  const model = models.get(key);
  models.delete(key);
  if (model) await (await model.catch(() => null))?.dispose();
}

/**
 * The libllama shared library inside node-llama-cpp's prebuilt binaries for this platform, or null. The
 * engine calls its `llama_model_quantize` for the GGUF types the gguf package cannot write (the k-quants).
 */
export function llamaLibraryPath(): string | null {
  const require = createRequire(import.meta.url);
  const platform = `${process.platform === 'darwin' ? 'mac' : process.platform}-${process.arch}`;
  try {
    // The package's `exports` hide package.json; its entry is <pkg>/dist/index.js.
    const pkg = path.dirname(path.dirname(require.resolve(`@node-llama-cpp/${platform}`)));
    const bins = path.join(pkg, 'bins', platform);
    if (!existsSync(bins)) return null;
    const lib = readdirSync(bins).find((f) => /^libllama(\.v[\d.]+)?\.(so|dylib)$/.test(f) || f === 'llama.dll');
    return lib ? path.join(bins, lib) : null;
  } catch {
    return null;
  }
}
