// Greedy generation through llama.cpp itself (node-llama-cpp's prebuilt CPU binaries, via src/llamacpp), for
// engine/tests/test_export.py: it proves an exported GGUF loads in llama.cpp and answers token for token as the
// engine does.
//
//   node --import tsx engine/tests/llamacpp_greedy.ts request.json
//   request: {"runs": [{"model": "model.gguf", "lora": "adapter.gguf" | null}…], "prompts": ["<rendered chat prompt>"…],
//             "max_tokens": 16, "check_tokens": [ids whose end-of-generation flag to report]}
//   stdout:  {"runs": [{"results": [{"prompt_tokens": [...], "tokens": [...], "stopped": true}…], "eog": {"<id>": true}}…]}
// Several runs share one process: starting node-llama-cpp costs more than a tiny model's answers.
import { readFileSync } from 'node:fs';
import { loadGguf, unloadGguf } from '../../src/llamacpp/index.js';

type Run = { model: string; lora: string | null };
type Request = { runs: Run[]; prompts: string[]; max_tokens: number; check_tokens: number[] };

async function greedy(run: Run, request: Request) {
  const model = await loadGguf(run.model);
  const context = await model.createContext({
    contextSize: 512,
    sequences: 1,
    ...(run.lora ? { lora: { adapters: [{ filePath: run.lora }] } } : {}),
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
      tokens.push(token);
      if (model.isEogToken(token)) {
        stopped = true;
        break;
      }
      if (tokens.length >= request.max_tokens) break;
    }
    results.push({ prompt_tokens: promptTokens.map(Number), tokens, stopped });
  }
  const eog = Object.fromEntries(request.check_tokens.map((t) => [String(t), model.isEogToken(t as never)]));
  await context.dispose();
  await unloadGguf(run.model);
  return { results, eog };
}

const request = JSON.parse(readFileSync(process.argv[2], 'utf8')) as Request;
const runs = [];
for (const run of request.runs) runs.push(await greedy(run, request));
process.stdout.write(JSON.stringify({ runs }) + '\n');
