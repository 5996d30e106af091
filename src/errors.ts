/**
 * One error type for the whole control plane. Every failure a user can see is a WeitiaoError with a
 * code; one table maps codes to HTTP statuses (OpenAI's error body, so the official SDKs raise their
 * typed errors) and one to CLI exit codes. Anything else is wrapped as `internal_error`, keeping its cause.
 */

export const ERROR_CODES = {
  //                       HTTP  exit  OpenAI error.type
  invalid_request: /*   */ [400, 2, 'invalid_request_error'],
  invalid_file: /*      */ [400, 3, 'invalid_request_error'],
  unauthorized: /*      */ [401, 4, 'authentication_error'],
  permission_denied: /* */ [403, 4, 'permission_error'],
  not_found: /*         */ [404, 5, 'invalid_request_error'],
  conflict: /*          */ [409, 6, 'invalid_request_error'],
  payload_too_large: /* */ [413, 2, 'invalid_request_error'],
  /** A request body in another media type than the route takes (JSON, or multipart for uploads). */
  unsupported_media_type: [415, 2, 'invalid_request_error'],
  /** A chat request longer than the serving backend's context (OpenAI's code of the same name; param `messages`). */
  context_length_exceeded: [400, 2, 'invalid_request_error'],
  unprocessable: /*     */ [422, 2, 'invalid_request_error'],
  rate_limited: /*      */ [429, 7, 'rate_limit_error'],
  cancelled: /*         */ [499, 130, 'cancelled'],
  engine_error: /*      */ [500, 8, 'server_error'],
  internal_error: /*    */ [500, 1, 'server_error'],
  engine_unavailable: /**/ [503, 9, 'server_error'],
  /** A remote service weitiao depends on (a model hub or its mirror) cannot be reached or keeps failing: try again later. */
  unavailable: /*       */ [503, 10, 'server_error'],
} as const satisfies Record<string, readonly [number, number, string]>;

export type ErrorCode = keyof typeof ERROR_CODES;

export interface ErrorDetails {
  /** The request parameter or record field at fault, e.g. `training_file` or `messages[1].role`. */
  param?: string;
  /** File and 1-based line for errors in user data. */
  file?: string;
  line?: number;
  cause?: unknown;
}

export class WeitiaoError extends Error {
  readonly code: ErrorCode;
  readonly param?: string;
  readonly file?: string;
  readonly line?: number;

  constructor(code: ErrorCode, message: string, details: ErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = 'WeitiaoError';
    this.code = code;
    this.param = details.param;
    this.file = details.file;
    this.line = details.line;
  }

  get httpStatus(): number {
    return ERROR_CODES[this.code][0];
  }

  get exitCode(): number {
    return ERROR_CODES[this.code][1];
  }

  /** OpenAI's wire shape: `{error: {message, type, param, code}}`. */
  toJSON(): { error: { message: string; type: string; param: string | null; code: string } } {
    return {
      error: { message: this.message, type: ERROR_CODES[this.code][2], param: this.param ?? null, code: this.code },
    };
  }

  /** Wraps anything thrown into a WeitiaoError; unknown errors become `internal_error` with their cause. */
  static from(err: unknown): WeitiaoError {
    if (err instanceof WeitiaoError) return err;
    const message = err instanceof Error ? err.message : String(err);
    return new WeitiaoError('internal_error', message, { cause: err });
  }
}

/** `file:line: field: message`, the form every data error is printed in. */
export function formatLocation(file: string | undefined, line: number | undefined, param?: string): string {
  const parts = [file && line ? `${file}:${line}` : file, param].filter(Boolean);
  return parts.join(': ');
}

// Absolute paths: a leading '/' not preceded by a word character, ':' (URLs) or '/', at least two segments.
// Segments stop at whitespace, quotes and (full-width) punctuation, so the Chinese half of a message survives.
const ABSOLUTE_PATH = /(?<![\w:/.~-])\/(?!v1\/)(?:[^\s/'"`,;:()<>[\]{}，。；：、（）“”‘’]+\/)+[^\s/'"`,;:()<>[\]{}，。；：、（）“”‘’]*/g;

/**
 * `text` without absolute server paths, for anything a client sees: a path under `root` (the home
 * directory) becomes relative to it (`jobs/ftjob-…/checkpoints/step-000004`), any other absolute path its
 * last segment. API routes (`/v1/…`) are left alone.
 */
export function hideServerPaths(text: string, root?: string): string {
  return text.replace(ABSOLUTE_PATH, (p) => {
    const trimmed = p.replace(/\/+$/, '');
    if (root && (trimmed === root || trimmed.startsWith(root + '/'))) return trimmed.slice(root.length + 1) || '.';
    return trimmed.slice(trimmed.lastIndexOf('/') + 1) || '.';
  });
}

/** The same error with server paths hidden from its message (and `file` cut to its name); itself when there were none. */
export function hideErrorPaths(err: WeitiaoError, root?: string): WeitiaoError {
  const message = hideServerPaths(err.message, root);
  const file = err.file && err.file.startsWith('/') ? err.file.slice(err.file.lastIndexOf('/') + 1) : err.file;
  if (message === err.message && file === err.file) return err;
  return new WeitiaoError(err.code, message, { param: err.param, line: err.line, file, cause: err });
}
