/**
 * Datasets: upload a file, map a table's columns to chat turns with a live preview and a label map,
 * see the validation report and stats, then split and save train/validation files.
 */
import { useEffect, useRef, useState } from 'react';
import {
  api,
  type ChatMessage,
  type DatasetStats,
  type DataIssue,
  type FileObject,
  type List,
  type PrepareResponse,
  type PreviewResponse,
  type Model,
  type ValidateResponse,
  type ValidationReport,
} from '../api';
import { Distribution, Histogram } from '../components/BarChart';
import { DataTable } from '../components/DataTable';
import { AsyncView, ErrorMessage, Loading, formatBytes, formatNumber, formatTime } from '../components/ui';
import { useAction, useAsync } from '../hooks';
import { useI18n } from '../i18n';
import { href, navigate } from '../router';
import { isFineTuned } from './Models';

const UPLOAD_TIMEOUT_MS = 10 * 60_000;
const PREVIEW_DEBOUNCE_MS = 350;

export function Datasets({ fileId }: { fileId?: string }) {
  const { t } = useI18n();
  const files = useAsync((signal) => api<List<FileObject>>('/v1/files', { signal, query: { limit: 100 } }), []);
  const upload = useAction(async (file: File) => {
    const form = new FormData();
    form.set('purpose', 'fine-tune');
    form.set('file', file, file.name);
    const created = await api<FileObject>('/v1/files', { form, timeoutMs: UPLOAD_TIMEOUT_MS });
    files.reload();
    navigate('datasets', created.id);
  });

  return (
    <div className="page">
      <h1>{t('datasets.title')}</h1>
      <section className="card">
        <h2>{t('datasets.upload')}</h2>
        <p className="muted small">{t('datasets.uploadHelp')}</p>
        <label className="file-input">
          <input
            type="file"
            accept=".csv,.tsv,.jsonl,.json,.txt"
            data-testid="upload-input"
            disabled={upload.running}
            onChange={(e) => {
              const f = e.target.files?.[0];
              if (f) void upload.run(f);
              e.target.value = '';
            }}
          />
          <span className="button">{t('datasets.choose')}</span>
        </label>
        {upload.running && <Loading label={t('datasets.uploading')} />}
        <ErrorMessage message={upload.error} />
      </section>

      {fileId && <DatasetEditor key={fileId} fileId={fileId} onSaved={files.reload} />}

      <section className="card">
        <h2>{t('datasets.files')}</h2>
        <AsyncView state={files}>
          {(list) => (
            <DataTable
              items={list.data}
              empty={t('datasets.noFiles')}
              testId="file-list"
              columns={[{ label: t('common.file') }, { label: t('datasets.purpose'), className: 'hide-phone' }, { label: t('datasets.bytes') }, { label: t('common.created') }]}
              row={(f) => (
                <tr key={f.id} className={f.id === fileId ? 'selected' : ''}>
                  <td>
                    <a href={href('datasets', f.id)}>{f.filename}</a>
                    <div className="muted small mono">{f.id}</div>
                  </td>
                  <td className="hide-phone">{f.purpose}</td>
                  <td>{formatBytes(f.bytes)}</td>
                  <td>{formatTime(f.created_at)}</td>
                </tr>
              )}
            />
          )}
        </AsyncView>
      </section>
    </div>
  );
}

interface Mapping {
  system: string;
  user: string;
  assistant: string;
  labelMap: string;
}

/** The request fields for a mapping; the label map goes as text (`1=好评,0=差评`), parsed by the server's one rule. */
function mappingBody(m: Mapping, isTable: boolean) {
  if (!isTable) return {};
  const labelMap = m.labelMap
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter(Boolean)
    .join(',');
  return {
    mapping: { ...(m.system.trim() ? { system: m.system } : {}), user: m.user, assistant: m.assistant },
    ...(labelMap ? { label_map: labelMap } : {}),
  };
}

