/** What every command needs: the context from the global `--home`, and option parsers. */
import type { Command } from 'commander';
import { openContext, type Context } from '../../context.js';
import { WeitiaoError } from '../../errors.js';
import { DEFAULT_PROJECT, requireProject, runInScope } from '../../projects/index.js';

/**
 * Opens the context for the command's `--home`, runs `fn` as admin of `--project` (default `default`,
 * src/projects), and closes the store even when `fn` throws.
 */
export async function withContext<T>(command: Command, fn: (ctx: Context) => Promise<T> | T): Promise<T> {
  const globals = command.optsWithGlobals();
  const ctx = openContext({ home: globals.home });
  try {
    const project = (globals.project as string | undefined) ?? DEFAULT_PROJECT;
    if (globals.project !== undefined) requireProject(ctx, project);
    return await runInScope({ project, role: 'admin', keyId: null, keyName: null }, () => fn(ctx));
  } finally {
    ctx.close();
  }
}

/** `auto` or a number, for hyperparameters. */
export function autoOr(kind: 'int' | 'float', name: string) {
  return (value: string): number | 'auto' => {
    if (value === 'auto') return 'auto';
    const n = kind === 'int' ? Number.parseInt(value, 10) : Number.parseFloat(value);
    if (!Number.isFinite(n) || String(n) === 'NaN' || (kind === 'int' && !/^\d+$/.test(value))) {
      throw new WeitiaoError('invalid_request', `${name} must be 'auto' or a number, got '${value}' / ${name} 须为 auto 或数字`, { param: name });
    }
    return n;
  };
}

export function number(name: string, kind: 'int' | 'float' = 'float') {
  return (value: string): number => {
    const n = autoOr(kind, name)(value);
    if (n === 'auto') throw new WeitiaoError('invalid_request', `${name} must be a number / ${name} 须为数字`, { param: name });
    return n;
  };
}

/** A flag that may take `on`/`off` (also true/false, yes/no) or `auto`; the bare flag is `on`. */
export function onOff(name: string) {
  return (value: string | boolean): boolean | 'auto' => {
    const v = String(value).toLowerCase();
    if (['on', 'true', 'yes', '1'].includes(v)) return true;
    if (['off', 'false', 'no', '0'].includes(v)) return false;
    if (v === 'auto') return 'auto';
    throw new WeitiaoError('invalid_request', `${name} must be on, off or auto, got '${value}' / ${name} 须为 on、off 或 auto`, { param: name });
  };
}
