/**
 * The data workshop (#/data, issue 18): a file's report (every issue at file:line; exact, conflicting and
 * near duplicates; validation examples leaking from training), preparing it with the flagged rows dropped
 * (on_invalid skip + dedupe), and teacher runs (label a column, synthesize examples) started and followed
 * here: estimate first, then progress, cancel, resume and the output's download.
 * Strings are local (en/zh) until the console's i18n tables settle in web/src/i18n/.
 */
import { useState } from 'react';
import { api, send, type DataIssue, type FileObject, type List, type PrepareResponse, type ValidateResponse } from '../api';
import { FileSelect } from '../components/Pickers';
import { ErrorMessage, ProgressBar } from '../components/ui';
import { useAction, useAsync, useInterval } from '../hooks';
import { useI18n, type Lang } from '../i18n';
import type { TeacherRunEstimate, TeacherRunObject } from '../../../src/data/teacher/server-runs';

const TEXT = {
  en: {
    title: 'Data workshop',
    file: 'File',
    user: 'User template',
    assistant: 'Assistant template',
    system: 'System message',
    labelMap: 'Label map',
    validation: 'Validation share',
    check: 'Check',
    prepare: 'Prepare without the flagged rows',
    dropInvalid: 'drop invalid rows',
    dedupe: 'drop near duplicates',
    errors: 'errors',
    warnings: 'warnings',
    dropped: 'dropped',
    line: 'line',
    field: 'field',
    code: 'code',
    message: 'message',
    prepared: 'Stored {train} ({n} examples){val}.',
    teacher: 'Teacher run',
    kind: 'Kind',
    label: 'label a column',
    synthesize: 'synthesize examples',
    endpoint: 'Teacher endpoint (OpenAI-compatible base URL)',
    model: 'Teacher model',
    column: 'Text column',
    labels: 'Labels (comma-separated)',
    seeds: 'Seed examples (chat JSONL)',
    task: 'Task',
    count: 'Examples to keep',
    estimate: 'Estimate',
    start: 'Start',
    plan: '{requests} requests, ~{prompt} prompt tokens, ≤ {completion} completion tokens',
    runs: 'Runs',
    cancel: 'Cancel',
    resume: 'Resume',
    download: 'Download',
    kept: 'kept {w}, rejected {r}',
  },
  zh: {
    title: '数据工坊',
    file: '文件',
    user: '用户模板',
    assistant: '助手模板',
    system: '系统消息',
    labelMap: '标签映射',
    validation: '验证集比例',
    check: '检查',
    prepare: '去除问题行后生成数据',
    dropInvalid: '去除无效行',
    dedupe: '去除近似重复',
    errors: '错误',
    warnings: '警告',
    dropped: '已去除',
    line: '行',
    field: '字段',
    code: '代码',
    message: '说明',
    prepared: '已保存 {train}（{n} 条样本）{val}。',
    teacher: '教师模型任务',
    kind: '类型',
    label: '标注一列',
    synthesize: '生成样本',
    endpoint: '教师模型地址（OpenAI 兼容）',
    model: '教师模型',
    column: '文本列',
    labels: '标签（逗号分隔）',
    seeds: '种子样本（对话 JSONL）',
    task: '任务描述',
    count: '生成数量',
    estimate: '估算',
    start: '开始',
    plan: '{requests} 个请求，约 {prompt} 个提示 token，最多 {completion} 个生成 token',
    runs: '运行记录',
    cancel: '取消',
    resume: '续跑',
    download: '下载',
    kept: '保留 {w}，剔除 {r}',
  },
} satisfies Record<Lang, Record<string, string>>;
type Key = keyof (typeof TEXT)['en'];

function useText() {
  const { lang } = useI18n();
  return (key: Key, vars: Record<string, string | number> = {}) => TEXT[lang][key].replace(/\{(\w+)\}/g, (m, k: string) => (k in vars ? String(vars[k]) : m));
}

const DUPLICATE_CODES = ['exact_duplicate', 'conflicting_duplicate', 'near_duplicate', 'validation_leak'];
const list = (s: string) => s.split(/[,，]/u).map((x) => x.trim()).filter(Boolean);

