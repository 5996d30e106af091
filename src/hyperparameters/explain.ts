/**
 * Why each resolved hyperparameter has its value, in English and Chinese: the `auto` rules of this module
 * (EPOCH_RULE, BATCH_RULE, BASE_LEARNING_RATE) told with the job's own numbers. The console shows these
 * next to its form (`POST /v1/weitiao/estimate`).
 */
import { BASE_LEARNING_RATE, BATCH_RULE, EPOCH_RULE, type ResolvedHyperparameters } from './index.js';

/** A resolved value with why: `explanation` bilingual as every message, `explanation_i18n` for a UI that shows one language. */
export interface Explained {
  value: number;
  auto: boolean;
  explanation: string;
  explanation_i18n: { en: string; zh: string };
}

export interface ExplainInput {
  n_examples: number;
  /** Resolved; `auto` names the ones the rules chose (a job's wire form: plain strings). */
  hyperparameters: Pick<ResolvedHyperparameters, 'n_epochs' | 'batch_size' | 'learning_rate' | 'learning_rate_multiplier' | 'estimated_total_steps'> & { auto: readonly string[] };
  /** The batch size asked for (a number larger than the examples is cut to them). */
  requested_batch_size?: number | 'auto';
  method: 'lora' | 'qlora';
  lora: { r: number; alpha: number; r_set: boolean; alpha_set: boolean };
  /** From the engine's estimate; null when there is none. */
  trainable_parameters: number | null;
}

const explained = (value: number, auto: boolean, en: string, zh: string): Explained => ({ value, auto, explanation: `${en} / ${zh}`, explanation_i18n: { en, zh } });
const passes = (k: number) => `${k} pass${k === 1 ? '' : 'es'}`;
const round4 = (x: number) => Number(x.toPrecision(4));

export function explainHyperparameters(input: ExplainInput) {
  const { n_examples: n, hyperparameters: hp, method } = input;
  const isAuto = (k: 'n_epochs' | 'batch_size' | 'learning_rate_multiplier') => hp.auto.includes(k);
  const { minTrainedExamples: lo, maxTrainedExamples: hi } = EPOCH_RULE;

  const epochs = !isAuto('n_epochs')
    ? explained(hp.n_epochs, false, `set by you: ${passes(hp.n_epochs)} over ${n} examples`, `手动设置：${n} 个样本训练 ${hp.n_epochs} 轮`)
    : n * EPOCH_RULE.default < lo
      ? explained(hp.n_epochs, true, `auto: ⌈${lo} / ${n} examples⌉, so the model sees at least ${lo} examples (at most ${EPOCH_RULE.max} epochs)`, `自动：⌈${lo} / ${n}⌉，保证至少训练 ${lo} 个样本（最多 ${EPOCH_RULE.max} 轮）`)
      : n * EPOCH_RULE.default > hi
        ? explained(hp.n_epochs, true, `auto: ⌊${hi} / ${n} examples⌋, so training stops after about ${hi} examples (at least 1 epoch)`, `自动：⌊${hi} / ${n}⌋，总训练样本约 ${hi} 个（至少 1 轮）`)
        : explained(hp.n_epochs, true, `auto: ${passes(EPOCH_RULE.default)} over ${n} examples (${lo}–${hi} examples in all)`, `自动：${n} 个样本训练 ${EPOCH_RULE.default} 轮（总样本数在 ${lo}–${hi} 之间）`);

  const steps = hp.estimated_total_steps;
  const batch = isAuto('batch_size')
    ? explained(
        hp.batch_size,
        true,
        `auto: ${BATCH_RULE.fraction * 100} % of ${n} examples to the nearest power of two, ${BATCH_RULE.min}–${BATCH_RULE.maxCpu} on CPU; ${steps} steps`,
        `自动：样本数 ${n} 的 ${BATCH_RULE.fraction * 100}%，取最接近的 2 的幂（CPU 上 ${BATCH_RULE.min}–${BATCH_RULE.maxCpu}）；共 ${steps} 步`,
      )
    : typeof input.requested_batch_size === 'number' && hp.batch_size < input.requested_batch_size
      ? explained(hp.batch_size, false, `set by you, cut to the ${n} examples there are`, `手动设置，已减为样本数 ${n}`)
      : explained(hp.batch_size, false, `set by you: ${steps} steps`, `手动设置：共 ${steps} 步`);

  const lr = round4(hp.learning_rate);
  const base = BASE_LEARNING_RATE[method];
  const name = method === 'qlora' ? 'QLoRA' : 'LoRA';
  const lrAuto = isAuto('learning_rate_multiplier');
  const [lrEn, lrZh] = lrAuto
    ? [`auto: 1 × ${name}'s base rate ${base} = ${lr}`, `自动：1 × ${name} 基础学习率 ${base} = ${lr}`]
    : [`set by you: ${round4(hp.learning_rate_multiplier)} × ${base} = ${lr}`, `手动设置：${round4(hp.learning_rate_multiplier)} × ${base} = ${lr}`];

  const { r, alpha } = input.lora;
  const p = input.trainable_parameters;
  const trainable = p === null ? '?' : p >= 1e6 ? `≈ ${(p / 1e6).toFixed(1)} M` : `≈ ${Math.round(p / 1e3)} k`;
  const scale = Number((alpha / r).toPrecision(3));
  return {
    n_epochs: epochs,
    batch_size: batch,
    learning_rate_multiplier: explained(hp.learning_rate_multiplier, lrAuto, lrEn, lrZh),
    learning_rate: explained(hp.learning_rate, lrAuto, lrEn, lrZh),
    lora_r: explained(r, !input.lora.r_set, `${name} rank ${r}: ${trainable} trainable parameters`, `${name} 秩 ${r}：可训练参数 ${trainable}`),
    lora_alpha: explained(alpha, !input.lora.alpha_set, `updates are scaled by alpha / rank = ${scale}`, `更新量乘以 alpha / 秩 = ${scale}`),
  };
}
