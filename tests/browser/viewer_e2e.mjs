// Drives the built viewer in Debian's headless Chromium (playwright-core) and prints what it
// saw as JSON; tests/tests/viewer_browser.rs makes the assertions.
//
//   node viewer_e2e.mjs --dist DIR --query IMAGE --bad NAME[,NAME...] --screenshot PNG
//                       [--unlabeled SUBDIR/] [--demo URL] [--wrong SUBDIR/] [--webgpu 1]
//
// --unlabeled: a second export in DIR/SUBDIR/ (encoder.onnx + samples) of an unlabeled folder
// at another image size, opened with ?model=...&samples=...
// --demo: a demo site (`trainer export --demo`) served elsewhere, e.g. by a plain static server
// without the isolation headers: opened as shipped (map at once, sample check), with the class
// search, and with ?embed=browser (the map grows).
// --wrong: an export whose embeddings.bin does not match its model: the page must say so.
// --webgpu: also open the default export with ?backend=webgpu in a Chromium with WebGPU.
//
// DIR is served on 127.0.0.1 (a free port) with the cross-origin isolation headers of
// viewer/Trunk.toml; nothing else is reached.

import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { extname, join, normalize, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { countFrames } from './frames.mjs';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, a, i, all) => (a.startsWith('--') ? [...pairs, [a.slice(2), all[i + 1]]] : pairs), [])
);
const here = dirname(fileURLToPath(import.meta.url));
// playwright-core is a devDependency of the viewer (viewer/package.json).
const require = createRequire(join(here, '..', '..', 'viewer', 'package.json'));
const { chromium } = require('playwright-core');

// Drops the query image on `page` and waits until it is embedded (or the page shows an error).
async function dropQuery(page) {
  const bytes = [...await readFile(args.query)];
  await page.evaluate(([bytes, name]) => {
    const dt = new DataTransfer();
    dt.items.add(new File([new Uint8Array(bytes)], name, { type: 'image/png' }));
    document.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
  }, [bytes, 'query.png']);
  await page.waitForFunction(() => document.body.dataset.queries === '1' || document.body.dataset.status === 'error', null, { timeout: 45000 });
}

const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.wasm': 'application/wasm', '.css': 'text/css', '.json': 'application/json' };

