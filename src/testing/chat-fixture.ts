/**
 * Shared by the serving tests (not used by the product): a temp home with the tiny waimai model, its GGUF
 * written by the engine's own `export`, and LoRA fine-tunes of it (two optimizer steps each, so they
 * really differ from the base) with their adapter GGUFs.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { openContext, type Context } from '../context.js';
import { runEngine } from '../engine/index.js';
import { createTinyModel, registerModel, resolveModel } from '../models/index.js';
import { TINY_WAIMAI, writeWaimaiJsonl } from './waimai.js';

export interface ServingFixture {
  tmp: string;
  ctx: Context;
  /** The registered base model's id. */
  base: string;
  /** Its GGUF (f16), from the engine's export. */
  gguf: string;
  close(): void;
}

/** A temp home with `tiny` (Qwen2, 64 wide, 2 layers, a 1024-token BPE of the waimai reviews, 512 positions) exported to GGUF. */
export async function setUpServing(name: string): Promise<ServingFixture> {
  const tmp = mkdtempSync(path.join(os.tmpdir(), `weitiao-${name}-`));
  const ctx = openContext({ home: path.join(tmp, 'home') });
  const model = await createTinyModel(ctx, { name: 'tiny', ...TINY_WAIMAI });
  const exported = await runEngine('export', { model: model.weitiao.path, format: 'gguf', quantize: 'f16', output_dir: path.join(tmp, 'gguf'), name: 'tiny' });
  return {
    tmp,
    ctx,
    base: model.id,
    gguf: exported.path,
    close: () => {
      ctx.close();
      rmSync(tmp, { recursive: true, force: true });
    },
  };
}

/**
 * A LoRA fine-tune of the fixture's base (two small steps: it differs from the base yet still rambles like it rather than ending at once; `seed` picks the data
 * order), registered as `name`, and its adapter exported as a LoRA GGUF.
 */
export async function loraFineTune(fx: ServingFixture, name: string, seed: number): Promise<{ model: string; lora: string }> {
  const dir = path.join(fx.tmp, name);
  const data = writeWaimaiJsonl(mkdtempSync(path.join(fx.tmp, 'data-')), 16, 4);
  const base = resolveModel(fx.ctx, fx.base);
  await runEngine('train', {
    base_model: base.basePath,
    output_dir: dir,
    training_file: data.train,
    hyperparameters: { n_epochs: 1, batch_size: 8, learning_rate: 0.005, seed },
    max_steps: 2,
    threads: 1,
  });
  registerModel(fx.ctx, { id: name, kind: 'fine-tuned', path: path.join(dir, 'model'), base_model: fx.base, source: 'training' });
  const adapter = await runEngine('export', {
    model: base.basePath,
    adapter: path.join(dir, 'model'),
    format: 'gguf',
    adapter_only: true,
    quantize: 'f16',
    output_dir: path.join(fx.tmp, `${name}-gguf`),
    name,
  });
  return { model: name, lora: adapter.path };
}
