/** `weitiao graders run|validate`: try an OpenAI-shaped grader on one sample, or check it (and a data file) before training. */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import type { GraderRunResult } from '../../engine/index.js';
import { WeitiaoError } from '../../errors.js';
import { runGrader, validateGrader } from '../../graders/index.js';
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
        const [result] = await runGrader(ctx, readJson(o.grader, 'grader'), [{ model_sample: sample, item: item as Record<string, unknown> }]);
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
