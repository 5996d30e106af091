/**
 * The store's schema, as an append-only list of migrations. Never edit a migration that has shipped:
 * add a new one. `PRAGMA user_version` (SQLite) or the table weitiao_schema (PostgreSQL) records how many have run.
 *
 * Times are Unix seconds (OpenAI's `created_at`); JSON columns hold the wire objects as they are.
 */
export const MIGRATIONS: readonly string[] = [
  // 1: files, models, jobs with their events and checkpoints, API keys
  `
  CREATE TABLE files (
    id          TEXT PRIMARY KEY,              -- file-…
    filename    TEXT NOT NULL,
    purpose     TEXT NOT NULL,                 -- fine-tune | evaluation | …
    bytes       INTEGER NOT NULL,
    path        TEXT NOT NULL,                 -- absolute path of the stored copy
    created_at  INTEGER NOT NULL,
    status      TEXT NOT NULL DEFAULT 'processed',
    status_details TEXT
  );

  CREATE TABLE models (
    id          TEXT PRIMARY KEY,              -- 'tiny-qwen2', 'Qwen/Qwen2.5-0.5B-Instruct', 'ft:tiny-qwen2:waimai:abc123'
    kind        TEXT NOT NULL,                 -- base | fine-tuned | checkpoint
    path        TEXT NOT NULL,                 -- base: HF model dir; fine-tuned/checkpoint: adapter dir
    base_model  TEXT,                          -- id of the base model (fine-tuned, checkpoint)
    job_id      TEXT,                          -- the job that made it
    source      TEXT NOT NULL,                 -- tiny | huggingface | modelscope | local | training
    owned_by    TEXT NOT NULL DEFAULT 'weitiao',
    created_at  INTEGER NOT NULL,
    metadata    TEXT NOT NULL DEFAULT '{}'     -- JSON: lineage (training file, hyperparameters), sizes, …
  );
  CREATE INDEX models_job ON models(job_id);

  CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,         -- ftjob-…
    model            TEXT NOT NULL,            -- base model id
    training_file    TEXT NOT NULL,            -- file id
    validation_file  TEXT,
    status           TEXT NOT NULL,            -- validating_files | queued | running | pausing | paused | succeeded | failed | cancelled
    method           TEXT NOT NULL,            -- JSON: OpenAI's method object, hyperparameters resolved
    extension        TEXT NOT NULL DEFAULT '{}', -- JSON: weitiao's own settings (lora, label_set, eval/save intervals)
    suffix           TEXT,
    seed             INTEGER NOT NULL,
    metadata         TEXT,                     -- JSON object or NULL
    fine_tuned_model TEXT,
    trained_tokens   INTEGER,
    error            TEXT,                     -- JSON {code, message, param} or NULL
    result_files     TEXT NOT NULL DEFAULT '[]', -- JSON array of file ids
    estimated_finish INTEGER,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    -- queue bookkeeping
    attempts         INTEGER NOT NULL DEFAULT 0,
    worker_id        TEXT,
    worker_pid       INTEGER,                  -- the engine process while running
    heartbeat_at     INTEGER,
    requested_action TEXT                      -- cancel | pause, set by the API, acted on by the worker
  );
  CREATE INDEX jobs_status ON jobs(status, created_at);

  CREATE TABLE job_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT, -- total order for pagination and live following
    id          TEXT NOT NULL UNIQUE,          -- ftevent-…
    job_id      TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL,
    level       TEXT NOT NULL,                 -- info | warn | error
    type        TEXT NOT NULL,                 -- message | metrics
    message     TEXT NOT NULL,
    data        TEXT                           -- JSON or NULL
  );
  CREATE INDEX job_events_job ON job_events(job_id, seq);

  CREATE TABLE checkpoints (
    id          TEXT PRIMARY KEY,              -- ftckpt-…
    job_id      TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    step        INTEGER NOT NULL,
    epoch       REAL NOT NULL,
    metrics     TEXT NOT NULL,                 -- JSON {step, train_loss, valid_loss, …}
    path        TEXT NOT NULL,                 -- the checkpoint directory
    fine_tuned_model_checkpoint TEXT NOT NULL, -- model id usable for chat: ft:…:ckpt-step-N
    created_at  INTEGER NOT NULL,
    UNIQUE (job_id, step)
  );

  CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,              -- key-…
    name        TEXT NOT NULL,
    prefix      TEXT NOT NULL,                 -- first characters, to recognise a key in lists
    hash        TEXT NOT NULL UNIQUE,          -- sha256 of the whole key; the key itself is never stored
    created_at  INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at  INTEGER
  );
  `,
  // 2: exports of models (HF folders, GGUF files, Ollama bundles) with their post-export check, and deployments
  `
  CREATE TABLE exports (
    id          TEXT PRIMARY KEY,              -- export-…
    model       TEXT NOT NULL,                 -- the exported model's id
    format      TEXT NOT NULL,                 -- hf | gguf | ollama
    quantize    TEXT,                          -- gguf/ollama: f16 | q8_0 | …
    options     TEXT NOT NULL DEFAULT '{}',    -- JSON: adapter_only, check settings, …
    status      TEXT NOT NULL,                 -- queued | running | succeeded | failed | cancelled
    progress    TEXT,                          -- JSON {phase, current, total} of the running step
    path        TEXT,                          -- the output folder (inside the home unless -o chose another)
    result      TEXT,                          -- JSON: the engine's export result (files, stop tokens, …)
    "check"     TEXT,                          -- JSON: the post-export check's report
    error       TEXT,                          -- JSON {code, message, param} or NULL
    created_at  INTEGER NOT NULL,
    finished_at INTEGER
  );
  CREATE INDEX exports_model ON exports(model, created_at);

  CREATE TABLE deployments (
    model       TEXT PRIMARY KEY,              -- the served model's id (what clients send as "model")
    backend     TEXT NOT NULL,                 -- engine | llamacpp | vllm
    replicas    INTEGER NOT NULL DEFAULT 1,
    config      TEXT NOT NULL DEFAULT '{}',    -- JSON: gguf path / export id, base_url, parallel sequences, …
    state       TEXT NOT NULL DEFAULT 'ready', -- ready | loading | failed | stopped
    error       TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
  );
  `,
  // 3: OpenAI-compatible evals (src/evals): definitions, their runs (background tasks), each item's output
  `
  CREATE TABLE evals (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL,
    data_source_config TEXT NOT NULL,            -- JSON, OpenAI's shape
    testing_criteria   TEXT NOT NULL,            -- JSON array of graders (+ pass_threshold)
    metadata           TEXT,                     -- JSON or NULL
    created_at         INTEGER NOT NULL
  );
  CREATE TABLE eval_runs (
    id          TEXT PRIMARY KEY,
    eval_id     TEXT NOT NULL,
    name        TEXT NOT NULL,
    model       TEXT NOT NULL,                   -- the weitiao model that answered, or '' for given samples
    data_source TEXT NOT NULL,                   -- JSON, OpenAI's shape
    status      TEXT NOT NULL,                   -- queued | in_progress | completed | failed | canceled
    progress    TEXT,                            -- JSON {phase, current, total}
    summary     TEXT,                            -- JSON: result_counts, per_testing_criteria_results, per_model_usage, metrics
    error       TEXT,                            -- JSON {code, message} or NULL
    metadata    TEXT,
    created_at  INTEGER NOT NULL,
    finished_at INTEGER
  );
  CREATE INDEX eval_runs_eval ON eval_runs(eval_id, created_at);
  CREATE TABLE eval_output_items (
    id                 TEXT PRIMARY KEY,
    run_id             TEXT NOT NULL,
    eval_id            TEXT NOT NULL,
    datasource_item_id INTEGER NOT NULL,
    datasource_item    TEXT NOT NULL,            -- JSON
    sample             TEXT NOT NULL,            -- JSON, OpenAI's sample shape
    results            TEXT NOT NULL,            -- JSON array {name, type, score, passed}
    status             TEXT NOT NULL,            -- pass | fail
    created_at         INTEGER NOT NULL
  );
  CREATE INDEX eval_output_items_run ON eval_output_items(run_id, datasource_item_id);
  `,
  // 4: projects and roles (src/projects). Every owned row carries its project; rows of a single-user home
  // fall into 'default', and its keys become admins of 'default'. New rows take the project of the request
  // scope through weitiao_project() (a function every connection registers, src/store/index.ts); models and
  // eval runs take their job's / eval's project. Checkpoints, events and output items follow their parent.
  `
  CREATE TABLE projects (
    id          TEXT PRIMARY KEY,              -- a slug: 'default', 'waimai', …
    description TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL
  );
  INSERT INTO projects (id, description, created_at) VALUES ('default', 'the home before projects existed / 默认项目', CAST(strftime('%s','now') AS INTEGER));

  ALTER TABLE files     ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
  ALTER TABLE models    ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
  ALTER TABLE jobs      ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
  ALTER TABLE exports   ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
  ALTER TABLE evals     ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
  ALTER TABLE eval_runs ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
  ALTER TABLE api_keys  ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
  ALTER TABLE api_keys  ADD COLUMN role    TEXT NOT NULL DEFAULT 'admin';   -- admin | member | read-only
  CREATE INDEX files_project ON files(project);
  CREATE INDEX jobs_project ON jobs(project, created_at);

  CREATE TRIGGER files_project AFTER INSERT ON files BEGIN
    UPDATE files SET project = weitiao_project() WHERE id = NEW.id;
  END;
  CREATE TRIGGER jobs_project AFTER INSERT ON jobs BEGIN
    UPDATE jobs SET project = weitiao_project() WHERE id = NEW.id;
  END;
  CREATE TRIGGER models_project AFTER INSERT ON models BEGIN
    UPDATE models SET project = COALESCE((SELECT project FROM jobs WHERE id = NEW.job_id), weitiao_project()) WHERE id = NEW.id;
  END;
  CREATE TRIGGER exports_project AFTER INSERT ON exports BEGIN
    UPDATE exports SET project = weitiao_project() WHERE id = NEW.id;
  END;
  CREATE TRIGGER evals_project AFTER INSERT ON evals BEGIN
    UPDATE evals SET project = weitiao_project() WHERE id = NEW.id;
  END;
  CREATE TRIGGER eval_runs_project AFTER INSERT ON eval_runs BEGIN
    UPDATE eval_runs SET project = COALESCE((SELECT project FROM evals WHERE id = NEW.eval_id), weitiao_project()) WHERE id = NEW.id;
  END;
  -- A job's result files are made by the worker, outside any request: they join the job's project when listed on it.
  CREATE TRIGGER jobs_result_files_project AFTER UPDATE OF result_files ON jobs BEGIN
    UPDATE files SET project = NEW.project WHERE id IN (SELECT value FROM json_each(NEW.result_files));
  END;
  CREATE TRIGGER api_keys_project AFTER INSERT ON api_keys BEGIN
    UPDATE api_keys SET project = weitiao_project() WHERE id = NEW.id;
  END;

  -- Every mutating API request: who, what, when, from where, and how it ended.
  CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at  INTEGER NOT NULL,
    project     TEXT NOT NULL,
    key_id      TEXT,                          -- NULL when auth is off (the local user)
    key_name    TEXT,
    method      TEXT NOT NULL,
    route       TEXT NOT NULL,                 -- the route pattern, e.g. /v1/files/:file_id
    path        TEXT NOT NULL,                 -- the path as requested
    object_id   TEXT,                          -- the object acted on or created
    remote_addr TEXT,
    status      INTEGER NOT NULL
  );
  CREATE INDEX audit_log_project ON audit_log(project, seq);
  `,
  // 5: stored evaluation results (src/eval/results.ts): what `weitiao eval`, the console and a job's forgetting
  // check produced, keyed by the content hash of the data they were scored on (the leaderboard's key).
  `
  CREATE TABLE eval_results (
    id           TEXT PRIMARY KEY,               -- evres-…
    kind         TEXT NOT NULL,                  -- evaluation | comparison | baseline | forgetting
    model        TEXT NOT NULL,                  -- the evaluated (fine-tuned) model
    dataset      TEXT NOT NULL,                  -- sha256 of the data file's bytes ('general' for the forgetting set)
    dataset_name TEXT NOT NULL,                  -- a file id or file name, never a server path
    job_id       TEXT,                           -- the job whose forgetting check this is
    report       TEXT NOT NULL,                  -- JSON: the report, server paths removed
    created_at   INTEGER NOT NULL,
    project      TEXT NOT NULL DEFAULT 'default'
  );
  CREATE INDEX eval_results_dataset ON eval_results(dataset, created_at);
  CREATE INDEX eval_results_job ON eval_results(job_id);
  CREATE TRIGGER eval_results_project AFTER INSERT ON eval_results BEGIN
    UPDATE eval_results SET project = COALESCE((SELECT project FROM jobs WHERE id = NEW.job_id), weitiao_project()) WHERE id = NEW.id;
  END;
  `,
  // 6: eval runs are jobs of a durable queue (src/evals/queue.ts): who claimed a run and when it last beat,
  // how often it was claimed, the judge endpoint its creator named (never a key), and its progress events.
  `
  ALTER TABLE eval_runs ADD COLUMN worker_id      TEXT;                  -- '<name>:<pid>' of the claiming queue, NULL when waiting
  ALTER TABLE eval_runs ADD COLUMN heartbeat_at   INTEGER;
  ALTER TABLE eval_runs ADD COLUMN attempts       INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE eval_runs ADD COLUMN judge_base_url TEXT;
  CREATE INDEX eval_runs_waiting ON eval_runs(status, worker_id);
  CREATE TABLE eval_run_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    run_id      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    level       TEXT NOT NULL,                 -- info | warn | error
    message     TEXT NOT NULL,
    data        TEXT                           -- JSON or NULL
  );
  CREATE INDEX eval_run_events_run ON eval_run_events(run_id, seq);
  `,
  // 7: members of multi-node runs (src/workers/groups.ts): one row per remote lease of a job with weitiao.nodes
  // > 1, so the group's ranks and fencing survive an API restart. `leader` is the job's worker_id while this
  // attempt holds it; rows of an ended attempt are deleted.
  `
  CREATE TABLE job_nodes (
    lease_id     TEXT PRIMARY KEY,
    job_id       TEXT NOT NULL,
    leader       TEXT NOT NULL,
    node_rank    INTEGER NOT NULL,
    nodes        INTEGER NOT NULL,
    worker       TEXT NOT NULL,
    master_addr  TEXT NOT NULL,
    master_port  INTEGER NOT NULL,
    joined_at    INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    outcome      TEXT,                          -- ok | failed, once the member finished
    plan         TEXT,                          -- rank 0's row: the started run's request and inputs (JSON)
    UNIQUE (job_id, node_rank)
  );
  CREATE INDEX job_nodes_job ON job_nodes(job_id);
  `,
];

