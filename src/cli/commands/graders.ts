/** `weitiao graders run|validate`: try an OpenAI-shaped grader on one sample, or check it (and a data file) before training. */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createAdaptorServer } from '@hono/node-server';
import type { Command } from 'commander';
import { createApp } from '../../api/index.js';
import type { Context } from '../../context.js';
import type { GraderRunResult } from '../../engine/index.js';
import { WeitiaoError } from '../../errors.js';
import { parseGrader, runGrader, validateGrader, type Grader, type JudgeSettings } from '../../graders/index.js';
import { printJson, table } from '../output.js';
import { withContext } from './shared.js';

function readJson(file: string, param: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new WeitiaoError('not_found', `cannot read ${file}: ${(err as Error).message} / 无法读取 ${file}`, { param, cause: err });
  }
  return parseJson(text, param);
}

function parseJson(text: string, param: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new WeitiaoError('invalid_request', `${param} is not valid JSON: ${(err as Error).message} / ${param} 不是有效的 JSON`, { param });
  }
}

/** Whether a score_model in the grader has no endpoint of its own (nor WEITIAO_JUDGE_BASE_URL to fall back on). */
function needsLocalJudge(grader: Grader): boolean {
  if (process.env.WEITIAO_JUDGE_BASE_URL) return false;
  const graders = grader.type === 'multi' ? Object.values(grader.graders) : [grader];
  return graders.some((g) => g.type === 'score_model' && !g.weitiao?.base_url);
}

/**
 * Runs `fn` with weitiao's own chat completions as the judge, served for the command's duration on a random
 * loopback port behind a one-time key: `weitiao graders run` then judges with local and fine-tuned models
 * without a running `weitiao serve`.
 */
async function withLocalJudge<T>(ctx: Context, grader: Grader, fn: (judge?: JudgeSettings) => Promise<T>): Promise<T> {
  if (!needsLocalJudge(grader)) return fn();
  const token = randomBytes(24).toString('hex');
  const app = createApp(ctx, { auth: false });
  const server = createAdaptorServer({
    hostname: '127.0.0.1',
    fetch: (req: Request) =>
      req.headers.get('authorization') === `Bearer ${token}` ? app.fetch(req) : Response.json(new WeitiaoError('unauthorized', 'invalid key').toJSON(), { status: 401 }),
  }) as Server;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    return await fn({ base_url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`, api_key: token });
  } finally {
    // The warm chat engine is left to end with this process, as after `weitiao chat` (its stdin closes then).
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
}

/** The result as a person reads it: reward, each named grader's score, and why a score is 0 when it failed. */
function printResult(r: GraderRunResult): void {
  console.log(`reward 得分  ${r.reward}`);
  const subs = Object.entries(r.sub_rewards);
  if (subs.length) console.log(table(['grader 评分器', 'score 分数'], subs.map(([name, score]) => [name, score])));
  const flags = Object.entries(r.metadata.errors).filter(([, v]) => v === true).map(([k]) => k);
  if (flags.length) console.log(`errors 错误: ${flags.join(', ')}`);
  for (const message of r.weitiao.error_messages) console.log(`  ${message}`);
  const notes = JSON.stringify(r.weitiao.notes);
  if (notes !== '{}') console.log(`notes 说明: ${notes}`);
  if (r.metadata.token_usage !== null) console.log(`judge ${r.metadata.sampled_model_name}: ${r.metadata.token_usage} tokens`);
}

export function registerGraderCommands(program: Command): void {
  const graders = program.command('graders').description("OpenAI-shaped graders (string_check, text_similarity, score_model, python, multi) / 评分器");

  graders
    .command('run')
    .description('grade one model sample with a grader / 用评分器为一个样本打分')
    .requiredOption('--grader <file>', "the grader's JSON file")
    .option('--sample <text>', 'the model sample ({{sample.output_text}})')
    .option('--sample-file <file>', 'read the model sample from a file')
    .option('--item <json>', 'the data item ({{item.x}}) as JSON', '{}')
    .option('--json', "print OpenAI's full run response")
    .action(async (o, cmd: Command) => {
      if ((o.sample === undefined) === (o.sampleFile === undefined)) {
        throw new WeitiaoError('invalid_request', 'give exactly one of --sample and --sample-file / 须且只能指定 --sample 或 --sample-file 之一', { param: 'sample' });
      }
      const sample: string = o.sample ?? readFileSync(o.sampleFile, 'utf8');
      const item = parseJson(o.item, 'item');
      if (item === null || typeof item !== 'object' || Array.isArray(item)) {
        throw new WeitiaoError('invalid_request', '--item must be a JSON object / --item 须为 JSON 对象', { param: 'item' });
      }
      await withContext(cmd, async (ctx) => {
        const grader = parseGrader(readJson(o.grader, 'grader'));
        const [result] = await withLocalJudge(ctx, grader, (defaultJudge) =>
          runGrader(ctx, grader, [{ model_sample: sample, item: item as Record<string, unknown> }], { defaultJudge }),
        );
        if (o.json) printJson(result);
        else printResult(result);
      });
    });

  graders
    .command('validate')
    .description("check a grader (and that every line of a data file fills its {{item.x}} templates) / 校验评分器")
    .requiredOption('--grader <file>', "the grader's JSON file")
    .option('--data <file>', 'a JSONL data file the grader will read items from')
    .action(async (o, cmd: Command) => {
      await withContext(cmd, async (ctx) => {
        const grader = await validateGrader(ctx, readJson(o.grader, 'grader'), { itemsFile: o.data });
        console.log(`ok: ${grader.type} grader '${grader.name}' is valid${o.data ? ` for every line of ${o.data}` : ''} / 评分器有效`);
      });
    });
}