function IssueTable({ issues, testId }: { issues: DataIssue[]; testId: string }) {
  const tr = useText();
  if (issues.length === 0) return null;
  return (
    <table className="small" data-testid={testId}>
      <thead>
        <tr>
          <th>{tr('line')}</th>
          <th>{tr('field')}</th>
          <th>{tr('code')}</th>
          <th>{tr('message')}</th>
        </tr>
      </thead>
      <tbody>
        {issues.slice(0, 200).map((i, n) => (
          <tr key={n} className={i.severity === 'error' ? 'error' : ''}>
            <td className="mono">
              {i.file}:{i.line ?? '—'}
            </td>
            <td className="mono">{i.field ?? ''}</td>
            <td className="mono">{i.code}</td>
            <td>{i.message}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

/** A check (validate: nothing stored) or a prepare (files stored, dropped rows listed). */
type Outcome = { kind: 'check'; value: ValidateResponse } | { kind: 'prepare'; value: PrepareResponse };

function Report({ outcome }: { outcome: Outcome }) {
  const tr = useText();
  const report = outcome.value.report;
  const all = [...report.errors, ...report.warnings];
  const skipped = outcome.kind === 'prepare' ? outcome.value.skipped : [];
  const result = outcome.kind === 'prepare' ? outcome.value : null;
  const counts = DUPLICATE_CODES.map((c) => [c, all.filter((i) => i.code === c).length + skipped.filter((i) => i.code === c).length] as const);
  return (
    <div data-testid="data-report">
      <p>
        {report.errors.length} {tr('errors')} · {report.warnings.length} {tr('warnings')} · {skipped.length} {tr('dropped')} ·{' '}
        {counts.map(([c, n]) => `${c} ${n}`).join(' · ')}
      </p>
      {result?.training_file && (
        <p className="small" data-testid="data-prepared">
          {tr('prepared', {
            train: result.training_file.filename,
            n: result.examples,
            val: result.validation_file ? ` + ${result.validation_file.filename}` : '',
          })}
        </p>
      )}
      <IssueTable issues={all} testId="data-issues" />
      <IssueTable issues={skipped} testId="data-dropped" />
    </div>
  );
}

async function download(run: TeacherRunObject): Promise<void> {
  const res = await send(`/v1/weitiao/teacher-runs/${run.id}/content`, { timeoutMs: 600_000 });
  const url = URL.createObjectURL(await res.blob());
  const a = document.createElement('a');
  a.href = url;
  a.download = `${run.kind}-${run.id}.jsonl`;
  a.click();
  URL.revokeObjectURL(url);
}

function TeacherRuns({ files }: { files: FileObject[] }) {
  const tr = useText();
  const [kind, setKind] = useState<'label' | 'synthesize'>('label');
  const [baseUrl, setBaseUrl] = useState(`${window.location.origin}/v1`);
  const [model, setModel] = useState('');
  const [input, setInput] = useState('');
  const [column, setColumn] = useState('review');
  const [labels, setLabels] = useState('好评,差评');
  const [task, setTask] = useState('');
  const [n, setN] = useState(50);
  const [plan, setPlan] = useState<TeacherRunEstimate['estimate'] | null>(null);
  const runs = useAsync((signal) => api<List<TeacherRunObject>>('/v1/weitiao/teacher-runs', { signal, query: { limit: 10 } }), []);
  const live = runs.data?.data.some((r) => ['queued', 'running', 'cancelling'].includes(r.status)) ?? false;
  useInterval(() => runs.reload(), 1000, live);

  const body = () => {
    const teacher = { base_url: baseUrl, model };
    return kind === 'label' ? { kind, teacher, input, column, labels: list(labels) } : { kind, teacher, seeds: input, task, n };
  };
  const estimate = useAction(async () => setPlan((await api<TeacherRunEstimate>('/v1/weitiao/teacher-runs/estimate', { json: body() })).estimate));
  const start = useAction(async () => {
    await api('/v1/weitiao/teacher-runs', { json: body() });
    runs.reload();
  });
  const act = useAction(async (id: string, what: 'cancel' | 'resume') => {
    await api(`/v1/weitiao/teacher-runs/${id}/${what}`, { method: 'POST' });
    runs.reload();
  });
  const get = useAction(download);

  return (
    <section data-testid="teacher-runs">
      <h2>{tr('teacher')}</h2>
      <div className="form-grid">
        <label>
          {tr('kind')}
          <select value={kind} onChange={(e) => (setKind(e.target.value as typeof kind), setPlan(null))}>
            <option value="label">{tr('label')}</option>
            <option value="synthesize">{tr('synthesize')}</option>
          </select>
        </label>
        <label>
          {tr('endpoint')}
          <input value={baseUrl} onChange={(e) => setBaseUrl(e.target.value)} />
        </label>
        <label>
          {tr('model')}
          <input value={model} onChange={(e) => setModel(e.target.value)} />
        </label>
        <label>
          {kind === 'label' ? tr('file') : tr('seeds')}
          <FileSelect name="teacher-input" items={files} value={input} onChange={setInput} none="—" />
        </label>
        {kind === 'label' ? (
          <>
            <label>
              {tr('column')}
              <input value={column} onChange={(e) => setColumn(e.target.value)} />
            </label>
            <label>
              {tr('labels')}
              <input value={labels} onChange={(e) => setLabels(e.target.value)} />
            </label>
          </>
        ) : (
          <>
            <label>
              {tr('task')}
              <input value={task} onChange={(e) => setTask(e.target.value)} />
            </label>
            <label>
              {tr('count')}
              <input type="number" min={1} value={n} onChange={(e) => setN(Number(e.target.value))} />
            </label>
          </>
        )}
      </div>
      <div className="actions">
        <button type="button" disabled={!model || !input || estimate.running} onClick={() => void estimate.run()}>
          {tr('estimate')}
        </button>
        <button type="button" disabled={!plan || start.running} onClick={() => void start.run()} data-testid="teacher-start">
          {tr('start')}
        </button>
        {plan && (
          <span className="small" data-testid="teacher-estimate">
            {tr('plan', { requests: plan.requests, prompt: plan.prompt_tokens_estimated, completion: plan.completion_tokens_max })}
          </span>
        )}
      </div>
      <ErrorMessage message={estimate.error ?? start.error ?? act.error ?? get.error ?? runs.error} />
      <h3>{tr('runs')}</h3>
      {(runs.data?.data ?? []).map((r) => (
        <div key={r.id} className="small" data-testid="teacher-run">
          <span className="mono">{r.id}</span> · {r.kind} · {r.status}{' '}
          {r.progress && (
            <>
              <ProgressBar value={r.progress.total ? r.progress.done / r.progress.total : null} /> {tr('kept', { w: r.progress.written, r: r.progress.rejected })}
            </>
          )}
          {r.status === 'running' && (
            <button type="button" onClick={() => void act.run(r.id, 'cancel')}>
              {tr('cancel')}
            </button>
          )}
          {(r.status === 'cancelled' || r.status === 'failed') && (
            <button type="button" onClick={() => void act.run(r.id, 'resume')}>
              {tr('resume')}
            </button>
          )}
          {r.progress && r.progress.written > 0 && (
            <a href="#" onClick={(ev) => (ev.preventDefault(), void get.run(r))}>
              {' '}
              {tr('download')}
            </a>
          )}
          {r.error && <div className="error">{r.error.message}</div>}
        </div>
      ))}
    </section>
  );
}

export function DataWorkshop({ fileId }: { fileId?: string }) {
  const tr = useText();
  const files = useAsync((signal) => api<List<FileObject>>('/v1/files', { signal, query: { limit: 100 } }), []);
  const [file, setFile] = useState(fileId ?? '');
  const [user, setUser] = useState('{review}');
  const [assistant, setAssistant] = useState('{label}');
  const [system, setSystem] = useState('');
  const [labelMap, setLabelMap] = useState('');
  const [validation, setValidation] = useState(0.2);
  const [skip, setSkip] = useState(true);
  const [dedupe, setDedupe] = useState(true);
  const [result, setResult] = useState<Outcome | null>(null);
  const chosen = files.data?.data.find((f) => f.id === file);
  const isChat = chosen ? /\.jsonl$/i.test(chosen.filename) && user === '' : false;

  const source = () => ({
    file_id: file,
    ...(isChat ? {} : { mapping: { user, assistant, ...(system ? { system } : {}) } }),
    ...(labelMap ? { label_map: labelMap } : {}),
  });
  // Check stores nothing (the validate route); prepare stores the files without the rows it drops.
  const check = useAction(async () =>
    setResult({ kind: 'check', value: await api<ValidateResponse>('/v1/weitiao/datasets/validate', { json: source(), timeoutMs: 600_000 }) }),
  );
  const prepare = useAction(async () => {
    const json = { ...source(), validation, on_invalid: skip ? 'skip' : 'error', dedupe };
    setResult({ kind: 'prepare', value: await api<PrepareResponse>('/v1/weitiao/datasets/prepare', { json, timeoutMs: 600_000 }) });
    files.reload();
  });

  return (
    <div data-testid="data-workshop">
      <h1>{tr('title')}</h1>
      <section>
        <div className="form-grid">
          <label>
            {tr('file')}
            <FileSelect name="data-file" items={files.data?.data ?? []} value={file} onChange={setFile} none="—" />
          </label>
          <label>
            {tr('user')}
            <input value={user} onChange={(e) => setUser(e.target.value)} />
          </label>
          <label>
            {tr('assistant')}
            <input value={assistant} onChange={(e) => setAssistant(e.target.value)} />
          </label>
          <label>
            {tr('system')}
            <input value={system} onChange={(e) => setSystem(e.target.value)} />
          </label>
          <label>
            {tr('labelMap')}
            <input value={labelMap} placeholder="1=好评,0=差评" onChange={(e) => setLabelMap(e.target.value)} />
          </label>
          <label>
            {tr('validation')}
            <input type="number" min={0} max={0.9} step={0.05} value={validation} onChange={(e) => setValidation(Number(e.target.value))} />
          </label>
        </div>
        <div className="actions">
          <label>
            <input type="checkbox" checked={skip} onChange={(e) => setSkip(e.target.checked)} /> {tr('dropInvalid')}
          </label>
          <label>
            <input type="checkbox" checked={dedupe} onChange={(e) => setDedupe(e.target.checked)} /> {tr('dedupe')}
          </label>
          <button type="button" disabled={!file || check.running} onClick={() => void check.run()} data-testid="data-check">
            {tr('check')}
          </button>
          <button type="button" disabled={!file || prepare.running} onClick={() => void prepare.run()} data-testid="data-prepare">
            {tr('prepare')}
          </button>
        </div>
        <ErrorMessage message={check.error ?? prepare.error ?? files.error} />
        {result && <Report outcome={result} />}
      </section>
      <TeacherRuns files={files.data?.data ?? []} />
    </div>
  );
}
