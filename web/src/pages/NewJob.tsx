/**
 * New fine-tune: base model, method, hyperparameters (empty = `auto`, each with a one-line explanation
 * from the server's rules), suffix and seed; the estimate updates as the form changes, before launching.
 */
import { useEffect, useState } from 'react';
import { api, messageOf, type EstimateResponse, type FileObject, type Job, type List, type Model } from '../api';
import { EXAMPLE_GRADER, GraderEditor, parseGrader } from '../components/GraderEditor';
import { FileSelect, ModelSelect } from '../components/Pickers';
import { AsyncView, ErrorMessage, Loading, formatBytes, formatDuration, formatNumber } from '../components/ui';
import { useAction, useAsync } from '../hooks';
import { useI18n, type MessageKey } from '../i18n';
import { navigate } from '../router';
import { isFineTuned } from './Models';

const ESTIMATE_DEBOUNCE_MS = 400;

type HpName = 'n_epochs' | 'batch_size' | 'learning_rate_multiplier' | 'lora_r' | 'lora_alpha';
const HP_FIELDS: { name: HpName; step: string; integer: boolean }[] = [
  { name: 'n_epochs', step: '1', integer: true },
  { name: 'batch_size', step: '1', integer: true },
  { name: 'learning_rate_multiplier', step: '0.1', integer: false },
  { name: 'lora_r', step: '1', integer: true },
  { name: 'lora_alpha', step: '1', integer: false },
];

/** The form's hyperparameters as the API wants them: OpenAI's three (`auto` when empty) and LoRA's. */
export function hyperparameterBody(values: Record<HpName, string>) {
  const num = (v: string) => (v.trim() === '' ? undefined : Number(v));
  const openai = {
    n_epochs: num(values.n_epochs) ?? ('auto' as const),
    batch_size: num(values.batch_size) ?? ('auto' as const),
    learning_rate_multiplier: num(values.learning_rate_multiplier) ?? ('auto' as const),
  };
  const lora: { r?: number; alpha?: number } = {};
  if (num(values.lora_r) !== undefined) lora.r = num(values.lora_r);
  if (num(values.lora_alpha) !== undefined) lora.alpha = num(values.lora_alpha);
  return { openai, lora };
}

