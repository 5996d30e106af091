/**
 * The API's one error path: everything thrown by a handler or middleware ends here and leaves as OpenAI's
 * `{error: {message, type, param, code}}` with the status from src/errors.ts's table, so the official SDKs
 * raise their typed errors (AuthenticationError, NotFoundError, …) unchanged.
 */
import type { Context as HonoContext, ErrorHandler, NotFoundHandler } from 'hono';
import { HTTPException } from 'hono/http-exception';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import { z } from 'zod';
import { fromZodError, hideErrorPaths, WeitiaoError, type ErrorCode } from '../../errors.js';

const HTTP_STATUS_CODES: Partial<Record<number, ErrorCode>> = {
  400: 'invalid_request',
  401: 'unauthorized',
  403: 'permission_denied',
  404: 'not_found',
  409: 'conflict',
  413: 'payload_too_large',
  415: 'invalid_request',
  422: 'unprocessable',
  429: 'rate_limited',
};

/** Anything thrown → WeitiaoError. Unknown errors become internal_error and keep their cause. */
export function toWeitiaoError(err: unknown): WeitiaoError {
  if (err instanceof WeitiaoError) return err;
  if (err instanceof z.ZodError) return fromZodError(err);
  if (err instanceof HTTPException) {
    const code = HTTP_STATUS_CODES[err.status];
    if (code) return new WeitiaoError(code, err.message || `HTTP ${err.status}`, { cause: err });
  }
  return WeitiaoError.from(err);
}

/**
 * The body to send for an error, logging server-side failures to stderr. An unexpected error's stack and
 * message stay in the log: they may carry paths or internals, so the client learns what happened, not how.
 * Every other message leaves with its absolute paths cut to their last segment (src/errors.ts hideServerPaths).
 */
export function publicError(c: HonoContext, err: unknown): WeitiaoError {
  const e = toWeitiaoError(err);
  if (e.code === 'internal_error') {
    const cause = e.cause instanceof Error ? e.cause : e;
    console.error(`[weitiao api] ${c.req.method} ${c.req.path}: ${cause.stack ?? cause.message}`);
    return new WeitiaoError('internal_error', 'internal server error / 服务器内部错误');
  }
  if (e.httpStatus >= 500) console.error(`[weitiao api] ${c.req.method} ${c.req.path}: ${e.code}: ${e.message}`);
  // No absolute server path leaves in an error, whichever service wrote the message (the log keeps them).
  return hideErrorPaths(e);
}

/** The response for an error: OpenAI's body with the status from the code table. */
export function errorResponse(c: HonoContext, err: unknown): Response {
  const e = publicError(c, err);
  return c.json(e.toJSON(), e.httpStatus as ContentfulStatusCode);
}

export const onError: ErrorHandler = (err, c) => errorResponse(c, err);

export const notFound: NotFoundHandler = (c) =>
  errorResponse(
    c,
    new WeitiaoError('not_found', `no route ${c.req.method} ${c.req.path} / 没有此路由`, { param: undefined }),
  );
