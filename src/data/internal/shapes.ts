/**
 * Record shapes other tools write, mapped to chat messages so they go through the same checks and split:
 * Alpaca (`instruction`, optional `input`, `output`, optional `system`) and ShareGPT (`conversations`:
 * `[{from: human|gpt|system, value}]`, optional top-level `system`). LLaMA-Factory's and most public
 * instruction sets use one of the two.
 */
import { isObjectValue, problem, type Problem } from './check.js';

export type RecordShape = 'alpaca' | 'sharegpt';

/** The shape of a JSONL file's first record, or null (chat format or plain records mapped by templates). */
export function detectShape(record: Record<string, unknown>): RecordShape | null {
  if (Array.isArray(record.conversations)) return 'sharegpt';
  if (Object.hasOwn(record, 'instruction') && Object.hasOwn(record, 'output')) return 'alpaca';
  return null;
}

/** ShareGPT speaker names (as FastChat, LLaMA-Factory and Axolotl accept them) → chat roles. */
const SHAREGPT_ROLES: Record<string, 'system' | 'user' | 'assistant'> = {
  system: 'system',
  human: 'user',
  user: 'user',
  gpt: 'assistant',
  chatgpt: 'assistant',
  bing: 'assistant',
  bard: 'assistant',
  assistant: 'assistant',
  model: 'assistant',
};

type Messages = { role: string; content: unknown }[];

/** `{messages}` for checkExample, or the problems that stop this record. */
export function shapeToChat(shape: RecordShape, record: unknown): { value: { messages: Messages } } | { problems: Problem[] } {
  if (!isObjectValue(record)) return { problems: [problem('data_type', null, 'record is not a JSON object / 记录不是 JSON 对象')] };
  const messages: Messages = [];
  if (typeof record.system === 'string' && record.system.trim() !== '') messages.push({ role: 'system', content: record.system });
  if (shape === 'alpaca') {
    for (const key of ['instruction', 'output'] as const) {
      if (typeof record[key] !== 'string') {
        return { problems: [problem('missing_field', key, `Alpaca record needs a text '${key}' / Alpaca 记录缺少文本字段 '${key}'`)] };
      }
    }
    const input = typeof record.input === 'string' ? record.input.trim() : '';
    // Alpaca's own prompt puts the input after the instruction; an empty input adds nothing.
    messages.push({ role: 'user', content: input ? `${record.instruction as string}\n\n${input}` : (record.instruction as string) });
    messages.push({ role: 'assistant', content: record.output });
    return { value: { messages } };
  }
  const turns = record.conversations as unknown[];
  const problems: Problem[] = [];
  turns.forEach((turn, i) => {
    const field = `conversations[${i}]`;
    if (!isObjectValue(turn)) return problems.push(problem('data_type', field, 'turn is not an object / 对话轮次不是对象'));
    const from = typeof turn.from === 'string' ? turn.from.trim().toLowerCase() : '';
    const role = SHAREGPT_ROLES[from];
    if (!role) {
      return problems.push(
        problem('unrecognized_role', `${field}.from`, `unrecognized speaker '${String(turn.from)}' (human, gpt, system…) / 无法识别的说话人 '${String(turn.from)}'`),
      );
    }
    messages.push({ role, content: turn.value });
  });
  return problems.length ? { problems } : { value: { messages } };
}
