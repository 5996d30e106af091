/**
 * A local S3-compatible server for tests (s3rver, on a free port, its objects in a temp dir), reached by the
 * AWS SDK through the usual environment variables. Not used by the product.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import type { IncomingMessage, Server } from 'node:http';
import { createRequire } from 'node:module';
import path from 'node:path';

// s3rver ships no types: the little of it the tests use.
interface S3rverServer {
  run(): Promise<{ address: string; port: number }>;
  close(): Promise<void>;
  httpServer: Server;
}
const S3rver = createRequire(import.meta.url)('s3rver') as new (options: Record<string, unknown>) => S3rverServer;

export interface LocalS3 {
  /** `WEITIAO_STORAGE_URL` naming the bucket and prefix. */
  url: string;
  /** The requests the server saw (`PUT /bucket/key?…`). */
  requests: string[];
  /** Flips the first byte of a stored object (same size: only its checksum can tell). */
  corrupt(key: string): void;
  close(): Promise<void>;
}

/** Starts the server with one bucket and points the AWS variables at it (they are left set). */
export async function startLocalS3(dir: string, bucket = 'weitiao-test', prefix = 'team/甲'): Promise<LocalS3> {
  const server = new S3rver({ address: '127.0.0.1', port: 0, directory: dir, silent: true, configureBuckets: [{ name: bucket }] });
  const { port } = await server.run();
  const requests: string[] = [];
  server.httpServer.prependListener('request', (req: IncomingMessage) => requests.push(`${req.method} ${decodeURIComponent(req.url ?? '')}`));
  Object.assign(process.env, {
    AWS_ENDPOINT_URL_S3: `http://127.0.0.1:${port}`,
    AWS_REGION: 'us-east-1',
    AWS_ACCESS_KEY_ID: 'S3RVER', // s3rver's built-in account
    AWS_SECRET_ACCESS_KEY: 'S3RVER',
    AWS_EC2_METADATA_DISABLED: 'true',
  });
  return {
    url: `s3://${bucket}/${prefix}`,
    requests,
    corrupt: (key) => {
      // s3rver keeps an object's bytes in `<dir>/<bucket>/<key>._S3rver_object`.
      const file = path.join(dir, bucket, ...`${prefix}/${key}`.split('/')) + '._S3rver_object';
      const bytes = readFileSync(file);
      bytes[0] = bytes[0]! ^ 0xff;
      writeFileSync(file, bytes);
    },
    close: () => server.close(),
  };
}