export function NewJob({ trainingFile, validationFile }: { trainingFile?: string; validationFile?: string }) {
  const { t, lang } = useI18n();
  const models = useAsync((signal) => api<List<Model>>('/v1/models', { signal }), []);
  const files = useAsync((signal) => api<List<FileObject>>('/v1/files', { signal, query: { purpose: 'fine-tune', limit: 100 } }), []);

  const [model, setModel] = useState('');
  const [training, setTraining] = useState(trainingFile ?? '');
  const [validation, setValidation] = useState(validationFile ?? '');
  const [suffix, setSuffix] = useState('');
  const [seed, setSeed] = useState('');
  // The recipes the server's estimate covers, and reinforcement with a grader; full fine-tuning and DPO
  // are in the CLI and the API.
  const [method, setMethod] = useState<'lora' | 'qlora' | 'reinforcement'>('lora');
  const [grader, setGrader] = useState(JSON.stringify(EXAMPLE_GRADER, null, 2));
  const [hp, setHp] = useState<Record<HpName, string>>({
    n_epochs: '',
    batch_size: '',
    learning_rate_multiplier: '',
    lora_r: '',
    lora_alpha: '',
  });
  const [estimate, setEstimate] = useState<EstimateResponse>();
  const [estimateError, setEstimateError] = useState<string>();
  const [estimating, setEstimating] = useState(false);

  // Default to the first base model once the list arrives.
  useEffect(() => {
    if (!model && models.data) {
      const base = models.data.data.find((m) => !isFineTuned(m)) ?? models.data.data[0];
      if (base) setModel(base.id);
    }
  }, [models.data, model]);

  // The estimate follows the form.
  useEffect(() => {
    if (!model || !training || method === 'reinforcement') return; // the estimate covers supervised runs
    const controller = new AbortController();
    setEstimating(true);
    const timer = setTimeout(() => {
      const { openai, lora } = hyperparameterBody(hp);
      api<EstimateResponse>('/v1/weitiao/estimate', {
        signal: controller.signal,
        timeoutMs: 2 * 60_000,
        json: { model, training_file: training, validation_file: validation || undefined, method, hyperparameters: openai, lora },
      })
        .then((e) => {
          setEstimate(e);
          setEstimateError(undefined);
        })
        .catch((err) => {
          const m = messageOf(err);
          if (m && !controller.signal.aborted) setEstimateError(m);
        })
        .finally(() => !controller.signal.aborted && setEstimating(false));
    }, ESTIMATE_DEBOUNCE_MS);
    return () => {
      clearTimeout(timer);
      controller.abort();
    };
  }, [model, training, validation, method, hp]);

  const launch = useAction(async () => {
    const { openai, lora } = hyperparameterBody(hp);
    const parsed = method === 'reinforcement' ? parseGrader(grader) : null;
    if (parsed && 'error' in parsed) throw new Error(parsed.error);
    const recipe = method === 'reinforcement' ? null : method;
    const job = await api<Job>('/v1/fine_tuning/jobs', {
      json: {
        model,
        training_file: training,
        ...(validation ? { validation_file: validation } : {}),
        ...(suffix.trim() ? { suffix: suffix.trim() } : {}),
        ...(seed.trim() ? { seed: Number(seed) } : {}),
        method: parsed
          ? { type: 'reinforcement', reinforcement: { grader: parsed.grader, hyperparameters: openai } }
          : { type: 'supervised', supervised: { hyperparameters: openai } },
        ...(Object.keys(lora).length || (recipe && recipe !== 'lora')
          ? { weitiao: { ...(recipe && recipe !== 'lora' ? { method: recipe } : {}), ...(Object.keys(lora).length ? { lora } : {}) } }
          : {}),
      },
    });
    navigate('jobs', job.id);
  });

  return (
    <div className="page">
      <h1>{t('new.title')}</h1>
      <form
        className="card form"
        onSubmit={(e) => {
          e.preventDefault();
          void launch.run();
        }}
      >
        <div className="grid-2">
          <label>
            {t('new.baseModel')}
            <AsyncView state={models}>
              {(list) => (
                <ModelSelect name="model" items={list.data} value={model} onChange={setModel} required />
              )}
            </AsyncView>
          </label>
          <label>
            {t('new.method')}
            <select name="method" value={method} onChange={(e) => setMethod(e.target.value as 'lora' | 'qlora' | 'reinforcement')}>
              <option value="lora">LoRA</option>
              <option value="qlora">QLoRA (NF4)</option>
              <option value="reinforcement">{t('new.reinforcement')}</option>
            </select>
          </label>
          <label>
            {t('new.trainingFile')}
            <AsyncView state={files}>
              {(list) => (
                <FileSelect name="training_file" items={list.data} value={training} onChange={setTraining} none={t('new.pickFile')} required />
              )}
            </AsyncView>
          </label>
          <label>
            {t('new.validationFile')} <span className="muted">{t('common.optional')}</span>
            <AsyncView state={files}>
              {(list) => (
                <FileSelect name="validation_file" items={list.data} value={validation} onChange={setValidation} none={t('new.none')} />
              )}
            </AsyncView>
          </label>
        </div>

        {method === 'reinforcement' && <GraderEditor value={grader} onChange={setGrader} />}

        <h2>{t('new.hyperparameters')}</h2>
        <p className="muted small">{t('new.autoHelp')}</p>
        <div className="hp-grid">
          {HP_FIELDS.map((f) => {
            const resolved = estimate?.hyperparameters[f.name];
            return (
              <label key={f.name} className="hp">
                <span>{t(`new.${f.name}` as MessageKey)}</span>
                <input
                  name={f.name}
                  type="number"
                  step={f.step}
                  min={0}
                  inputMode={f.integer ? 'numeric' : 'decimal'}
                  placeholder={resolved ? `${t('common.auto')}: ${resolved.value}` : t('common.auto')}
                  value={hp[f.name]}
                  onChange={(e) => setHp((h) => ({ ...h, [f.name]: e.target.value }))}
                />
                <span className="muted small explanation" data-testid={`explain-${f.name}`}>
                  {resolved ? (resolved.explanation_i18n?.[lang] ?? resolved.explanation) : t(`new.help.${f.name}` as MessageKey)}
                </span>
              </label>
            );
          })}
        </div>

        <div className="grid-2">
          <label>
            {t('new.suffix')} <span className="muted">{t('common.optional')}</span>
            <input name="suffix" maxLength={64} value={suffix} onChange={(e) => setSuffix(e.target.value)} />
            <span className="muted small">{t('new.suffixHelp')}</span>
          </label>
          <label>
            {t('new.seed')} <span className="muted">{t('common.optional')}</span>
            <input name="seed" type="number" value={seed} onChange={(e) => setSeed(e.target.value)} />
          </label>
        </div>

        <h2>{t('new.estimate')}</h2>
        <div data-testid="estimate">
          {!training ? (
            <p className="muted">{t('new.pickFile')}</p>
          ) : estimateError ? (
            <ErrorMessage message={estimateError} />
          ) : estimate ? (
            <dl className="kv estimate">
              <dt>{t('new.trainedTokens')}</dt>
              <dd>{formatNumber(estimate.trained_tokens, 12)}</dd>
              <dt>{t('new.steps')}</dt>
              <dd>{formatNumber(estimate.total_steps, 12)}</dd>
              <dt>{t('new.time')}</dt>
              <dd>{estimate.estimated_seconds === null ? t('new.unknown') : `≈ ${formatDuration(estimate.estimated_seconds)}`}</dd>
              <dt>{t('new.memory')}</dt>
              <dd>{estimate.estimated_memory_bytes === null ? t('new.unknown') : `≈ ${formatBytes(estimate.estimated_memory_bytes)}`}</dd>
              {estimating && (
                <dd className="muted small">{t('new.estimating')}</dd>
              )}
            </dl>
          ) : estimating ? (
            <Loading label={t('new.estimating')} />
          ) : null}
          {estimate?.notes?.map((n, i) => (
            <p key={i} className="muted small">
              {n}
            </p>
          ))}
        </div>

        <ErrorMessage message={launch.error} />
        <button type="submit" className="primary" disabled={launch.running || !model || !training} data-testid="launch">
          {launch.running ? t('new.launching') : t('new.launch')}
        </button>
      </form>
    </div>
  );
}
