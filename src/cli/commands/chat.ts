/** `weitiao chat`: talk to a base or fine-tuned model, tokens streamed as they come. */
import type { Command } from 'commander';
import readline from 'node:readline/promises';
import type { Context } from '../../context.js';
import type { ChatMessage } from '../../engine/index.js';
import { chatCompletion } from '../../chat/index.js';
import { number, withContext } from './shared.js';

interface ChatSettings {
  model: string;
  temperature: number;
  top_p: number;
  max_tokens: number;
  seed?: number;
}

async function answer(ctx: Context, settings: ChatSettings, messages: ChatMessage[]): Promise<string> {
  const result = await chatCompletion(
    ctx,
    { ...settings, messages },
    { onToken: (text) => process.stdout.write(text) },
  );
  process.stdout.write(result.finish_reason === 'length' ? ' […]\n' : '\n');
  return result.text;
}

export function registerChatCommands(program: Command): void {
  program
    .command('chat')
    .description('chat with a base or fine-tuned model; --prompt answers once / 与模型对话')
    .requiredOption('--model <model>', 'model id or directory')
    .option('--prompt <text>', 'answer this one message and exit')
    .option('--system <text>', 'system message')
    .option('--temperature <t>', 'sampling temperature (0 = greedy)', number('temperature'), 0.7)
    .option('--top-p <p>', 'nucleus sampling', number('top_p'), 1)
    .option('--max-tokens <n>', 'longest answer in tokens', number('max_tokens', 'int'), 256)
    .option('--seed <n>', 'sampling seed', number('seed', 'int'))
    .action(async (o, cmd: Command) => {
      await withContext(cmd, async (ctx) => {
        const settings: ChatSettings = { model: o.model, temperature: o.temperature, top_p: o.topP, max_tokens: o.maxTokens, seed: o.seed };
        const history: ChatMessage[] = o.system ? [{ role: 'system', content: o.system }] : [];
        if (o.prompt !== undefined) {
          await answer(ctx, settings, [...history, { role: 'user', content: o.prompt }]);
          return;
        }
        const rl = readline.createInterface({ input: process.stdin, output: process.stdout });
        console.log(`chatting with ${o.model}. Empty line or Ctrl-D to quit; /reset clears the history. 空行或 Ctrl-D 退出。`);
        try {
          for (;;) {
            const line = await rl.question('> ').catch(() => '');
            if (!line.trim()) break;
            if (line.trim() === '/reset') {
              history.splice(o.system ? 1 : 0);
              continue;
            }
            history.push({ role: 'user', content: line });
            history.push({ role: 'assistant', content: await answer(ctx, settings, history) });
          }
        } finally {
          rl.close();
        }
      });
    });
}
