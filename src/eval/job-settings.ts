/**
 * The job-creation settings evaluation owns, for the `weitiao` extension object of a create request (spread
 * into the jobs' WeitiaoJobSettings as TrainingControls is). Only zod here: the jobs' schema module imports
 * it at load, so it must not pull the evaluation services (and their imports) in.
 */
import { z } from 'zod';

export const EvalJobSettings = z.strictObject({
  /** After the job succeeds, score base and fine-tune on the general-ability set; `max_examples` of the 300 items. */
  forgetting_check: z
    .union([z.boolean(), z.strictObject({ max_examples: z.number().int().min(6).max(300) })])
    .optional(),
});
export type EvalJobSettings = z.infer<typeof EvalJobSettings>;
