/**
 * Hash routing (`#/jobs/ftjob-1`): the server only has to serve index.html at `/`, and a reload keeps the page.
 */
import { useEffect, useState } from 'react';

const current = (): string[] => window.location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);

/** The current route as path segments, e.g. `['jobs', 'ftjob-1']`; re-renders on change. */
export function useRoute(): string[] {
  const [route, setRoute] = useState(current);
  useEffect(() => {
    const onChange = () => setRoute(current());
    window.addEventListener('hashchange', onChange);
    return () => window.removeEventListener('hashchange', onChange);
  }, []);
  return route;
}

export const href = (...segments: string[]): string => '#/' + segments.map(encodeURIComponent).join('/');

export function navigate(...segments: string[]): void {
  window.location.hash = href(...segments).slice(1);
}
