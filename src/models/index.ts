/**
 * The model registry: every model weitiao can train from or chat with, by id.
 *
 * ```ts
 * await createTinyModel(ctx, { name: 'tiny-qwen2', corpusFiles: ['reviews.csv'] });
 * await pullModel(ctx, { repo: 'Qwen/Qwen2.5-0.5B-Instruct', source: 'huggingface' });
 * resolveModel(ctx, 'ft:tiny-qwen2:waimai:abc123'); // -> { basePath, adapterPath, … }
 * ```
 * Base models are Hugging Face directories (`models/<name>` for tiny and pulled ones, anywhere for local
 * ones); fine-tuned models and checkpoints are LoRA adapter directories that name their base model.
 * The wire object is OpenAI's model object plus one extension field, `weitiao`.
 */

export type { HubSource, PullProgress } from './internal/hub.js';
export { ModelDeleted, ModelKind, ModelList, ModelObject, ModelSource, type ResolvedModel } from './wire.js';
export { deleteModel, listModels, publicModel, registerModel, retrieveModel, type RegisterModelInput } from './registry.js';
export { materializeModel, resolveModel, resolveModelParam } from './resolve.js';
export { materializeCheckpointDir, settledStorage, storeModelDirs, storeUnstoredModels, trainedDirAvailable, type ObjectStorageMark } from './stored.js';
export {
  addLocalModel, checkModelDir, createTinyModel, pullModel, validateModelName, type CreateTinyModelOptions, type PullModelOptions,
} from './base-models.js';
