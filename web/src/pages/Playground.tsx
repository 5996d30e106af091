/**
 * Playground: streamed chat with any model, read from the SSE stream with fetch + ReadableStream. With a
 * second model chosen, the same prompt goes to both and the answers stream side by side.
 */
import { useEffect, useRef, useState, type FormEvent } from 'react';
import { api, messageOf, readSSE, send, type ChatMessage, type List, type Model } from '../api';
import { ModelSelect } from '../components/Pickers';
import { AsyncView, ErrorMessage } from '../components/ui';
import { useAsync } from '../hooks';
import { useI18n } from '../i18n';

/** Model loading can take a while on first use; after the first byte the stream has no time limit. */
const FIRST_TOKEN_TIMEOUT_MS = 5 * 60_000;

interface Column {
  model: string;
  messages: ChatMessage[];
  /** The answer being streamed, null when idle. */
  streaming: string | null;
  error?: string;
}

interface StreamChunk {
  choices?: { delta?: { content?: string | null }; finish_reason?: string | null }[];
  error?: { message?: string };
}

/** Streams one chat completion, calling `onText` with each piece; resolves when the stream ends. */
export async function streamChat(
  body: { model: string; messages: ChatMessage[]; temperature: number; max_tokens: number },
  onText: (text: string) => void,
  signal: AbortSignal,
): Promise<void> {
  const res = await send('/v1/chat/completions', { json: { ...body, stream: true }, signal, timeoutMs: FIRST_TOKEN_TIMEOUT_MS });
  await readSSE(res, (data) => {
    const chunk = JSON.parse(data) as StreamChunk;
    if (chunk.error) throw new Error(chunk.error.message ?? 'stream error');
    const text = chunk.choices?.[0]?.delta?.content;
    if (text) onText(text);
  });
}

export function Playground({ model: initialModel, compare: initialCompare }: { model?: string; compare?: string }) {
  const { t } = useI18n();
  const models = useAsync((signal) => api<List<Model>>('/v1/models', { signal }), []);
  const [model, setModel] = useState(initialModel ?? '');
  const [compare, setCompare] = useState(initialCompare ?? '');
  const [system, setSystem] = useState('');
  const [prompt, setPrompt] = useState('');
  const [temperature, setTemperature] = useState('0');
  const [maxTokens, setMaxTokens] = useState('64');
  const [columns, setColumns] = useState<Column[]>([]);
  const controller = useRef<AbortController | null>(null);

  useEffect(() => {
    if (!model && models.data?.data[0]) setModel(models.data.data[0].id);
  }, [models.data, model]);

  // Changing the models starts a new conversation.
  useEffect(() => {
    controller.current?.abort();
    setColumns([model, compare].filter(Boolean).map((m) => ({ model: m, messages: [], streaming: null })));
  }, [model, compare]);

  const busy = columns.some((c) => c.streaming !== null);

  const submit = (e: FormEvent) => {
    e.preventDefault();
    const text = prompt.trim();
    if (!text || busy || columns.length === 0) return;
    setPrompt('');
    const ac = new AbortController();
    controller.current = ac;
    const userMsg: ChatMessage = { role: 'user', content: text };
    const start = columns.map((c) => ({ ...c, messages: [...c.messages, userMsg], streaming: '', error: undefined }));
    setColumns(start);
    const update = (i: number, fn: (c: Column) => Column) => setColumns((cols) => cols.map((c, j) => (j === i ? fn(c) : c)));

    start.forEach((col, i) => {
      const history = [...(system.trim() ? [{ role: 'system' as const, content: system.trim() }] : []), ...col.messages];
      let answer = '';
      streamChat(
        { model: col.model, messages: history, temperature: Number(temperature) || 0, max_tokens: Number(maxTokens) || 64 },
        (piece) => {
          answer += piece;
          update(i, (c) => ({ ...c, streaming: answer }));
        },
        ac.signal,
      )
        .then(() => update(i, (c) => ({ ...c, streaming: null, messages: [...c.messages, { role: 'assistant', content: answer }] })))
        .catch((err) => {
          const message = messageOf(err);
          update(i, (c) => ({
            ...c,
            streaming: null,
            error: message,
            messages: answer ? [...c.messages, { role: 'assistant', content: answer }] : c.messages,
          }));
        });
    });
  };

  return (
    <div className="page">
      <h1>{t('play.title')}</h1>
      <section className="card">
        <AsyncView state={models}>
          {(list) => (
            <div className="grid-4">
              <label>
                {t('play.model')}
                <ModelSelect name="model" items={list.data} value={model} onChange={setModel} />
              </label>
              <label>
                {t('play.compare')}
                <ModelSelect name="compare" items={list.data} value={compare} onChange={setCompare} none={t('play.noCompare')} />
              </label>
              <label>
                {t('play.temperature')}
                <input name="temperature" type="number" min={0} max={2} step={0.1} value={temperature} onChange={(e) => setTemperature(e.target.value)} />
              </label>
              <label>
                {t('play.maxTokens')}
                <input name="max_tokens" type="number" min={1} max={4096} value={maxTokens} onChange={(e) => setMaxTokens(e.target.value)} />
              </label>
            </div>
          )}
        </AsyncView>
        <label>
          {t('play.system')}
          <input name="system" value={system} onChange={(e) => setSystem(e.target.value)} />
        </label>
      </section>

      <div className={`chat-columns n${columns.length}`}>
        {columns.map((c) => (
          <section key={c.model} className="card chat" data-testid="chat-column" data-model={c.model}>
            <h2 className="mono small">{c.model}</h2>
            {c.messages.length === 0 && c.streaming === null && <p className="muted">{t('play.empty')}</p>}
            {c.messages.map((m, i) => (
              <div key={i} className={`msg msg-${m.role}`} data-testid={m.role === 'assistant' ? 'answer' : undefined}>
                <span className="role">{m.role}</span>
                <span className="content">{m.content}</span>
              </div>
            ))}
            {c.streaming !== null && (
              <div className="msg msg-assistant streaming">
                <span className="role">assistant</span>
                <span className="content">{c.streaming || <span className="muted">{t('play.thinking')}</span>}</span>
              </div>
            )}
            <ErrorMessage message={c.error} />
          </section>
        ))}
      </div>

      <form className="card composer" onSubmit={submit}>
        <textarea
          name="prompt"
          rows={2}
          placeholder={t('play.prompt')}
          value={prompt}
          onChange={(e) => setPrompt(e.target.value)}
          onKeyDown={(e) => {
            // Enter sends; Shift+Enter is a new line; Enter that confirms an IME composition (拼音) is neither.
            if (e.key === 'Enter' && !e.shiftKey && !e.nativeEvent.isComposing) submit(e);
          }}
        />
        <div className="row">
          {busy ? (
            <button type="button" onClick={() => controller.current?.abort()}>
              {t('play.stop')}
            </button>
          ) : (
            <button type="submit" className="primary" disabled={!prompt.trim()} data-testid="send">
              {t('play.send')}
            </button>
          )}
          <button
            type="button"
            className="link"
            disabled={busy}
            onClick={() => setColumns((cols) => cols.map((c) => ({ ...c, messages: [], error: undefined })))}
          >
            {t('play.clear')}
          </button>
        </div>
      </form>
    </div>
  );
}