const server = createServer(async (req, res) => {
  const path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname)).replace(/^(\.\.[/\\])+/, '');
  const file = join(args.dist, path.endsWith('/') ? path + 'index.html' : path);
  try {
    const body = await readFile(file);
    res.writeHead(200, {
      'Content-Type': TYPES[extname(file)] || 'application/octet-stream',
      'Cross-Origin-Opener-Policy': 'same-origin',
      'Cross-Origin-Embedder-Policy': 'require-corp',
    });
    res.end(body);
  } catch {
    res.writeHead(404);
    res.end('not found');
  }
});
await new Promise(resolve => server.listen(0, '127.0.0.1', resolve));
const base = `http://127.0.0.1:${server.address().port}/`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const result = { console: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.on('console', m => result.console.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', e => result.console.push(`pageerror: ${e.message}`));

  // 1. The default model and samples: wait for the finished map.
  const t0 = Date.now();
  await page.goto(base);
  await page.waitForFunction(() => ['ready', 'error'].includes(document.body.dataset.status), null, { timeout: 240000 });
  result.seconds_to_ready = (Date.now() - t0) / 1000;
  Object.assign(result, await page.evaluate(() => ({
    status: document.body.dataset.status,
    points: Number(document.body.dataset.points),
    tsne_frames: Number(document.body.dataset.mapFrames || 0),
    message: document.getElementById('message').textContent,
    crossOriginIsolated: window.crossOriginIsolated,
    dim: window.selfsupViewer ? window.selfsupViewer.dim : 0,
    first8: window.selfsupViewer ? Array.from(window.selfsupViewer.embeddings.slice(0, 8 * window.selfsupViewer.dim)) : [],
    timings: window.selfsupViewer ? window.selfsupViewer.timings : null,
  })));

  // 2. Click a point: its neighbours are listed.
  if (result.status === 'ready') {
    const box = await page.locator('#map').boundingBox();
    // The page says where one of its drawn points is.
    const spot = await page.evaluate(() => (document.body.dataset.pointAt || '').split(',').map(Number));
    result.renderer = await page.evaluate(() => document.body.dataset.renderer);
    if (spot.length === 2) {
      await page.mouse.click(box.x + spot[0], box.y + spot[1]);
      result.clicked_neighbours = await page.locator('#selection figure.neighbour').count();
    }
    // 3. Drop an image on the page: it is embedded and gets neighbours.
    await dropQuery(page);
    result.query_neighbours = await page.locator('#queries .query figure.neighbour').count();
    result.query_status = await page.evaluate(() => document.body.dataset.status);
    result.tsne_coords = await page.evaluate(() => Array.from(window.selfsupViewer.coords));
    // UMAP instead of t-SNE: computed in the worker, animated, then ready.
    await page.click('#mode-umap');
    await page.waitForFunction(() => document.body.dataset.status === 'projecting', null, { timeout: 10000 }).catch(() => {});
    await page.waitForFunction(() => ['ready', 'error'].includes(document.body.dataset.status), null, { timeout: 240000 });
    result.umap = await page.evaluate(() => ({
      status: document.body.dataset.status,
      frames: Number(document.body.dataset.mapFrames || 0),
      seconds: window.selfsupViewer.timings.umap_s,
      coords: Array.from(window.selfsupViewer.coords),
      progress: document.getElementById('progress-text').textContent,
      message: document.getElementById('message').textContent,
    }));
    // The map as dots, then each point as its image (WebGL sprites from the atlas).
    await page.locator('main').screenshot({ path: `${args.screenshot}.dots.png` });
    await page.check('#images-on-map');
    await page.locator('main').screenshot({ path: `${args.screenshot}.images.png` });
    await page.screenshot({ path: args.screenshot });
  }

  // 4. Bad models (comma-separated names in assets/): a clear message on the page, in seconds.
  result.bad_models = {};
  for (const name of args.bad.split(',')) {
    const t1 = Date.now();
    await page.goto(`${base}?model=assets/${name}`);
    await page.waitForFunction(() => document.body.dataset.status === 'error', null, { timeout: 45000 });
    result.bad_models[name] = {
      seconds: (Date.now() - t1) / 1000,
      message: await page.evaluate(() => document.getElementById('message').textContent),
    };
  }

  // 5. ONNX Runtime Web's script cannot be loaded: a message, not a page that hangs.
  const broken = await browser.newPage();
  await broken.route('**/ort/ort.wasm.min.js', route => route.fulfill({ status: 404, body: 'gone' }));
  const t2 = Date.now();
  await broken.goto(base);
  await broken.waitForFunction(() => document.body.dataset.status === 'error', null, { timeout: 45000 });
  result.runtime_missing = {
    seconds: (Date.now() - t2) / 1000,
    message: await broken.evaluate(() => document.getElementById('message').textContent),
  };

  // 6. An unlabeled folder's export at its own image size: embedded, mapped and queried.
  if (args.unlabeled) {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    page.on('pageerror', e => result.console.push(`unlabeled pageerror: ${e.message}`));
    const u = args.unlabeled;
    await page.goto(`${base}?model=${u}encoder.onnx&samples=${u}`);
    await page.waitForFunction(() => ['ready', 'error'].includes(document.body.dataset.status), null, { timeout: 240000 });
    const seen = await page.evaluate(() => ({
      status: document.body.dataset.status,
      points: Number(document.body.dataset.points),
      message: document.getElementById('message').textContent,
      legend: document.getElementById('legend').textContent,
      model_name: document.getElementById('model-name').textContent,
      dim: window.selfsupViewer ? window.selfsupViewer.dim : 0,
      first8: window.selfsupViewer ? Array.from(window.selfsupViewer.embeddings.slice(0, 8 * window.selfsupViewer.dim)) : [],
    }));
    if (seen.status === 'ready') {
      await dropQuery(page);
      seen.query_status = await page.evaluate(() => document.body.dataset.status);
      seen.query_message = await page.evaluate(() => document.getElementById('message').textContent);
      seen.query_neighbours = await page.locator('#queries .query figure.neighbour').count();
      seen.query_captions = await page.locator('#queries .query figure.neighbour figcaption').allTextContents();
    }
    result.unlabeled = seen;
    await page.close();
  }

  // 7. The demo export: every point from the shipped embeddings at once, checked here.
  if (args.demo) {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    page.on('pageerror', e => result.console.push(`demo pageerror: ${e.message}`));
    await page.goto(args.demo);
    await page.waitForFunction(() => document.body.dataset.sampleCheck || document.body.dataset.status === 'error', null, { timeout: 120000 });
    const seen = await page.evaluate(() => ({
      status: document.body.dataset.status,
      points: Number(document.body.dataset.points),
      visible: Number(document.body.dataset.visiblePoints),
      all_points_ms: Number(document.body.dataset.allPointsMs || 0),
      sample_check: document.body.dataset.sampleCheck,
      message: document.getElementById('message').textContent,
      threads: Number(document.body.dataset.threads),
      backend: document.getElementById('backend').textContent,
      isolated: window.crossOriginIsolated,
      check: window.selfsupViewer && window.selfsupViewer.sample_check ? {
        max_diff: window.selfsupViewer.sample_check.max_diff,
        tolerance: window.selfsupViewer.sample_check.tolerance,
        indices: Array.from(window.selfsupViewer.sample_check.indices),
      } : null,
      dim: window.selfsupViewer ? window.selfsupViewer.dim : 0,
      first8: window.selfsupViewer ? Array.from(window.selfsupViewer.embeddings.slice(0, 8 * window.selfsupViewer.dim)) : [],
    }));
    // Hover picking among 10,000 points: the tooltip shows the image under the pointer (on
    // the PCA layout, which t-SNE's frames do not move under the pointer).
    await page.click('#mode-pca');
    const box = await page.locator('#map').boundingBox();
    const spot = await page.evaluate(() => (document.body.dataset.pointAt || '').split(',').map(Number));
    if (spot.length === 2) {
      const t = Date.now();
      await page.mouse.move(box.x + spot[0], box.y + spot[1]);
      await page.waitForFunction(() => !document.getElementById('tooltip').hidden, null, { timeout: 10000 });
      seen.hover_ms = Date.now() - t;
      seen.hover_caption = await page.locator('#tooltip figcaption').textContent();
    }
    // Search by class name, then a legend click hides one class.
    await page.fill('#search', 'cat');
    seen.visible_cat = Number(await page.evaluate(() => document.body.dataset.visiblePoints));
    await page.fill('#search', '');
    await page.click('#class-0');
    seen.visible_without_class0 = Number(await page.evaluate(() => document.body.dataset.visiblePoints));
    result.demo = seen;
    await page.close();

    // The same export embedded in the browser: the map grows batch by batch.
    const live = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    live.on('pageerror', e => result.console.push(`live pageerror: ${e.message}`));
    // Frames the page painted while it embedded, and the longest wait between two of them.
    await live.addInitScript(countFrames);
    await live.goto(`${args.demo}?embed=browser`);
    await live.waitForFunction(() => document.body.dataset.firstPointsMs || document.body.dataset.status === 'error', null, { timeout: 120000 });
    const partial = await live.evaluate(() => Number(document.body.dataset.points));
    await live.waitForFunction(() => document.body.dataset.allPointsMs || document.body.dataset.status === 'error', null, { timeout: 400000 });
    result.live = await live.evaluate(() => ({
      status: document.body.dataset.status,
      points: Number(document.body.dataset.points),
      first_points_ms: Number(document.body.dataset.firstPointsMs || 0),
      all_points_ms: Number(document.body.dataset.allPointsMs || 0),
      message: document.getElementById('message').textContent,
      progress: document.getElementById('progress-text').textContent,
      ms_per_image: window.selfsupViewer ? window.selfsupViewer.timings.ms_per_image : null,
      frames: window.__frames,
      map_frames_while_embedding: Number(document.body.dataset.mapFramesWhileEmbedding || 0),
    }));
    result.live.points_at_first_draw = partial;
    await live.close();
  }

  // 8. Shipped embeddings of another model: an error on the page, not a wrong map.
  if (args.wrong) {
    const page = await browser.newPage();
    await page.goto(`${base}?model=${args.wrong}encoder.onnx&samples=${args.wrong}`);
    await page.waitForFunction(() => document.body.dataset.status === 'error', null, { timeout: 120000 });
    result.wrong = await page.evaluate(() => ({
      sample_check: document.body.dataset.sampleCheck,
      message: document.getElementById('message').textContent,
    }));
    await page.close();
  }

  // 9. WebGPU (SwiftShader in headless Chromium: correctness only). Asked for with
  // ?backend=webgpu; left to choose, the page keeps wasm on a software adapter.
  if (args.webgpu) {
    const gpuBrowser = await chromium.launch({
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
      args: ['--headless', '--no-sandbox', '--enable-unsafe-webgpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    try {
      const page = await gpuBrowser.newPage();
      page.on('pageerror', e => result.console.push(`webgpu pageerror: ${e.message}`));
      page.on('console', m => result.console.push(`webgpu ${m.type()}: ${m.text()}`));
      await page.goto(`${base}?backend=webgpu`);
      await page.waitForFunction(() => ['ready', 'error'].includes(document.body.dataset.status), null, { timeout: 400000 });
      result.webgpu = await page.evaluate(() => ({
        status: document.body.dataset.status,
        points: Number(document.body.dataset.points),
        backend: document.body.dataset.backend,
        backend_text: document.getElementById('backend').textContent,
        device_started: !!(window.ort && window.ort.env.webgpu && window.ort.env.webgpu.device),
        message: document.getElementById('message').textContent,
        dim: window.selfsupViewer ? window.selfsupViewer.dim : 0,
        first8: window.selfsupViewer ? Array.from(window.selfsupViewer.embeddings.slice(0, 8 * window.selfsupViewer.dim)) : [],
        ms_per_image: window.selfsupViewer ? window.selfsupViewer.timings.ms_per_image : null,
      }));
      await page.goto(base);
      await page.waitForFunction(() => document.body.dataset.backend || document.body.dataset.status === 'error', null, { timeout: 60000 });
      result.webgpu.auto_backend = await page.evaluate(() => document.body.dataset.backend);
    } finally {
      await gpuBrowser.close();
    }
  }
} catch (e) {
  result.failure = String(e && e.stack || e);
} finally {
  await browser.close();
  server.close();
}
console.log(JSON.stringify(result));
