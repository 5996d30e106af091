/**
 * Where all state lives: one home directory (`--home`, else `WEITIAO_HOME`, else `~/.weitiao`) holding
 * the SQLite store, uploaded files, models and each job's checkpoints. Moving the directory moves everything.
 */
import { mkdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export interface Home {
  root: string;
  /** The SQLite database file. */
  db: string;
  /** Uploaded and prepared data files. */
  files: string;
  /** Base models: created tiny models and pulled hub models (`models/<name>`). */
  models: string;
  /** One directory per job: checkpoints, the resulting model, logs. */
  jobs: string;
  /** Partial downloads and other scratch space. */
  cache: string;
}

export function resolveHome(explicit?: string): Home {
  const root = path.resolve(explicit ?? process.env.WEITIAO_HOME ?? path.join(os.homedir(), '.weitiao'));
  const home: Home = {
    root,
    db: path.join(root, 'weitiao.sqlite'),
    files: path.join(root, 'files'),
    models: path.join(root, 'models'),
    jobs: path.join(root, 'jobs'),
    cache: path.join(root, 'cache'),
  };
  for (const dir of [home.root, home.files, home.models, home.jobs, home.cache]) mkdirSync(dir, { recursive: true });
  return home;
}
