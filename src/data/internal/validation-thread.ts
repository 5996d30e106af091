/**
 * The worker-thread side of thread.ts: runs one validation task off the main event loop and asks the
 * parent for token counts (the engine subprocess is started from the main thread, which owns children).
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { ChatExample } from '../../engine/protocol.js';
import { WeitiaoError } from '../../errors.js';
import type { TokenCounts } from '../schemas.js';
import { runTask, type TaskMessage, type ThreadTask } from './thread.js';

const port = parentPort!;
const task = workerData as ThreadTask;
const pending = new Map<number, { resolve: (r: TokenCounts) => void; reject: (e: unknown) => void }>();
let nextId = 0;

port.on('message', (m: TaskMessage) => {
  if (m.type !== 'counted' && m.type !== 'count_failed') return;
  const waiter = pending.get(m.id);
  pending.delete(m.id);
  if (m.type === 'counted') waiter?.resolve(m.result);
  else waiter?.reject(new WeitiaoError(m.error.code, m.error.message, { param: m.error.param ?? undefined }));
});

const countTokens = (examples: ChatExample[]) =>
  new Promise<TokenCounts>((resolve, reject) => {
    const id = nextId++;
    pending.set(id, { resolve, reject });
    port.postMessage({ type: 'count', id, examples } satisfies TaskMessage);
  });

try {
  const result = await runTask(task, { countTokens: task.kind === 'chat' && task.count_tokens ? countTokens : undefined });
  port.postMessage({ type: 'done', result } satisfies TaskMessage);
} catch (err) {
  const e = WeitiaoError.from(err);
  port.postMessage({ type: 'failed', error: { code: e.code, message: e.message, param: e.param ?? null, file: e.file ?? null, line: e.line ?? null } } satisfies TaskMessage);
}
port.close();
