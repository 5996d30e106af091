import { useState, type FormEvent, type ReactNode } from 'react';
import { api, clearKey, setKey, type List, type Model } from '../api';
import { ErrorMessage } from '../components/ui';
import { useAction } from '../hooks';
import { useI18n } from '../i18n';

/** Asks for an API key and checks it against the server before keeping it. */
export function SignIn({ expired, langButton, onSignedIn }: { expired: boolean; langButton: ReactNode; onSignedIn: () => void }) {
  const { t } = useI18n();
  const [key, setKeyInput] = useState('');
  const check = useAction(async (k: string) => {
    setKey(k);
    try {
      await api<List<Model>>('/v1/models', { timeoutMs: 15_000 });
    } catch (err) {
      clearKey();
      throw err;
    }
    onSignedIn();
  });

  const submit = (e: FormEvent) => {
    e.preventDefault();
    if (key.trim()) void check.run(key.trim());
  };

  return (
    <div className="signin">
      <form onSubmit={submit} className="card">
        <div className="signin-head">
          <h1>
            微调 <span>weitiao</span>
          </h1>
          {langButton}
        </div>
        <p className="muted">{t('app.tagline')}</p>
        <h2>{t('signin.title')}</h2>
        {expired && !check.error && <div className="notice">{t('signin.expired')}</div>}
        <label>
          {t('signin.key')}
          <input
            name="api-key"
            type="password"
            autoComplete="off"
            value={key}
            onChange={(e) => setKeyInput(e.target.value)}
            placeholder="wt-…"
          />
        </label>
        <p className="muted small">{t('signin.help')}</p>
        <ErrorMessage message={check.error} />
        <button type="submit" className="primary" disabled={check.running || !key.trim()}>
          {check.running ? t('signin.checking') : t('signin.submit')}
        </button>
      </form>
    </div>
  );
}
