/**
 * One claiming process of src/store/queue.test.ts: opens the store at argv[2] (a SQLite file or a postgres://
 * URL), waits for the go file argv[4] (so every claimer starts at once), claims queued jobs as worker argv[3]
 * until none is left, and prints the ids it got as one JSON line.
 */
import { existsSync } from 'node:fs';
import { claimWaitingJob } from '../jobs/repository.js';
import { openDatabase } from '../store/index.js';

const [location, workerId, goFile] = process.argv.slice(2);
const db = openDatabase(location);
while (!existsSync(goFile)) await new Promise((r) => setTimeout(r, 20));
const claimed: string[] = [];
const started = performance.now();
for (;;) {
  const job = claimWaitingJob(db, workerId, undefined, ['queued']);
  if (!job) break;
  claimed.push(job.id);
}
process.stdout.write(JSON.stringify({ workerId, claimed, ms: performance.now() - started }) + '\n');
db.close();
