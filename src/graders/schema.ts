/**
 * Graders in OpenAI's JSON shapes, one zod schema per type, discriminated by `type` (mirror of
 * engine/weitiao_engine/graders/schema.py). Unknown keys are errors, so a typo is named, not ignored.
 * weitiao's own setting (the judge's endpoint) sits in one extension object, `weitiao`.
 */
import { z } from 'zod';

/** 1 when `input` and `reference` compare true: eq/ne exact, like = contains, ilike = contains ignoring case. */
export const StringCheckGrader = z.strictObject({
  type: z.literal('string_check'),
  name: z.string(),
  input: z.string(),
  reference: z.string(),
  operation: z.enum(['eq', 'ne', 'like', 'ilike']),
});

export const SIMILARITY_METRICS = [
  'fuzzy_match', 'bleu', 'gleu', 'meteor', 'cosine', 'rouge_1', 'rouge_2', 'rouge_3', 'rouge_4', 'rouge_5', 'rouge_l',
] as const;

/** Word metrics on CJK text score by character (the result's `weitiao.notes` says so); cosine needs a local embedding model. */
export const TextSimilarityGrader = z.strictObject({
  type: z.literal('text_similarity'),
  name: z.string(),
  input: z.string(),
  reference: z.string(),
  evaluation_metric: z.enum(SIMILARITY_METRICS),
  /** Evals' testing criteria carry it; a reward ignores it. */
  pass_threshold: z.number().nullish(),
});

const InputText = z.strictObject({ type: z.literal('input_text'), text: z.string() });
const OutputText = z.strictObject({ type: z.literal('output_text'), text: z.string() });
const ContentPart = z.union([z.string(), InputText, OutputText]);

/** One message to the judge; its text may hold `{{item.x}}` / `{{sample.output_text}}` templates. */
export const GraderMessage = z.strictObject({
  role: z.enum(['user', 'assistant', 'system', 'developer']),
  content: z.union([z.string(), InputText, OutputText, z.array(ContentPart)]),
  type: z.literal('message').nullish(),
});

export const SamplingParams = z.strictObject({
  /** OpenAI's spelling, sic. */
  max_completions_tokens: z.number().int().positive().nullish(),
  /** Recorded; local judges have no reasoning budget to set. */
  reasoning_effort: z.string().nullish(),
  seed: z.number().int().nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
});

/** weitiao's extension: the judge's OpenAI-compatible endpoint, over the configured one (WEITIAO_JUDGE_BASE_URL). */
export const JudgeEndpoint = z.strictObject({
  base_url: z.string().nullish(),
  api_key: z.string().nullish(),
});

export const ScoreModelGrader = z.strictObject({
  type: z.literal('score_model'),
  name: z.string(),
  model: z.string(),
  input: z.array(GraderMessage).min(1),
  /** `[low, high]`, default `[0, 1]`; a judge's score outside it is a parse error. */
  range: z
    .array(z.number())
    .length(2)
    .refine((r) => r[0] < r[1], { message: 'range must be [low, high] with low < high' })
    .nullish(),
  sampling_params: SamplingParams.nullish(),
  pass_threshold: z.number().nullish(),
  weitiao: JudgeEndpoint.nullish(),
});

/** `source` defines `grade(sample, item) -> float`; it runs in a sandboxed process (no network, limits, read-only files). */
export const PythonGrader = z.strictObject({
  type: z.literal('python'),
  name: z.string(),
  source: z.string().min(1).max(256 * 1024),
  /** OpenAI's runtime image; weitiao runs the engine's own Python. */
  image_tag: z.string().nullish(),
  pass_threshold: z.number().nullish(),
});

export const SubGrader = z.discriminatedUnion('type', [StringCheckGrader, TextSimilarityGrader, ScoreModelGrader, PythonGrader]);

/** Named graders combined by `calculate_output`: + - * / ^, parentheses, min max abs floor ceil exp sqrt log. */
export const MultiGrader = z.strictObject({
  type: z.literal('multi'),
  name: z.string(),
  graders: z.record(z.string(), SubGrader).refine((g) => Object.keys(g).length > 0, { message: 'graders must name at least one grader' }),
  calculate_output: z.string().min(1),
});

export const Grader = z.discriminatedUnion('type', [StringCheckGrader, TextSimilarityGrader, ScoreModelGrader, PythonGrader, MultiGrader]);
export type Grader = z.infer<typeof Grader>;
export type StringCheckGrader = z.infer<typeof StringCheckGrader>;
export type TextSimilarityGrader = z.infer<typeof TextSimilarityGrader>;
export type ScoreModelGrader = z.infer<typeof ScoreModelGrader>;
export type PythonGrader = z.infer<typeof PythonGrader>;
export type MultiGrader = z.infer<typeof MultiGrader>;

/** `POST /v1/fine_tuning/alpha/graders/run`: OpenAI's request body. */
export const GraderRunParams = z.object({
  grader: Grader,
  /** The `sample` namespace: `{{sample.output_text}}`, and `{{sample.output_json.x}}` when it is JSON. */
  model_sample: z.string(),
  /** The `item` namespace: `{{item.x}}`. */
  item: z.record(z.string(), z.unknown()).optional(),
});
export type GraderRunParams = z.infer<typeof GraderRunParams>;

/** `POST /v1/fine_tuning/alpha/graders/validate`: OpenAI's request body. */
export const GraderValidateParams = z.object({ grader: Grader });
export type GraderValidateParams = z.infer<typeof GraderValidateParams>;

/** OpenAI's validate response: the grader, as it will run. */
export const GraderValidateResponse = z.object({ grader: Grader });
export type GraderValidateResponse = z.infer<typeof GraderValidateResponse>;
