/** Reads a chat JSONL file (seeds, prompts) strictly: every line through the normal chat checks. */
import { WeitiaoError } from '../../errors.js';
import type { ChatExample } from '../../engine/index.js';
import { checkExample } from '../internal/check.js';
import { resolveEncoding } from '../internal/encoding.js';
import { readJsonLines } from '../internal/source.js';

export async function readChatExamples(file: string, options: { needAssistant: boolean }): Promise<{ line: number; example: ChatExample }[]> {
  const out: { line: number; example: ChatExample }[] = [];
  for await (const r of readJsonLines(file, await resolveEncoding(file, 'auto'))) {
    if ('problem' in r && r.problem) throw new WeitiaoError('invalid_file', `${file}:${r.line}: ${r.problem.message}`, { file, line: r.line });
    const checked = checkExample((r as { value?: unknown }).value);
    const errors = checked.problems.filter((p) => p.severity === 'error' && (options.needAssistant || p.code !== 'example_missing_assistant_message'));
    // A prompt-only line (no assistant turn) passes every other check; its messages are then used as they are.
    const example = checked.example ?? (errors.length ? null : ((r as { value: ChatExample }).value as ChatExample));
    if (errors.length || !example) {
      const p = errors[0] ?? checked.problems[0];
      throw new WeitiaoError('invalid_file', `${file}:${r.line}: ${p?.field ?? ''}: ${p?.message ?? 'not a chat example'}`, { file, line: r.line, param: p?.field ?? undefined });
    }
    out.push({ line: r.line, example: { messages: example.messages.map((m) => ({ ...m })) } });
  }
  if (out.length === 0) throw new WeitiaoError('invalid_file', `${file} has no examples / 文件中没有样本`, { file });
  return out;
}
