/**
 * A terminal progress bar with ETA. On a TTY it redraws one line in place; elsewhere (CI, pipes) it
 * prints a plain line at most every `plainEverySeconds`, so logs stay readable.
 */

export interface ProgressBarOptions {
  label: string;
  total: number;
  stream?: NodeJS.WriteStream;
  width?: number;
  plainEverySeconds?: number;
}

export class ProgressBar {
  private readonly stream: NodeJS.WriteStream;
  private readonly started = Date.now();
  private lastPlain = 0;
  private drawn = false;
  total: number;
  label: string;

  constructor(private readonly options: ProgressBarOptions) {
    this.stream = options.stream ?? process.stderr;
    this.total = options.total;
    this.label = options.label;
  }

  /** Redraws with `current` of `total` done; `etaSeconds` overrides the bar's own estimate; `info` is appended. */
  update(current: number, info = '', etaSeconds?: number): void {
    const total = Math.max(this.total, 1);
    const fraction = Math.min(Math.max(current / total, 0), 1);
    const elapsed = (Date.now() - this.started) / 1000;
    const eta = etaSeconds ?? (fraction > 0 ? (elapsed * (1 - fraction)) / fraction : undefined);
    const width = this.options.width ?? 24;
    const filled = Math.round(fraction * width);
    const bar = '█'.repeat(filled) + '░'.repeat(width - filled);
    const pct = `${(fraction * 100).toFixed(0).padStart(3)}%`;
    const line = `${this.label} ${bar} ${pct} ${current}/${this.total}${info ? ' ' + info : ''} ETA ${formatDuration(eta)}`;
    if (this.stream.isTTY) {
      const cols = this.stream.columns ?? 120;
      this.stream.write(`\r\x1b[2K${line.slice(0, cols - 1)}`);
      this.drawn = true;
    } else {
      const now = Date.now();
      if (now - this.lastPlain >= (this.options.plainEverySeconds ?? 5) * 1000 || current >= this.total) {
        this.lastPlain = now;
        this.stream.write(line + '\n');
      }
    }
  }

  /** Prints a message above the bar without garbling it. */
  log(message: string): void {
    if (this.stream.isTTY && this.drawn) this.stream.write('\r\x1b[2K');
    this.stream.write(message + '\n');
    this.drawn = false;
  }

  done(): void {
    if (this.stream.isTTY && this.drawn) this.stream.write('\n');
    this.drawn = false;
  }
}

export function formatDuration(seconds: number | undefined): string {
  if (seconds === undefined || !Number.isFinite(seconds)) return '--:--';
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m` : `${m}:${String(sec).padStart(2, '0')}`;
}
