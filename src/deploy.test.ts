/**
 * The deployment files run `weitiao …` commands that no other test executes: the Dockerfile's CMD, the
 * containers of deploy/compose.yaml and deploy/k8s/, the commands their comments and docs/DEPLOY.md tell people
 * to type. Each must name a command the CLI has, with options it defines, so that renaming a command or a flag
 * fails here and not at someone's `docker compose up`. The YAML files must also parse, and their weitiao
 * containers must still start the API and a worker, and the Dockerfile must still run every step of `make setup`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command, type Option } from 'commander';
import YAML from 'yaml';
import { parseRole } from './projects/index.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const read = (file: string) => readFileSync(path.join(ROOT, file), 'utf8');
const K8S_FILES = readdirSync(path.join(ROOT, 'deploy/k8s'))
  .filter((f) => f.endsWith('.yaml'))
  .map((f) => `deploy/k8s/${f}`);

/**
 * The CLI's command tree, exactly as `weitiao` builds it: src/cli/main.ts builds the program and parses
 * process.argv at import, so parsing is swapped for capturing the program while it is imported.
 */
async function loadProgram(): Promise<Command> {
  const parseAsync = Command.prototype.parseAsync;
  let program: Command | undefined;
  Command.prototype.parseAsync = async function (this: Command) {
    program = this;
    return this;
  };
  try {
    await import('./cli/main.js');
  } finally {
    Command.prototype.parseAsync = parseAsync;
  }
  assert.ok(program, 'src/cli/main.ts did not build a program');
  return program;
}

/** Option values the CLI checks itself after parsing (commander only knows they take a value). */
const VALUE_CHECKS: Record<string, (value: string) => unknown> = {
  'keys create --role': parseRole,
};

interface Invocation {
  where: string;
  argv: string[];
}

/**
 * Problems with one `weitiao …` argv (argv[0] is the first word after `weitiao`): unknown commands or options,
 * a group named without its subcommand, missing option values or arguments, values the CLI would refuse
 * (VALUE_CHECKS). `template` (docs' synopsis lines such as `[--replicas N] <model>`) checks commands, option
 * names and plain-word values, not argument counts.
 */
function check(program: Command, argv: string[], template: boolean): string[] {
  const errors: string[] = [];
  const chain: Command[] = [program];
  let i = 0;
  const strip = (t: string) => t.replace(/^[[(]+/, '').replace(/[\])]+$/, '');
  // Global options may come before the command (`weitiao --project waimai keys list`).
  for (; i < argv.length; i++) {
    const sub = chain[chain.length - 1].commands.find((c) => c.name() === argv[i] || c.aliases().includes(argv[i]));
    if (sub) {
      chain.push(sub);
      continue;
    }
    const flag = strip(argv[i]);
    if (!flag.startsWith('-')) break;
    const option = findOption([program], flag.split('=')[0]);
    if (!option) break;
    if ((option.required || option.optional) && !flag.includes('=')) i++;
  }
  const cmd = chain[chain.length - 1];
  const name = chain.slice(1).map((c) => c.name()).join(' ');
  if (cmd === program) return [`unknown command '${argv[i] ?? ''}'`];
  const hasAction = (cmd as unknown as { _actionHandler: unknown })._actionHandler != null;
  if (!hasAction) return [`'${name}' needs one of its subcommands (${cmd.commands.map((c) => c.name()).join(', ')}), got '${argv[i] ?? ''}'`];

  const positional: string[] = [];
  for (; i < argv.length; i++) {
    const token = template ? strip(argv[i]) : argv[i];
    if (!token.startsWith('-') || token === '-') {
      positional.push(token);
      continue;
    }
    if (token === '--help' || token === '-h') continue;
    const [flag, inline] = token.split(/=(.*)/s, 2);
    const option = findOption(chain, flag);
    if (!option) {
      errors.push(`'${name}' has no option ${flag}`);
      continue;
    }
    if (!(option.required || option.optional) || inline !== undefined) {
      if (inline !== undefined) checkValue(`${name} ${option.long}`, inline, errors);
      continue;
    }
    const value = argv[i + 1];
    if (value === undefined || (value.startsWith('-') && option.required)) {
      if (option.required) errors.push(`'${name}' ${flag} needs a value`);
      continue;
    }
    i++;
    // A synopsis shows placeholders (`<role>`, `N]`, `a|b`): only a plain word is checked there.
    if (!template || /^[a-z][\w-]*$/.test(value)) checkValue(`${name} ${option.long}`, value, errors);
  }
  if (!template) {
    const args = cmd.registeredArguments;
    const required = args.filter((a) => a.required).length;
    if (positional.length < required) errors.push(`'${name}' needs ${required} argument(s), got ${positional.length}`);
    if (!args.some((a) => a.variadic) && positional.length > args.length) errors.push(`'${name}' takes ${args.length} argument(s), got ${positional.join(' ')}`);
  }
  return errors;
}

