// Drive `python -m collector browse` (Datasette) in headless Chromium, as an analyst would.
//
//   node analysts.mjs '{"browse": "http://127.0.0.1:8081", "db": "events", "screenshot": "/tmp/x.png"}'
//
// Opens the overview dashboard and waits for its vega-lite charts to draw, saves a screenshot, runs
// the top_pages canned query, then types a DELETE into the SQL box and runs it. Prints one JSON object
// with what the page showed; the pytest side asserts on it.
import { chromium } from 'playwright-core';

const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

const opts = JSON.parse(process.argv[2] ?? '{}');
const base = opts.browse.replace(/\/$/, '');
const db = opts.db ?? 'events';
const result = {
  ok: false, error: null, charts: 0, chartTitles: [], metric: null, topPages: [], sqlBox: null,
  afterDelete: null, consoleErrors: [], pageErrors: [], requestsFailed: [], external: [],
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium', args: CHROMIUM_ARGS,
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
  page.on('console', (m) => { if (m.type() === 'error') result.consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => result.pageErrors.push(String(e)));
  page.on('requestfailed', (r) => result.requestsFailed.push(`${r.url()} ${r.failure()?.errorText}`));
  page.on('request', (r) => { if (!r.url().startsWith(base)) result.external.push(r.url()); });

  await page.goto(`${base}/-/dashboards/overview`);
  // every vega-lite chart draws an svg (or a canvas) inside its .vega-embed container
  await page.waitForFunction(
    () => document.querySelectorAll('.vega-embed svg, .vega-embed canvas').length >= 4,
    null, { timeout: 30000 },
  );
  result.charts = await page.locator('.vega-embed svg, .vega-embed canvas').count();
  result.chartTitles = (await page.locator('.dashboard-card-title').allInnerTexts()).map((t) => t.trim());
  result.metric = await page.locator('body').innerText(); // the Events metric card is plain text
  await page.waitForTimeout(500); // vega's transitions: a settled picture for the README
  if (opts.screenshot) await page.screenshot({ path: opts.screenshot, fullPage: true });

  await page.goto(`${base}/${db}/top_pages`);
  result.topPages = await page.locator('table.rows-and-columns tbody tr').evaluateAll(
    (rows) => rows.map((r) => [...r.querySelectorAll('td')].map((td) => td.innerText.trim())),
  );

  // the SQL box: CodeMirror 5 over the textarea; select what is there, type a write, run it
  await page.goto(`${base}/${db}`);
  await page.locator('.CodeMirror').click();
  await page.keyboard.press('Control+A');
  await page.keyboard.type('delete from events');
  result.sqlBox = await page.evaluate(() => document.querySelector('.CodeMirror').CodeMirror.getValue());
  await page.locator('input[type=submit][value="Run SQL"]').click();
  await page.waitForLoadState('load');
  result.afterDelete = {
    url: page.url(),
    message: await page.locator('body').innerText(),
  };
  result.ok = true;
} catch (err) {
  result.error = String(err?.stack ?? err);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