/**
 * What PostgreSQL runs for migration `v` (0-based): the same statements with SQLite's types spelled as
 * PostgreSQL's, a `rowid` column on every table (insertion order, which SQLite has built in and lists order
 * by), and the migration's triggers in PostgreSQL's form (POSTGRES_TRIGGERS): SQLite's trigger syntax does
 * not port, and its weitiao_project()/weitiao_visible() are functions registered by the process, where here
 * they are SQL functions reading the session settings the connection sets (src/store/postgres/database.ts).
 */
export function postgresMigration(v: number): string {
  const sql = MIGRATIONS[v]
    .replace(/CREATE TRIGGER[\s\S]*?\bEND;/g, '')
    .replace(/CREATE TABLE (\w+) \(/g, 'CREATE TABLE $1 (\n    rowid BIGSERIAL NOT NULL,')
    .replace(/INTEGER PRIMARY KEY AUTOINCREMENT/g, 'BIGSERIAL PRIMARY KEY')
    .replace(/\bINTEGER\b/g, 'BIGINT')
    .replace(/\bREAL\b/g, 'DOUBLE PRECISION')
    .replace("CAST(strftime('%s','now') AS BIGINT)", 'CAST(extract(epoch from now()) AS BIGINT)');
  return sql + (POSTGRES_TRIGGERS[v] ?? '');
}

/** Migration index → its triggers (and the functions they call) on PostgreSQL; same effect as the SQLite ones. */
const POSTGRES_TRIGGERS: Record<number, string> = {
  3: `
  CREATE FUNCTION weitiao_project() RETURNS text LANGUAGE sql STABLE AS
    $$ SELECT COALESCE(NULLIF(current_setting('weitiao.project', true), ''), 'default') $$;
  -- weitiao.scope is '' outside any request scope: every row is visible then.
  CREATE FUNCTION weitiao_visible(p text) RETURNS boolean LANGUAGE sql STABLE AS
    $$ SELECT COALESCE(NULLIF(current_setting('weitiao.scope', true), ''), p) = p $$;

  CREATE FUNCTION weitiao_stamp_project() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN NEW.project := weitiao_project(); RETURN NEW; END $$;
  CREATE TRIGGER files_project    BEFORE INSERT ON files    FOR EACH ROW EXECUTE FUNCTION weitiao_stamp_project();
  CREATE TRIGGER jobs_project     BEFORE INSERT ON jobs     FOR EACH ROW EXECUTE FUNCTION weitiao_stamp_project();
  CREATE TRIGGER exports_project  BEFORE INSERT ON exports  FOR EACH ROW EXECUTE FUNCTION weitiao_stamp_project();
  CREATE TRIGGER evals_project    BEFORE INSERT ON evals    FOR EACH ROW EXECUTE FUNCTION weitiao_stamp_project();
  CREATE TRIGGER api_keys_project BEFORE INSERT ON api_keys FOR EACH ROW EXECUTE FUNCTION weitiao_stamp_project();

  CREATE FUNCTION weitiao_stamp_job_project() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN NEW.project := COALESCE((SELECT project FROM jobs WHERE id = NEW.job_id), weitiao_project()); RETURN NEW; END $$;
  CREATE TRIGGER models_project BEFORE INSERT ON models FOR EACH ROW EXECUTE FUNCTION weitiao_stamp_job_project();

  CREATE FUNCTION weitiao_stamp_eval_project() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN NEW.project := COALESCE((SELECT project FROM evals WHERE id = NEW.eval_id), weitiao_project()); RETURN NEW; END $$;
  CREATE TRIGGER eval_runs_project BEFORE INSERT ON eval_runs FOR EACH ROW EXECUTE FUNCTION weitiao_stamp_eval_project();

  CREATE FUNCTION weitiao_result_files_project() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN UPDATE files SET project = NEW.project WHERE id IN (SELECT jsonb_array_elements_text(NEW.result_files::jsonb)); RETURN NEW; END $$;
  CREATE TRIGGER jobs_result_files_project AFTER UPDATE OF result_files ON jobs FOR EACH ROW EXECUTE FUNCTION weitiao_result_files_project();
  `,
  4: `
  CREATE TRIGGER eval_results_project BEFORE INSERT ON eval_results FOR EACH ROW EXECUTE FUNCTION weitiao_stamp_job_project();
  `,
};
