// Counts the frames a page paints while it embeds, and the longest wait between two of them,
// into window.__frames (a page init script: playwright's page.addInitScript(countFrames)).
// Shared by tests/browser/viewer_e2e.mjs and bench/viewer_timing.mjs.
export function countFrames() {
  window.__frames = { during: 0, longest_gap_ms: 0 };
  let last = performance.now();
  const tick = t => {
    if (document.body && document.body.dataset.status === 'embedding') {
      window.__frames.during += 1;
      window.__frames.longest_gap_ms = Math.max(window.__frames.longest_gap_ms, t - last);
    }
    last = t;
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}
