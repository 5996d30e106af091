/**
 * HTTP hygiene for the API and the console:
 * - security headers on every answer: a Content-Security-Policy the built console (dist/web: one module
 *   script, one stylesheet, a data: icon, fetches to its own origin) runs under, no framing, no MIME
 *   sniffing, no referrer;
 * - request bodies only as JSON (`application/json`), or multipart/form-data on the upload route, so a
 *   cross-site HTML form (which can only send text/plain, urlencoded or multipart) cannot drive the API
 *   when auth is off; a browser's cross-site multipart post is refused by its `Sec-Fetch-Site`.
 */
import type { MiddlewareHandler } from 'hono';
import { WeitiaoError } from '../../errors.js';
import type { ApiEnv } from './auth.js';

export const CONTENT_SECURITY_POLICY = [
  "default-src 'self'",
  "script-src 'self'",
  // React sets style attributes from script (allowed); 'unsafe-inline' keeps any inline <style> a library adds working.
  "style-src 'self' 'unsafe-inline'",
  "img-src 'self' data: blob:",
  "font-src 'self' data:",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

export function securityHeaders(): MiddlewareHandler<ApiEnv> {
  return async (c, next) => {
    await next();
    const h = c.res.headers;
    h.set('Content-Security-Policy', CONTENT_SECURITY_POLICY);
    h.set('X-Content-Type-Options', 'nosniff');
    h.set('X-Frame-Options', 'DENY'); // frame-ancestors for browsers that predate it
    h.set('Referrer-Policy', 'no-referrer');
    h.set('Cross-Origin-Opener-Policy', 'same-origin');
  };
}

export interface ContentTypeOptions {
  /** Routes that take multipart/form-data instead of JSON (the upload). */
  multipart: (method: string, path: string) => boolean;
  /** Routes that take yet another media type, named (a remote worker's tar uploads: application/x-tar). */
  other?: (method: string, path: string) => string | undefined;
}

const UNSAFE = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

/** 415 for a body that is not the route's media type; a body-less request (e.g. a cancel) needs none. */
export function requireContentType(options: ContentTypeOptions): MiddlewareHandler<ApiEnv> {
  return async (c, next) => {
    const method = c.req.method;
    if (!UNSAFE.has(method)) return next();
    const type = (c.req.header('content-type') ?? '').split(';')[0].trim().toLowerCase();
    const hasBody = type !== '' || Number(c.req.header('content-length') ?? 0) > 0 || c.req.header('transfer-encoding') !== undefined;
    if (!hasBody) return next();
    const multipart = options.multipart(method, c.req.path);
    const expected = multipart ? 'multipart/form-data' : (options.other?.(method, c.req.path) ?? 'application/json');
    if (type !== expected) {
      throw unsupported(`${method} ${c.req.path} takes ${expected}, not ${type || 'a body without Content-Type'} / 请求体须为 ${expected}`);
    }
    if (multipart && c.req.header('sec-fetch-site') === 'cross-site') {
      throw new WeitiaoError('permission_denied', 'cross-site uploads are refused / 拒绝跨站上传', { param: 'file' });
    }
    return next();
  };
}

function unsupported(message: string): WeitiaoError {
  return new WeitiaoError('unsupported_media_type', message, { param: 'Content-Type' });
}
