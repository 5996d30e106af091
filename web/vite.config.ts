// Builds the web console into dist/web; `weitiao serve` serves that folder at `/`.
//   npx vite build --config web/vite.config.ts
// During development `npx vite --config web/vite.config.ts` proxies /v1 to a running server
// (WEITIAO_API, default http://127.0.0.1:8000).
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import react from '@vitejs/plugin-react';
import { defineConfig } from 'vite';

const here = path.dirname(fileURLToPath(import.meta.url));

export default defineConfig({
  root: here,
  // Relative asset URLs: the console works wherever the server mounts it.
  base: './',
  plugins: [react()],
  build: {
    outDir: path.resolve(here, '../dist/web'),
    emptyOutDir: true,
    sourcemap: false,
  },
  server: {
    proxy: { '/v1': process.env.WEITIAO_API ?? 'http://127.0.0.1:8000' },
  },
});
