/** The model's wire objects (OpenAI's model object plus `weitiao`) and what the engine needs to load one. */
import { z } from 'zod';

export const ModelKind = z.enum(['base', 'fine-tuned', 'checkpoint']);
export type ModelKind = z.infer<typeof ModelKind>;

export const ModelSource = z.enum(['tiny', 'huggingface', 'modelscope', 'local', 'training']);
export type ModelSource = z.infer<typeof ModelSource>;

/** OpenAI's model object; weitiao's own fields sit in `weitiao`. */
export const ModelObject = z.object({
  id: z.string(),
  object: z.literal('model'),
  created: z.number().int(),
  owned_by: z.string(),
  weitiao: z.object({
    kind: ModelKind,
    source: ModelSource,
    /** The base model's id (fine-tuned models and checkpoints), else null. */
    base_model: z.string().nullable(),
    job_id: z.string().nullable(),
    /** Base: the Hugging Face model directory; fine-tuned/checkpoint: the adapter directory (a complete model when `metadata.format` is `full`). Over the API: relative to the home directory (a folder outside it: its name only). */
    path: z.string(),
    metadata: z.record(z.string(), z.unknown()),
  }),
});
export type ModelObject = z.infer<typeof ModelObject>;

export const ModelList = z.object({ object: z.literal('list'), data: z.array(ModelObject) });
export type ModelList = z.infer<typeof ModelList>;

export const ModelDeleted = z.object({ id: z.string(), object: z.literal('model'), deleted: z.boolean() });
export type ModelDeleted = z.infer<typeof ModelDeleted>;

/** What the engine needs to load a model: the base directory plus, for fine-tunes, the adapter. */
export interface ResolvedModel {
  /** The registered id. */
  id: string;
  kind: ModelKind;
  basePath: string;
  adapterPath: string | null;
  /** The base model's id (itself for a base model; a path only for a job trained on a then-unregistered directory). */
  baseId: string;
}
