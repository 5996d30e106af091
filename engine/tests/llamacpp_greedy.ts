// Greedy generation through llama.cpp itself (node-llama-cpp's prebuilt CPU binaries, via src/llamacpp), for
// engine/tests/test_export.py: it proves an exported GGUF loads in llama.cpp and answers token for token as the
// engine does.
//
//   node --import tsx engine/tests/llamacpp_greedy.ts request.json
//   request: {"model": "model.gguf", "lora": "adapter.gguf" | null, "prompts": ["<rendered chat prompt>"…],
//             "max_tokens": 16, "check_tokens": [ids whose end-of-generation flag to report]}
//   stdout:  {"results": [{"prompt_tokens": [...], "tokens": [...], "stopped": true}], "eog": {"<id>": true}}
import { readFileSync } from 'node:fs';
import { loadGguf } from '../../src/llamacpp/index.js';

type Request = { model: string; lora: string | null; prompts: string[]; max_tokens: number; check_tokens: number[] };

const request = JSON.parse(readFileSync(process.argv[2], 'utf8')) as Request;
const model = await loadGguf(request.model);
const context = await model.createContext({
  contextSize: 512,
  sequences: 1,
  ...(request.lora ? { lora: { adapters: [{ filePath: request.lora }] } } : {}),
});
const sequence = context.getSequence();
const results = [];
for (const prompt of request.prompts) {
  await sequence.clearHistory();
  // The text already holds the template's special tokens (<|im_start|>…): parse them as such, add nothing.
  const promptTokens = model.tokenize(prompt, true);
  const tokens: number[] = [];
  let stopped = false;
  for await (const token of sequence.evaluate(promptTokens, { temperature: 0, yieldEogToken: true })) {
    if (model.isEogToken(token)) {
      stopped = true;
      tokens.push(token);
      break;
    }
    tokens.push(token);
    if (tokens.length >= request.max_tokens) break;
  }
  results.push({ prompt_tokens: promptTokens.map(Number), tokens: tokens.map(Number), stopped });
}
const eog = Object.fromEntries(request.check_tokens.map((t) => [String(t), model.isEogToken(t as never)]));
await context.dispose();
await model.dispose();
process.stdout.write(JSON.stringify({ results, eog }) + '\n');
