/**
 * The console's language: the provider and `useI18n()`. The strings are in ./i18n/en.ts and ./i18n/zh.ts
 * (`zh` must have every key of `en`; the type checks it); `{name}` placeholders are filled by
 * `t(key, {name: value})`. The default language follows navigator.language; the choice is remembered in
 * localStorage.
 */
import { createContext, useCallback, useContext, useMemo, useState, type ReactNode } from 'react';
import { en, type MessageKey } from './i18n/en';
import { zh } from './i18n/zh';

export type { MessageKey };

export type Lang = 'en' | 'zh';
const DICTIONARIES: Record<Lang, Record<MessageKey, string>> = { en, zh };
const LANG_STORAGE = 'weitiao.lang';

export type Translate = (key: MessageKey, vars?: Record<string, string | number>) => string;

/** Fills `{name}` placeholders; unknown placeholders stay visible rather than vanish. */
export function translate(lang: Lang, key: MessageKey, vars?: Record<string, string | number>): string {
  const text = DICTIONARIES[lang][key] ?? en[key] ?? key;
  return vars ? text.replace(/\{(\w+)\}/g, (m, name: string) => (name in vars ? String(vars[name]) : m)) : text;
}

function initialLang(): Lang {
  const saved = localStorage.getItem(LANG_STORAGE);
  if (saved === 'en' || saved === 'zh') return saved;
  return navigator.language.toLowerCase().startsWith('zh') ? 'zh' : 'en';
}

interface I18n {
  lang: Lang;
  setLang: (lang: Lang) => void;
  t: Translate;
}

const I18nContext = createContext<I18n | null>(null);

export function I18nProvider({ children }: { children: ReactNode }) {
  const [lang, setLangState] = useState<Lang>(initialLang);
  const setLang = useCallback((l: Lang) => {
    localStorage.setItem(LANG_STORAGE, l);
    document.documentElement.lang = l === 'zh' ? 'zh-CN' : 'en';
    setLangState(l);
  }, []);
  const value = useMemo<I18n>(() => ({ lang, setLang, t: (key, vars) => translate(lang, key, vars) }), [lang, setLang]);
  return <I18nContext.Provider value={value}>{children}</I18nContext.Provider>;
}

export function useI18n(): I18n {
  const ctx = useContext(I18nContext);
  if (!ctx) throw new Error('useI18n outside I18nProvider');
  return ctx;
}