function DatasetEditor({ fileId, onSaved }: { fileId: string; onSaved: () => void }) {
  const { t } = useI18n();
  const [mapping, setMapping] = useState<Mapping | null>(null);
  const [preview, setPreview] = useState<PreviewResponse>();
  const [previewError, setPreviewError] = useState<string>();
  const [previewLoading, setPreviewLoading] = useState(true);
  const [validationShare, setValidationShare] = useState('0.2');
  const [seed, setSeed] = useState('100');
  const [checked, setChecked] = useState<{ report: ValidationReport; stats: DatasetStats | null }>();
  const [model, setModel] = useState<string>();
  const models = useAsync((signal) => api<List<Model>>('/v1/models', { signal }), []);
  // Count tokens with the first base model's tokenizer unless the user picks another (or none).
  useEffect(() => {
    if (model === undefined && models.data) setModel(models.data.data.find((m) => !isFineTuned(m))?.id ?? '');
  }, [models.data, model]);
  const [saved, setSaved] = useState<PrepareResponse>();
  const [focusLine, setFocusLine] = useState<number | null>(null);
  const first = useRef(true);

  const isTable = preview ? preview.format !== 'chat' : true;

  // The live preview: the first call detects the format and suggests a mapping; later calls follow edits.
  useEffect(() => {
    const controller = new AbortController();
    const delay = first.current ? 0 : PREVIEW_DEBOUNCE_MS;
    first.current = false;
    setPreviewLoading(true);
    const timer = setTimeout(() => {
      const body = { file_id: fileId, limit: 5, ...(mapping ? mappingBody(mapping, isTable) : {}) };
      api<PreviewResponse>('/v1/weitiao/datasets/preview', { json: body, signal: controller.signal })
        .then((p) => {
          setPreview(p);
          setPreviewError(undefined);
          if (!mapping && p.suggested_mapping) {
            setMapping({
              system: p.suggested_mapping.system ?? '',
              user: p.suggested_mapping.user,
              assistant: p.suggested_mapping.assistant,
              labelMap: '',
            });
          }
        })
        .catch((err: unknown) => {
          if (!controller.signal.aborted) setPreviewError(err instanceof Error ? err.message : String(err));
        })
        .finally(() => !controller.signal.aborted && setPreviewLoading(false));
    }, delay);
    setChecked(undefined);
    setSaved(undefined);
    return () => {
      clearTimeout(timer);
      controller.abort();
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [fileId, mapping]);

  const validate = useAction(async () => {
    const body = { file_id: fileId, ...(model ? { model } : {}), ...(mapping ? mappingBody(mapping, isTable) : {}) };
    const res = await api<ValidateResponse>('/v1/weitiao/datasets/validate', {
      json: body,
      timeoutMs: 5 * 60_000,
    });
    setFocusLine(null);
    setChecked(res);
  });

  const save = useAction(async () => {
    const share = Number(validationShare);
    const body = {
      file_id: fileId,
      ...(model ? { model } : {}),
      ...(mapping ? mappingBody(mapping, isTable) : {}),
      validation: Number.isFinite(share) ? share : 0.2,
      seed: Number.isInteger(Number(seed)) ? Number(seed) : 100,
    };
    const res = await api<PrepareResponse>('/v1/weitiao/datasets/prepare', { json: body, timeoutMs: 5 * 60_000 });
    setSaved(res);
    setFocusLine(null);
    setChecked({ report: res.report, stats: res.stats });
    if (res.written) onSaved();
  });

  const update = (patch: Partial<Mapping>) => setMapping((m) => ({ system: '', user: '', assistant: '', labelMap: '', ...m, ...patch }));

  if (!preview && previewLoading) return <section className="card"><Loading /></section>;
  if (!preview) return <section className="card"><ErrorMessage message={previewError} /></section>;

  return (
    <>
      <section className="card" data-testid="dataset-editor">
        <h2>
          {preview.filename ?? fileId} <span className="muted small">({preview.format}{preview.encoding ? `, ${preview.encoding}` : ''})</span>
        </h2>
        {isTable ? (
          <div className="mapping">
            <h3>{t('datasets.mapping')}</h3>
            <p className="muted small">
              {t('datasets.columns', { columns: preview.columns.join(', ') })} · {t('datasets.mappingHelp')}
            </p>
            <div className="grid-2">
              <label>
                {t('datasets.system')} <span className="muted">{t('common.optional')}</span>
                <textarea name="system" rows={2} value={mapping?.system ?? ''} onChange={(e) => update({ system: e.target.value })} />
              </label>
              <label>
                {t('datasets.labelMap')}
                <textarea
                  name="label-map"
                  rows={2}
                  placeholder="1=好评&#10;0=差评"
                  value={mapping?.labelMap ?? ''}
                  onChange={(e) => update({ labelMap: e.target.value })}
                />
                <span className="muted small">
                  {t('datasets.labelMapHelp')}
                  {preview.answers?.length ? ` · ${preview.answers.slice(0, 8).join(', ')}` : ''}
                </span>
              </label>
              <label>
                {t('datasets.user')}
                <textarea name="user" rows={2} value={mapping?.user ?? ''} onChange={(e) => update({ user: e.target.value })} />
              </label>
              <label>
                {t('datasets.assistant')}
                <textarea name="assistant" rows={2} value={mapping?.assistant ?? ''} onChange={(e) => update({ assistant: e.target.value })} />
              </label>
            </div>
          </div>
        ) : (
          <p className="muted">{t('datasets.chatFile')}</p>
        )}

        <h3>
          {t('datasets.preview')}{' '}
          <span className="muted small">{t('datasets.previewOf', { n: preview.examples.length, total: preview.total_rows })}</span>
          {previewLoading && <span className="muted small"> · {t('datasets.updating')}</span>}
        </h3>
        <ErrorMessage message={previewError} />
        <div className="examples" data-testid="preview">
          {preview.examples.map((ex, i) => (
            <ChatExampleView key={i} line={ex.line} messages={ex.messages} />
          ))}
          {preview.issues.map((issue, i) => (
            <IssueRow key={`i${i}`} issue={issue} />
          ))}
        </div>
      </section>

      <section className="card">
        <h2>{t('datasets.validation')}</h2>
        <div className="row">
          <label>
            {t('datasets.model')}
            <select name="tokenizer-model" value={model ?? ''} onChange={(e) => setModel(e.target.value)}>
              <option value="">{t('datasets.noModel')}</option>
              {models.data?.data
                .filter((m) => !isFineTuned(m))
                .map((m) => (
                  <option key={m.id} value={m.id}>
                    {m.id}
                  </option>
                ))}
            </select>
            <span className="muted small">{t('datasets.modelHelp')}</span>
          </label>
          <button type="button" onClick={() => void validate.run()} disabled={validate.running} data-testid="validate">
            {validate.running ? t('common.working') : t('datasets.validate')}
          </button>
        </div>
        {validate.running && <Loading />}
        <ErrorMessage message={validate.error} />
        {checked && <Report report={checked.report} onFocus={setFocusLine} focusLine={focusLine} fileId={fileId} mapping={mapping} isTable={isTable} />}
        {checked?.stats && <Stats stats={checked.stats} />}
      </section>

      <section className="card">
        <h2>{t('datasets.split')}</h2>
        <div className="row">
          <label>
            {t('datasets.validationShare')}
            <input name="validation-share" type="number" min={0} max={0.9} step={0.05} value={validationShare} onChange={(e) => setValidationShare(e.target.value)} />
          </label>
          <label>
            {t('datasets.seed')}
            <input name="seed" type="number" value={seed} onChange={(e) => setSeed(e.target.value)} />
          </label>
          <button type="button" className="primary" onClick={() => void save.run()} disabled={save.running} data-testid="save-dataset">
            {save.running ? t('datasets.saving') : t('datasets.save')}
          </button>
        </div>
        {save.running && <Loading label={t('datasets.saving')} />}
        <ErrorMessage message={save.error} />
        {saved && !saved.written && <ErrorMessage message={t('datasets.notSaved', { n: saved.report.errors.length })} />}
        {saved?.training_file && (
          <div className="success" data-testid="saved">
            <p>
              {t('datasets.saved', {
                train: `${saved.training_file.filename} (${saved.training_file.id})`,
                valid: saved.validation_file ? `${saved.validation_file.filename} (${saved.validation_file.id})` : '—',
              })}
            </p>
            <a
              className="button primary"
              href={href('new', saved.training_file.id, ...(saved.validation_file ? [saved.validation_file.id] : []))}
              data-testid="fine-tune-this"
            >
              {t('datasets.fineTuneThis')}
            </a>
          </div>
        )}
      </section>
    </>
  );
}

export function ChatExampleView({ messages, line }: { messages: ChatMessage[]; line?: number | null }) {
  const { t } = useI18n();
  return (
    <div className="example">
      {line ? <div className="muted small">{t('common.line', { line })}</div> : null}
      {messages.map((m, i) => (
        <div key={i} className={`msg msg-${m.role}`}>
          <span className="role">{m.role}</span>
          <span className="content">{m.content}</span>
        </div>
      ))}
    </div>
  );
}

function IssueRow({ issue, onClick, active }: { issue: DataIssue; onClick?: () => void; active?: boolean }) {
  const { t } = useI18n();
  const where = [issue.line ? t('common.line', { line: issue.line }) : null, issue.field ? `${t('datasets.field')} ${issue.field}` : null]
    .filter(Boolean)
    .join(' · ');
  const content = (
    <>
      <span className={`badge sev-${issue.severity}`}>{issue.severity}</span>
      {where && <span className="mono small">{where}</span>} <span className="muted small">{issue.code}</span>
      <div>{issue.message}</div>
    </>
  );
  return (
    <li className={`issue ${active ? 'active' : ''}`}>
      {onClick && issue.line ? (
        <button type="button" className="issue-link" onClick={onClick}>
          {content}
        </button>
      ) : (
        content
      )}
    </li>
  );
}

/** The report, each issue clickable to show the record at its line. */
function Report(props: {
  report: ValidationReport;
  focusLine: number | null;
  onFocus: (line: number | null) => void;
  fileId: string;
  mapping: Mapping | null;
  isTable: boolean;
}) {
  const { t } = useI18n();
  const { report, focusLine, onFocus } = props;
  const issues = [...report.errors, ...report.warnings];
  return (
    <div className="report" data-testid="validation-report">
      <p>
        <span className={`badge ${report.errors.length ? 'sev-error' : 'ok'}`}>{t('datasets.errors', { n: report.errors.length })}</span>{' '}
        <span className={`badge ${report.warnings.length ? 'sev-warning' : 'ok'}`}>{t('datasets.warnings', { n: report.warnings.length })}</span>
      </p>
      {issues.length === 0 ? (
        <p className="muted">{t('datasets.noIssues')}</p>
      ) : (
        <ul className="issues">
          {issues.slice(0, 200).map((issue, i) => (
            <IssueRow
              key={i}
              issue={issue}
              active={issue.line === focusLine}
              onClick={() => onFocus(issue.line === focusLine ? null : issue.line)}
            />
          ))}
        </ul>
      )}
      {focusLine !== null && <RecordAtLine line={focusLine} {...props} />}
    </div>
  );
}

/** The record at a reported line, as the mapping turns it into a chat example. */
function RecordAtLine({ line, fileId, mapping, isTable }: { line: number; fileId: string; mapping: Mapping | null; isTable: boolean }) {
  const state = useAsync(
    (signal) =>
      api<PreviewResponse>('/v1/weitiao/datasets/preview', {
        signal,
        json: { file_id: fileId, from_line: line, limit: 1, ...(mapping ? mappingBody(mapping, isTable) : {}) },
      }),
    [line, fileId],
  );
  return (
    <div className="record-at-line" data-testid="record-at-line">
      <AsyncView state={state}>
        {(p) => (
          <>
            {p.rows[0] && (
              <pre className="raw">{Object.entries(p.rows[0]).map(([k, v]) => `${k}: ${v}`).join('\n')}</pre>
            )}
            {p.examples[0] && <ChatExampleView messages={p.examples[0].messages} line={p.examples[0].line} />}
            {p.issues.map((issue, i) => (
              <IssueRow key={i} issue={issue} />
            ))}
          </>
        )}
      </AsyncView>
    </div>
  );
}

function Stats({ stats }: { stats: DatasetStats }) {
  const { t } = useI18n();
  const unit = stats.token_unit === 'tokens' ? t('datasets.unitTokens') : t('datasets.unitChars');
  const s = stats.tokens_per_example;
  return (
    <div className="stats" data-testid="stats">
      <h3>{t('datasets.stats')}</h3>
      <dl className="kv">
        <dt>{t('datasets.examples')}</dt>
        <dd>
          {formatNumber(stats.examples, 12)}
          {stats.invalid_examples ? ` (+${stats.invalid_examples} ${t('datasets.invalid')})` : ''}
        </dd>
        {s && (
          <>
            <dt>{t('datasets.perExample', { unit })}</dt>
            <dd>
              min {s.min} · mean {formatNumber(s.mean, 4)} · p95 {s.p95} · max {s.max}
            </dd>
          </>
        )}
        <dt>{t('datasets.totalTokens', { unit })}</dt>
        <dd>{formatNumber(stats.total_tokens, 12)}</dd>
        {stats.over_max_length ? (
          <>
            <dt>{t('datasets.overMax', { max: stats.max_length ?? '' })}</dt>
            <dd className="sev-error">{stats.over_max_length}</dd>
          </>
        ) : null}
      </dl>
      <div className="grid-2">
        {stats.histogram.bins.length > 0 && <Histogram title={t('datasets.perExample', { unit })} bins={stats.histogram.bins} xLabel={unit} />}
        {stats.answer_distribution && stats.answer_distribution.length > 0 && (
          <Distribution title={t('datasets.answers')} items={stats.answer_distribution.map((a) => ({ label: a.answer, count: a.count }))} />
        )}
      </div>
    </div>
  );
}
