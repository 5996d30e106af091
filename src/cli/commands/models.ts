/** `weitiao models list|create-tiny|pull|add|delete`: base models and fine-tuned models. */
import type { Command } from 'commander';
import { addLocalModel, createTinyModel, deleteModel, listModels, pullModel, type HubSource } from '../../models/index.js';
import { ProgressBar } from '../progress.js';
import { formatTime, printJson, table } from '../output.js';
import { number, withContext } from './shared.js';

export function registerModelCommands(program: Command): void {
  const models = program.command('models').description('base and fine-tuned models / 模型管理');

  models
    .command('list')
    .description('list base models, fine-tuned models and checkpoints')
    .option('--kind <kind>', 'base | fine-tuned | checkpoint')
    .option('--json', 'print as JSON')
    .action(async (o, cmd: Command) => {
      await withContext(cmd, (ctx) => {
        const list = listModels(ctx, { kind: o.kind });
        if (o.json) return printJson(list);
        if (list.data.length === 0) return console.log('no models yet / 暂无模型. Try: weitiao models create-tiny tiny-qwen2 --corpus <file>');
        console.log(
          table(
            ['id', 'kind 类型', 'base 基座', 'source 来源', 'created 创建时间'],
            list.data.map((m) => [m.id, m.weitiao.kind, m.weitiao.base_model ?? '-', m.weitiao.source, formatTime(m.created)]),
          ),
        );
      });
    });

  models
    .command('create-tiny <name>')
    .description('build a random-weight model in a real architecture with a tokenizer trained on your text (tests, offline demos)')
    .requiredOption('--corpus <files...>', 'text/CSV files whose lines train the tokenizer')
    .option('--arch <arch>', 'qwen2 | llama', 'qwen2')
    .option('--hidden-size <n>', 'hidden size', number('hidden-size', 'int'), 128)
    .option('--layers <n>', 'number of layers', number('layers', 'int'), 2)
    .option('--heads <n>', 'attention heads', number('heads', 'int'), 4)
    .option('--kv-heads <n>', 'key/value heads', number('kv-heads', 'int'), 2)
    .option('--vocab-size <n>', 'tokenizer vocabulary', number('vocab-size', 'int'), 4096)
    .option('--chat-template <template>', 'chatml | llama3 | glm4', 'chatml')
    .option('--config-from <config>', 'copy the shapes of a real model\'s config.json (e.g. Qwen2.5-0.5B)')
    .option('--seed <n>', 'seed', number('seed', 'int'), 0)
    .option('--overwrite', 'replace a model of the same name')
    .action(async (name: string, o, cmd: Command) => {
      await withContext(cmd, async (ctx) => {
        let bar: ProgressBar | null = null;
        const model = await createTinyModel(ctx, {
          name,
          corpusFiles: o.corpus,
          architecture: o.arch,
          hiddenSize: o.hiddenSize,
          layers: o.layers,
          heads: o.heads,
          kvHeads: o.kvHeads,
          vocabSize: o.vocabSize,
          chatTemplate: o.chatTemplate,
          configFrom: o.configFrom ?? null,
          seed: o.seed,
          overwrite: Boolean(o.overwrite),
          onProgress: (p) => {
            if (!bar || bar.label !== p.phase) {
              bar?.done();
              bar = new ProgressBar({ label: p.phase, total: p.total });
            }
            bar.total = p.total;
            bar.update(p.current, p.message ?? '');
          },
        });
        (bar as ProgressBar | null)?.done();
        const meta = model.weitiao.metadata as Record<string, unknown>;
        console.log(`created ${model.id} at ${model.weitiao.path}${meta.parameters ? ` (${meta.parameters} parameters 参数)` : ''}`);
      });
    });

  models
    .command('pull <repo>')
    .description('download a model from the Hugging Face Hub (honours HF_ENDPOINT mirrors) or ModelScope; resumable')
    .option('--source <source>', 'huggingface | modelscope', 'huggingface')
    .option('--revision <rev>', 'branch, tag or commit')
    .option('--endpoint <url>', 'hub endpoint (default: HF_ENDPOINT / MODELSCOPE_ENDPOINT, else the public site)')
    .option('--name <id>', 'register under this id (default: the repo name)')
    .action(async (repo: string, o, cmd: Command) => {
      await withContext(cmd, async (ctx) => {
        const abort = new AbortController();
        process.once('SIGINT', () => abort.abort());
        let bar: ProgressBar | null = null;
        let current = '';
        const model = await pullModel(ctx, {
          repo,
          source: o.source as HubSource,
          revision: o.revision,
          endpoint: o.endpoint,
          name: o.name,
          signal: abort.signal,
          onProgress: (p) => {
            if (p.file !== current) {
              bar?.done();
              current = p.file;
              bar = new ProgressBar({ label: `[${p.index + 1}/${p.count}] ${p.file}`, total: p.total ?? 0 });
            }
            bar!.update(p.downloaded, `${(p.bytesPerSecond / 1e6).toFixed(1)} MB/s`);
          },
        });
        (bar as ProgressBar | null)?.done();
        console.log(`pulled ${model.id} into ${model.weitiao.path}`);
      });
    });

  models
    .command('add <path>')
    .description('register an existing Hugging Face model directory as a base model')
    .option('--name <id>', 'id to register it under (default: the directory name)')
    .action(async (dir: string, o, cmd: Command) => {
      await withContext(cmd, (ctx) => {
        const model = addLocalModel(ctx, { name: o.name, path: dir });
        console.log(`added ${model.id} → ${model.weitiao.path}`);
      });
    });

  models
    .command('delete <id>')
    .description('delete a fine-tuned model (and its checkpoints and files); --force for base models')
    .option('--force', 'also delete base models')
    .action(async (id: string, o, cmd: Command) => {
      await withContext(cmd, (ctx) => {
        deleteModel(ctx, id, { force: Boolean(o.force) });
        console.log(`deleted ${id}`);
      });
    });
}
