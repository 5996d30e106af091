/**
 * Checks on OpenAI's preference fine-tuning format (DPO), one pair per line:
 *
 * ```json
 * {"input": {"messages": [{"role": "user", "content": "很好吃"}]},
 *  "preferred_output": [{"role": "assistant", "content": "好评"}],
 *  "non_preferred_output": [{"role": "assistant", "content": "差评"}]}
 * ```
 * The conversation in `input.messages` gets the chat checks of check.ts (except that it needs no
 * assistant turn); each output must be a non-empty list of assistant messages. Codes: data_type,
 * unrecognized_key, missing_input, plus check.ts's message codes with fields under `input.` or the
 * output's name, missing_output, invalid_output_role, empty_file; warning identical_outputs.
 */
import type { ValidateOptions, ValidationReport } from '../schemas.js';
import { IssueList, MAX_REPORTED_ISSUES, validationCancelled } from './issues.js';
import { checkExample, problem, type Problem } from './check.js';
import { resolveEncoding } from './encoding.js';
import { assertReadable, readJsonLines } from './source.js';

const PAIR_KEYS = ['input', 'preferred_output', 'non_preferred_output'] as const;
const OUTPUTS = ['preferred_output', 'non_preferred_output'] as const;

/** Every problem of one preference line (empty when it is a pair the engine can train on). */
export function checkPreferencePair(value: unknown): Problem[] {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return [problem('data_type', null, 'preference example is not a JSON object / 偏好样本不是 JSON 对象')];
  }
  const pair = value as Record<string, unknown>;
  const problems: Problem[] = [];
  for (const key of Object.keys(pair)) {
    if (!(PAIR_KEYS as readonly string[]).includes(key)) {
      problems.push(problem('unrecognized_key', key, `unrecognized key '${key}' (allowed: ${PAIR_KEYS.join(', ')}) / 无法识别的键 '${key}'`));
    }
  }

  const input = pair.input;
  if (typeof input !== 'object' || input === null || Array.isArray(input)) {
    const what = input === undefined ? "missing 'input'" : "'input' is not an object";
    problems.push(problem('missing_input', 'input', `${what}; expected {"messages": [...]} / 缺少 input 对象`));
  } else {
    for (const key of Object.keys(input)) {
      if (key !== 'messages') problems.push(problem('unrecognized_key', `input.${key}`, `unrecognized key 'input.${key}' (allowed: messages) / 无法识别的键`));
    }
    // The prompt needs no assistant turn: what the assistant says is the two outputs.
    for (const p of checkExample(input).problems) {
      if (p.code !== 'example_missing_assistant_message') problems.push({ ...p, field: p.field ? `input.${p.field}` : 'input' });
    }
  }

  const contents: string[] = [];
  for (const key of OUTPUTS) {
    const output = pair[key];
    if (!Array.isArray(output) || output.length === 0) {
      const what = output === undefined ? `missing '${key}'` : Array.isArray(output) ? `'${key}' is empty` : `'${key}' is not a list`;
      problems.push(problem('missing_output', key, `${what}; expected [{"role": "assistant", "content": …}] / 缺少 ${key}`));
      continue;
    }
    const checked = checkExample({ messages: output });
    for (const p of checked.problems) {
      if (p.code === 'example_missing_assistant_message') continue; // reported below, per message
      problems.push({ ...p, field: p.field ? p.field.replace(/^messages/, key) : key });
    }
    output.forEach((m: unknown, i) => {
      const role = typeof m === 'object' && m !== null ? (m as Record<string, unknown>).role : undefined;
      if (typeof role === 'string' && role !== 'assistant') {
        problems.push(problem('invalid_output_role', `${key}[${i}].role`, `an output message must have role 'assistant', found '${role}' / 输出消息的角色必须是 assistant`));
      }
    });
    contents.push(JSON.stringify(output));
  }
  if (contents.length === 2 && contents[0] === contents[1] && !problems.some((p) => p.severity === 'error')) {
    problems.push(
      problem('identical_outputs', 'non_preferred_output', 'preferred and non-preferred outputs are identical: the pair teaches nothing / 两个输出完全相同', 'warning'),
    );
  }
  return problems;
}

/**
 * Checks a preference-format JSONL file and reports every problem with its line and field. Errors mean
 * the file must not be trained on; `valid_examples` counts the pairs without errors.
 */
export async function validatePreferenceFile(file: string, options: ValidateOptions = {}, deps: { signal?: AbortSignal } = {}): Promise<ValidationReport> {
  await assertReadable(file, 'file');
  const encoding = await resolveEncoding(file, options.encoding ?? 'auto');
  const issues = new IssueList(file, MAX_REPORTED_ISSUES);
  let examples = 0;
  let valid = 0;
  for await (const row of readJsonLines(file, encoding)) {
    if (deps.signal?.aborted) throw validationCancelled(file);
    examples++;
    const problems = row.problem ? [row.problem] : checkPreferencePair(row.value);
    for (const p of problems) issues.add(row.line, p);
    if (!problems.some((p) => p.severity === 'error')) valid++;
  }
  if (examples === 0) issues.add(null, problem('empty_file', null, `${file} has no examples / 文件中没有样本`));
  return {
    file,
    encoding,
    examples,
    valid_examples: valid,
    errors: issues.errors,
    warnings: issues.warnings,
    error_count: issues.errorCount,
    warning_count: issues.warningCount,
    label_set: null,
  };
}
