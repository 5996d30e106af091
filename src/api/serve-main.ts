/**
 * A minimal process entry for the server, for tests that need a real, killable server process
 * (`weitiao serve` is the user-facing command; it calls the same `startServer`).
 *
 *   node --import tsx src/api/serve-main.ts --home DIR [--port 0] [--host 127.0.0.1] [--no-auth] [--no-worker]
 *
 * Prints one JSON line `{"url": …, "port": …, "pid": …}` on stdout once listening.
 */
import { parseArgs } from 'node:util';
import { openContext } from '../context.js';
import { startServer } from './index.js';

const { values } = parseArgs({
  options: {
    home: { type: 'string' },
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '0' },
    'no-auth': { type: 'boolean', default: false },
    'no-worker': { type: 'boolean', default: false },
  },
});

const ctx = openContext({ home: values.home });
const server = await startServer(ctx, {
  host: values.host,
  port: Number(values.port),
  auth: !values['no-auth'],
  worker: !values['no-worker'],
});
process.stdout.write(JSON.stringify({ url: server.url, port: server.port, pid: process.pid }) + '\n');
