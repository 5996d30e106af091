/**
 * Fixtures for the worker tests (not used by the product): a temp home with a real tiny model and small
 * chat files cut from the waimai reviews, uploaded as files.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Context } from '../context.js';
import { openTestContext } from './postgres.js';
import { prepareDataset } from '../data/index.js';
import { createFile } from '../files/index.js';
import { createTinyModel } from '../models/index.js';
import { TINY_WAIMAI, WAIMAI_CSV } from './waimai.js';

export { WAIMAI_CSV } from './waimai.js';

export interface Fixture {
  tmp: string;
  ctx: Context;
  /** Registered base model id. */
  model: string;
  /** File ids: `train` (64 examples), `validation` (32). */
  train: string;
  validation: string;
  close(): void;
}

/** A temp home with `tiny` (2 layers, 64 wide, vocab 1024) and 64/32 waimai chat examples uploaded. */
export async function setUpFixture(name: string): Promise<Fixture> {
  if (!existsSync(WAIMAI_CSV)) throw new Error(`${WAIMAI_CSV} is missing: the worker tests need the waimai reviews`);
  const tmp = mkdtempSync(path.join(os.tmpdir(), `weitiao-${name}-`));
  const ctx = openTestContext(path.join(tmp, 'home'));
  const prepared = await prepareDataset({
    input: WAIMAI_CSV,
    output_dir: path.join(tmp, 'prepared'),
    system: '你是一位外卖评论好评差评评论专家。',
    user: '{review}',
    assistant: '{label}',
    label_map: '1=好评,0=差评',
    validation: 0.3,
    seed: 100,
  });
  if (!prepared.written || !prepared.train || !prepared.validation) throw new Error(`prepare failed: ${JSON.stringify(prepared.errors[0])}`);
  const head = (file: string, n: number, out: string) => {
    const lines = readFileSync(file, 'utf8').split('\n').filter(Boolean).slice(0, n);
    const target = path.join(tmp, out);
    writeFileSync(target, lines.join('\n') + '\n');
    return target;
  };
  const model = await createTinyModel(ctx, { name: 'tiny', ...TINY_WAIMAI });
  const upload = async (file: string) => (await createFile(ctx, { source: file, filename: path.basename(file), purpose: 'fine-tune' })).id;
  const train = await upload(head(prepared.train.file, 64, 'train.jsonl'));
  const validation = await upload(head(prepared.validation.file, 32, 'validation.jsonl'));
  return {
    tmp,
    ctx,
    model: model.id,
    train,
    validation,
    close: () => {
      ctx.close();
      rmSync(tmp, { recursive: true, force: true });
    },
  };
}
