/**
 * The shell: sign-in gate, navigation, language switch, and the page for the current route.
 */
import { useEffect, useState } from 'react';
import { api, clearKey, getKey, onUnauthorized, type MeObject } from './api';
import { useI18n, type MessageKey } from './i18n';
import { href, useRoute } from './router';
import { Datasets } from './pages/Datasets';
import { DataWorkshop } from './pages/DataWorkshop';
import { Evaluation } from './pages/Evaluation';
import { JobDetail } from './pages/JobDetail';
import { Jobs } from './pages/Jobs';
import { Models } from './pages/Models';
import { NewJob } from './pages/NewJob';
import { Playground } from './pages/Playground';
import { SignIn } from './pages/SignIn';
import { StoredReport } from './components/StoredReport';

const NAV: { route: string; label: MessageKey }[] = [
  { route: 'datasets', label: 'nav.datasets' },
  { route: 'data', label: 'nav.data' },
  { route: 'new', label: 'nav.new' },
  { route: 'jobs', label: 'nav.jobs' },
  { route: 'models', label: 'nav.models' },
  { route: 'playground', label: 'nav.playground' },
  { route: 'evaluation', label: 'nav.evaluation' },
];

export function App() {
  const { t, lang, setLang } = useI18n();
  const route = useRoute();
  const [signedIn, setSignedIn] = useState(() => getKey() !== '');
  const [expired, setExpired] = useState(false);
  const [me, setMe] = useState<MeObject | null>(null);

  useEffect(
    () =>
      onUnauthorized(() => {
        clearKey();
        setExpired(true);
        setSignedIn(false);
      }),
    [],
  );

  useEffect(() => {
    document.title = t('app.title');
  }, [t]);

  // The key's project and role, shown in the header: everything the console lists belongs to that project.
  useEffect(() => {
    if (!signedIn) {
      setMe(null);
      return;
    }
    api<MeObject>('/v1/weitiao/me')
      .then(setMe)
      .catch(() => setMe(null));
  }, [signedIn]);

  const langButton = (
    <button type="button" className="lang" onClick={() => setLang(lang === 'zh' ? 'en' : 'zh')} data-testid="lang-switch">
      {t('lang.switch')}
    </button>
  );

  if (!signedIn) {
    return (
      <SignIn
        expired={expired}
        langButton={langButton}
        onSignedIn={() => {
          setExpired(false);
          setSignedIn(true);
        }}
      />
    );
  }

  const [section = 'datasets', ...rest] = route;
  let page;
  switch (section) {
    case 'datasets':
      page = <Datasets fileId={rest[0]} />;
      break;
    case 'data':
      page = <DataWorkshop fileId={rest[0]} />;
      break;
    case 'new':
      page = <NewJob trainingFile={rest[0]} validationFile={rest[1]} />;
      break;
    case 'jobs':
      page = rest[0] ? <JobDetail id={rest[0]} /> : <Jobs />;
      break;
    case 'models':
      page = <Models />;
      break;
    case 'playground':
      page = <Playground model={rest[0]} compare={rest[1]} />;
      break;
    case 'evaluation':
      page = <Evaluation model={rest[0]} fileId={rest[1]} compare={rest[2]} />;
      break;
    case 'report':
      page = <StoredReport id={rest[0]} />;
      break;
    default:
      page = <p>{t('common.notFound')}</p>;
  }

  return (
    <div className="shell">
      <header className="top">
        <a className="brand" href={href('datasets')}>
          微调 <span>weitiao</span>
        </a>
        <nav aria-label="main">
          {NAV.map((n) => (
            <a key={n.route} href={href(n.route)} className={section === n.route ? 'active' : ''} data-nav={n.route}>
              {t(n.label)}
            </a>
          ))}
        </nav>
        <div className="top-actions">
          {me && (
            <span className="project" data-testid="project" title={me.key ? `${me.key.name} (${me.key.prefix}…)` : undefined}>
              {t('nav.project')}: {me.project} · {t(`role.${me.role}`)}
            </span>
          )}
          {langButton}
          <button
            type="button"
            className="link"
            onClick={() => {
              clearKey();
              setSignedIn(false);
            }}
          >
            {t('nav.signOut')}
          </button>
        </div>
      </header>
      <main>{page}</main>
    </div>
  );
}
