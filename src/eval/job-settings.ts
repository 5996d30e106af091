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
  /**
   * General chat examples mixed into the training file before the job is created: this many per training
   * example, 0 < ratio ≤ 1, seeded by the job's seed (0 when none). The job names the mixed copy; the mix is
   * recorded in its metadata (`weitiao.mix_general`). The CLI's `--mix-general RATIO`.
   */
  mix_general: z.number().gt(0).max(1).optional(),
});
export type EvalJobSettings = z.infer<typeof EvalJobSettings>;
