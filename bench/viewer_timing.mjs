// Times the viewer page on a demo site (`trainer export --demo DIR`) in Debian's headless
// Chromium: how soon the map is there from the shipped embeddings (with and without the
// cross-origin isolation headers), and how the map grows when the browser embeds the images
// itself (first points, images per second, the longest wait between two painted frames), and
// how long t-SNE of every point takes in the page's worker.
//
//   node bench/viewer_timing.mjs --site DIR [--seconds 30]
//
// Needs viewer/node_modules (npm ci in viewer/). Prints one JSON line.

import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { extname, join, normalize, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { countFrames } from '../tests/browser/frames.mjs';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, a, i, all) => (a.startsWith('--') ? [...pairs, [a.slice(2), all[i + 1]]] : pairs), [])
);
if (!args.site) {
  console.error('usage: node bench/viewer_timing.mjs --site DIR [--seconds 30]');
  process.exit(2);
}
const seconds = Number(args.seconds || 30);
const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, '..', 'viewer', 'package.json'));
const { chromium } = require('playwright-core');
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.wasm': 'application/wasm', '.css': 'text/css', '.json': 'application/json' };

async function serve(isolated) {
  const server = createServer(async (req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname)).replace(/^(\.\.[/\\])+/, '');
    const file = join(args.site, path.endsWith('/') ? path + 'index.html' : path);
    try {
      const body = await readFile(file);
      const headers = { 'Content-Type': TYPES[extname(file)] || 'application/octet-stream' };
      if (isolated) {
        headers['Cross-Origin-Opener-Policy'] = 'same-origin';
        headers['Cross-Origin-Embedder-Policy'] = 'require-corp';
      }
      res.writeHead(200, headers);
      res.end(body);
    } catch {
      res.writeHead(404);
      res.end('not found');
    }
  });
  await new Promise(resolve => server.listen(0, '127.0.0.1', resolve));
  return { server, base: `http://127.0.0.1:${server.address().port}/` };
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const result = {};
const servers = [];
try {
  for (const isolated of [false, true]) {
    const { server, base } = await serve(isolated);
    servers.push(server);
    const name = isolated ? 'isolated' : 'plain';
    // The map from the shipped embeddings, then the sample check.
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    await page.goto(base);
    await page.waitForFunction(() => document.body.dataset.sampleCheck || document.body.dataset.status === 'error', null, { timeout: 600000 });
    result[`shipped_${name}`] = await page.evaluate(() => ({
      status: document.body.dataset.status,
      points: Number(document.body.dataset.points),
      map_ms: Number(document.body.dataset.allPointsMs || 0),
      check_done_ms: performance.now(),
      sample_check: document.body.dataset.sampleCheck,
      backend: document.getElementById('backend').textContent,
      message: document.getElementById('message').textContent,
    }));
    await page.close();
    if (isolated) {
      // t-SNE and UMAP of every point, in the page's worker, from the shipped embeddings.
      for (const map of ['tsne', 'umap']) {
        const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
        await page.goto(`${base}?map=${map}`);
        await page.waitForFunction(() => ['ready', 'error'].includes(document.body.dataset.status), null, { timeout: 900000, polling: 1000 });
        result[`${map}_s`] = await page.evaluate(m => window.selfsupViewer.timings[`${m}_s`], map);
        await page.close();
      }
    }
    if (!isolated) continue;
    // In-browser embedding: the first points, then how far it got after `seconds`.
    const live = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    await live.addInitScript(countFrames);
    await live.goto(`${base}?embed=browser`);
    await live.waitForFunction(() => document.body.dataset.firstPointsMs || document.body.dataset.status === 'error', null, { timeout: 600000 });
    const first = await live.evaluate(() => Number(document.body.dataset.firstPointsMs));
    await live.waitForTimeout(seconds * 1000);
    result.browser_embedding = await live.evaluate(() => ({
      first_points_ms: Number(document.body.dataset.firstPointsMs),
      points_drawn: Number(document.body.dataset.points),
      progress: document.getElementById('progress-text').textContent,
      frames: window.__frames,
    }));
    result.browser_embedding.first_points_ms = first;
    result.browser_embedding.watched_s = seconds;
    await live.close();
  }
} catch (e) {
  result.failure = String(e && e.stack || e);
} finally {
  await browser.close();
  servers.forEach(s => s.close());
}
console.log(JSON.stringify(result));