/** The option `flag` names on this command or one of its parents (global options such as --home). */
function findOption(chain: Command[], flag: string): Option | undefined {
  for (const c of [...chain].reverse()) {
    const option = c.options.find((o) => o.long === flag || o.short === flag);
    if (option) return option;
  }
  return undefined;
}

function checkValue(key: string, value: string, errors: string[]): void {
  const validate = VALUE_CHECKS[key];
  if (!validate) return;
  try {
    validate(value);
  } catch (e) {
    errors.push(`${key} ${value}: ${(e as Error).message}`);
  }
}

/**
 * `weitiao …` written in text: a shell command in a YAML string, a comment or a code block. The words after
 * `weitiao` up to the end of the shell command (`;`, `&&`, `|`, a redirection, a comment).
 */
function invocationsInText(text: string, where: string): Invocation[] {
  const found: Invocation[] = [];
  // Not a path or a host (`/usr/local/bin/weitiao`, `weitiao-api`), a tag being built (`-t weitiao:cpu`) nor kubectl's
  // namespace (`-n weitiao`); the image followed by its args is an invocation (`docker run … weitiao:gpu worker …`).
  const start = /(?<![\w./@:-])(?<!(?:-n|--namespace|-t|--tag)[ =])weitiao(?::[\w.-]+)?[ \t]+(?=[-a-z])/g;
  for (const m of text.matchAll(start)) {
    const rest = text.slice(m.index + m[0].length).split(/\n|;|&&|\|\||\s\|\s|\s\d?>|\s#|`|\$\(|\)/)[0];
    const argv = rest.match(/"[^"]*"|'[^']*'|\S+/g)?.map((t) => t.replace(/^(["'])(.*)\1$/s, '$2')) ?? [];
    if (argv.length) found.push({ where, argv });
  }
  return found;
}

/** Every string in a parsed YAML document (commands live in strings: `command`, `args`, shell scripts). */
function strings(value: unknown): string[] {
  if (typeof value === 'string') return [value];
  if (Array.isArray(value)) return value.flatMap(strings);
  if (value && typeof value === 'object') return Object.values(value).flatMap(strings);
  return [];
}

/**
 * The commands written in the comments of a YAML file or Dockerfile: a comment line indented as code
 * (`#   docker compose … exec api weitiao keys create alice`) and every `backquoted` span; prose is left alone.
 */
function commentedCommands(text: string): string {
  const code: string[] = [];
  for (const line of text.split('\n')) {
    const comment = line.match(/(?:^|\s)#(.*)$/)?.[1];
    if (comment === undefined) continue;
    if (/^\s{2,}\S/.test(comment)) code.push(comment);
    code.push(...[...comment.matchAll(/`([^`]+)`/g)].map((m) => m[1]));
  }
  return code.join('\n');
}

/** Lines inside the fenced code blocks of a Markdown file, shell comments dropped, synopsis continuations joined. */
function codeBlocks(markdown: string): string {
  const lines: string[] = [];
  let inFence = false;
  for (const line of markdown.split('\n')) {
    if (line.trimStart().startsWith('```')) {
      inFence = !inFence;
      continue;
    }
    if (!inFence) continue;
    const code = line.replace(/(^|\s)#.*$/, '');
    if (/^\s+[[-]/.test(code) && lines.length) lines[lines.length - 1] += ` ${code.trim()}`;
    else if (lines.length && lines[lines.length - 1].endsWith('\\')) lines[lines.length - 1] = `${lines[lines.length - 1].slice(0, -1)} ${code.trim()}`;
    else lines.push(code);
  }
  return lines.join('\n');
}

/** The image's entrypoint ends in `weitiao`: a container's command/args are the words after it. */
function dockerEntrypoint(): { entrypoint: string[]; cmd: string[] } {
  const dockerfile = read('Dockerfile');
  const json = (instruction: string) => {
    const lines = [...dockerfile.matchAll(new RegExp(`^${instruction}\\s+(\\[.*\\])\\s*$`, 'gm'))];
    assert.ok(lines.length > 0, `the Dockerfile has no ${instruction} in JSON form`);
    return JSON.parse(lines[lines.length - 1][1]) as string[];
  };
  return { entrypoint: json('ENTRYPOINT'), cmd: json('CMD') };
}

/** Containers of the weitiao image that keep its entrypoint: their argv after `weitiao`. */
function containerInvocations(): Invocation[] {
  const found: Invocation[] = [];
  const argvOf = (value: unknown) => (typeof value === 'string' ? value.split(/\s+/).filter(Boolean) : (value as string[]));
  const compose = YAML.parse(read('deploy/compose.yaml'), { merge: true }) as { services: Record<string, Record<string, unknown>> };
  for (const [name, service] of Object.entries(compose.services)) {
    if (!String(service.image ?? '').startsWith('weitiao') || service.entrypoint !== undefined) continue;
    found.push({ where: `deploy/compose.yaml services.${name}`, argv: argvOf(service.command ?? dockerEntrypoint().cmd) });
  }
  for (const file of K8S_FILES) {
    for (const doc of YAML.parseAllDocuments(read(file))) {
      const spec = doc.toJS()?.spec?.template?.spec;
      for (const c of [...(spec?.initContainers ?? []), ...(spec?.containers ?? [])]) {
        if (!String(c.image).startsWith('weitiao') || c.command !== undefined) continue;
        found.push({ where: `${file} container ${c.name}`, argv: argvOf(c.args ?? dockerEntrypoint().cmd) });
      }
    }
  }
  return found;
}

test('the YAML files parse; compose and Kubernetes each start the API and a worker from the image', () => {
  const { entrypoint, cmd } = dockerEntrypoint();
  assert.equal(entrypoint[entrypoint.length - 1], 'weitiao', 'the image runs `weitiao <command>`');
  assert.deepEqual(cmd, ['serve']);
  for (const file of ['deploy/compose.yaml', ...K8S_FILES]) {
    for (const doc of YAML.parseAllDocuments(read(file))) assert.deepEqual(doc.errors, [], `${file}: ${doc.errors[0]?.message}`);
  }
  const containers = containerInvocations();
  const commands = (prefix: string) => containers.filter((c) => c.where.startsWith(prefix)).map((c) => c.argv[0]);
  const composeWorker = invocationsInText(strings(YAML.parse(read('deploy/compose.yaml'))).join('\n'), 'compose').map((c) => c.argv[0]);
  assert.ok(commands('deploy/compose.yaml').includes('serve'), 'compose runs `weitiao serve`');
  assert.ok(composeWorker.includes('worker'), 'compose runs `weitiao worker`');
  assert.ok(commands('deploy/k8s').includes('serve') && commands('deploy/k8s').includes('worker'), 'the k8s manifests run serve and worker');
});

test('every weitiao command in the deployment files and docs/DEPLOY.md exists in the CLI with the options used', async () => {
  const program = await loadProgram();
  const strict: Invocation[] = [...containerInvocations(), { where: 'Dockerfile CMD', argv: dockerEntrypoint().cmd }];
  for (const file of ['deploy/compose.yaml', ...K8S_FILES]) {
    const text = read(file);
    const parsed = YAML.parseAllDocuments(text).map((d) => d.toJS());
    strict.push(...invocationsInText(strings(parsed).join('\n'), file), ...invocationsInText(commentedCommands(text), `${file} (comments)`));
  }
  strict.push(...invocationsInText(commentedCommands(read('Dockerfile')), 'Dockerfile (comments)'));
  const docs = ['docs/DEPLOY.md', 'deploy/k8s/README.md'].flatMap((f) => invocationsInText(codeBlocks(read(f)), f));

  const problems = [
    ...strict.flatMap((inv) => check(program, inv.argv, false).map((e) => `${inv.where}: weitiao ${inv.argv.join(' ')}\n    ${e}`)),
    ...docs.flatMap((inv) => check(program, inv.argv, true).map((e) => `${inv.where}: weitiao ${inv.argv.join(' ')}\n    ${e}`)),
  ];
  assert.deepEqual(problems, [], `commands the CLI does not have:\n${problems.join('\n')}`);
  // The checks saw the commands these files exist for (not a scan that silently matched nothing).
  const seen = new Set([...strict, ...docs].map((inv) => inv.argv.slice(0, 2).join(' ')));
  for (const expected of ['serve --host', 'worker --server', 'keys create', 'models deploy', 'export ft:qwen2.5-7b:waimai:abc']) {
    assert.ok(seen.has(expected), `no 'weitiao ${expected}' found; seen: ${[...seen].join(', ')}`);
  }
});

/** `make setup`'s steps that the image does its own way (or not at all), with the reason. */
const SETUP_NOT_IN_IMAGE: Record<string, string> = {
  malloc: 'the Dockerfile installs tcmalloc with apt-get itself (libtcmalloc-minimal4 or its t64 name)',
  'check-python': 'the base image brings python3 (>= 3.11 for the pinned numpy)',
};
/** Make's own bookkeeping in recipes: stamp files and existence tests. */
const MAKE_BOOKKEEPING = new Set(['touch', 'test']);

/** The words that identify a shell command: its first two words and the repository files it names. */
function signature(command: string): string[] {
  const words = command
    .replace(/\$\([^)]*\)/g, ' ')
    .split(/\s+/)
    .filter((w) => w && !w.startsWith('-'));
  return words.filter((w, i) => i < 2 || ((w.includes('/') || w.includes('.')) && existsSync(path.join(ROOT, w))));
}

test('the Dockerfile runs every step of `make setup` (npm ci, the venv from engine/requirements.txt, tsc, the console build)', () => {
  const makefile = read('Makefile');
  const recipes = new Map<string, string[]>();
  let current: string[] | null = null;
  for (const line of makefile.split('\n')) {
    const target = /^([^\s#:][^:=]*):(?!=)/.exec(line);
    if (target) recipes.set(target[1].trim(), (current = []));
    else if (line.startsWith('\t') && current) current.push(line.trim().replace(/^@/, ''));
    else if (!line.startsWith('\t')) current = null;
  }
  const steps = /^setup:(.*)$/m.exec(makefile)![1].trim().split(/\s+/);
  const commands = steps
    .filter((step) => !(step in SETUP_NOT_IN_IMAGE))
    .flatMap((step) => {
      assert.ok(recipes.has(step), `make setup's step '${step}' has no recipe here: mirror it in the Dockerfile, or list it in SETUP_NOT_IN_IMAGE`);
      return recipes.get(step)!;
    })
    .flatMap((line) => line.split(/&&|\|\|/).map((c) => c.trim()))
    .filter((c) => c && !MAKE_BOOKKEEPING.has(c.split(/\s+/)[0]));
  assert.ok(commands.length >= 4, `too few setup commands found: ${commands.join(' | ')}`);

  const dockerCommands = read('Dockerfile')
    .replace(/\\\n/g, ' ')
    .split('\n')
    .filter((l) => /^RUN\s/.test(l))
    .flatMap((l) => l.slice(4).split(/&&|\|\|/))
    .map((c) => c.replace(/^\s*[({]\s*/, '').trim());
  for (const command of commands) {
    const want = signature(command);
    const found = dockerCommands.some((c) => {
      const words = c.replace(/"\$\{?\w+\}?"/g, ' ').split(/\s+/);
      let at = 0;
      for (const w of words) if (at < want.length && (w === want[at] || w.endsWith(`/${want[at]}`))) at++;
      return at === want.length;
    });
    assert.ok(found, `make setup runs \`${command}\` but no RUN in the Dockerfile has ${JSON.stringify(want)}`);
  }
});
