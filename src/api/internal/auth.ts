/**
 * `Authorization: Bearer <key>` on every /v1 route. A middleware factory in Hono's manner: the key check
 * is injected, so tests and other shells can supply their own.
 */
import type { MiddlewareHandler } from 'hono';
import { WeitiaoError } from '../../errors.js';
import type { KeyRecord } from '../../keys/index.js';

export interface ApiKeyAuthOptions {
  /** The key's record, or null when unknown or revoked. */
  verify: (key: string) => KeyRecord | null;
}

export type AuthVariables = { apiKey: KeyRecord | null };
/** The Hono environment of the API app. */
export type ApiEnv = { Variables: AuthVariables };

export function apiKeyAuth(options: ApiKeyAuthOptions): MiddlewareHandler<ApiEnv> {
  return async (c, next) => {
    const header = c.req.header('authorization');
    const match = header?.match(/^Bearer\s+(\S+)\s*$/i);
    // RFC 6750: tell the client which scheme is expected.
    c.header('WWW-Authenticate', 'Bearer realm="weitiao"');
    if (!match) {
      throw new WeitiaoError(
        'unauthorized',
        header
          ? 'malformed Authorization header: expected `Bearer <key>` / Authorization 头格式错误，应为 `Bearer <密钥>`'
          : 'missing API key: send `Authorization: Bearer <key>` (create one with `weitiao keys create`) / 缺少 API 密钥',
      );
    }
    const record = options.verify(match[1]);
    if (!record) {
      const shown = match[1].length > 9 ? `${match[1].slice(0, 9)}…` : match[1];
      throw new WeitiaoError('unauthorized', `invalid or revoked API key '${shown}' / API 密钥无效或已吊销`);
    }
    c.header('WWW-Authenticate', undefined);
    c.set('apiKey', record);
    await next();
  };
}
