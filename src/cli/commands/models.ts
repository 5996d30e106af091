/** `weitiao models list|create-tiny|pull|add|delete|deploy|undeploy`: base models, fine-tuned models and how they are served. */
import type { Command } from 'commander';
import { addLocalModel, createTinyModel, deleteModel, listModels, pullModel, settledStorage, type HubSource } from '../../models/index.js';
import { closeChatEngine, deploymentsByModel, deployModel, undeployModel, type Deployment, type DeployParams } from '../../chat/index.js';
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
        const deployments = deploymentsByModel(ctx);
        const data = list.data.map((m) => ({ ...m, weitiao: { ...m.weitiao, deployment: deployments.get(m.id) ?? null } }));
        if (o.json) return printJson({ ...list, data });
        if (list.data.length === 0) return console.log('no models yet / 暂无模型. Try: weitiao models create-tiny tiny-qwen2 --corpus <file>');
        console.log(
          table(
            ['id', 'kind 类型', 'base 基座', 'source 来源', 'served by 部署', 'created 创建时间'],
            data.map((m) => [m.id, m.weitiao.kind, m.weitiao.base_model ?? '-', m.weitiao.source, describeDeployment(m.weitiao.deployment), formatTime(m.created)]),
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
    .command('deploy <model>')
    .description('serve a model on a backend: engine (warm Python process), llamacpp (GGUF, concurrent sequences) or vllm (proxy) / 部署模型')
    .requiredOption('--backend <backend>', 'engine | llamacpp | vllm')
    .option('--replicas <n>', 'llamacpp: contexts, each decoding --parallel sequences', number('replicas', 'int'), 1)
    .option('--parallel <n>', 'llamacpp: sequences decoded together per replica (default 4)', number('parallel', 'int'))
    .option('--gguf <file>', "llamacpp: the GGUF (the base model's, with --lora); default the model's latest GGUF export")
    .option('--lora <file>', 'llamacpp: a LoRA adapter GGUF applied on --gguf')
    .option('--export <id>', 'llamacpp: a succeeded GGUF or Ollama export of this model')
    .option('--context-size <n>', 'llamacpp: tokens per sequence, prompt and answer (default the model\'s, at most 2048)', number('context-size', 'int'))
    .option('--threads <n>', 'llamacpp: threads per replica (default 1 for a model under 64 MB, else the cores)', number('threads', 'int'))
    .option('--base-url <url>', 'vllm: the server\'s OpenAI base URL, e.g. http://gpu-box:8000/v1')
    .option('--served-model <name>', 'vllm: the name the server serves the model under (default the model id)')
    .option('--api-key-env <var>', 'vllm: environment variable holding the server\'s API key')
    .option('--json', 'print as JSON')
    .action(async (model: string, o, cmd: Command) => {
      await withContext(cmd, async (ctx) => {
        const params: DeployParams = {
          backend: o.backend,
          replicas: o.replicas,
          parallel: o.parallel,
          gguf: o.gguf,
          lora: o.lora,
          export_id: o.export,
          context_size: o.contextSize,
          threads: o.threads,
          base_url: o.baseUrl,
          served_model: o.servedModel,
          api_key_env: o.apiKeyEnv,
        };
        try {
          const deployment = await deployModel(ctx, model, params);
          if (o.json) return printJson(deployment);
          console.log(`deployed ${deployment.model}: ${describeDeployment(deployment)} / 已部署. \`weitiao serve\` answers it on /v1/chat/completions`);
        } finally {
          await closeChatEngine(); // the CLI only checked that it loads; the server loads its own
        }
      });
    });

  models
    .command('undeploy <model>')
    .description("end a model's deployment: the engine's warm process serves it again / 取消部署")
    .action(async (model: string, _o, cmd: Command) => {
      await withContext(cmd, async (ctx) => {
        const deployment = await undeployModel(ctx, model);
        console.log(`undeployed ${deployment.model} (was ${deployment.backend}) / 已取消部署`);
      });
    });

  models
    .command('delete <id>')
    .description('delete a fine-tuned model (and its checkpoints and files); --force for base models')
    .option('--force', 'also delete base models')
    .action(async (id: string, o, cmd: Command) => {
      await withContext(cmd, async (ctx) => {
        deleteModel(ctx, id, { force: Boolean(o.force) });
        await settledStorage(ctx); // its objects in object storage go before the store closes
        console.log(`deleted ${id}`);
      });
    });
}

/** `llamacpp ×2 (4 seq) ready`, `vllm → name ready`, or `engine (default)` for a model without a deployment. */
function describeDeployment(d: Deployment | null): string {
  if (!d) return 'engine (default)';
  const shape =
    d.backend === 'llamacpp'
      ? ` ×${d.replicas} (${d.config.parallel} seq${d.config.lora ? ', LoRA' : ''})`
      : d.backend === 'vllm'
        ? ` → ${d.config.served_model} @ ${d.config.base_url}`
        : '';
  return `${d.backend}${shape} ${d.state}${d.error ? `: ${d.error}` : ''}`;
}
