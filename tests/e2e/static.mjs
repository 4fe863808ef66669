// A tiny static server for the test page: it gives the page an origin other than the collector's,
// so the browser applies CORS with credentials to every tracker request.
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

// The minified UMD bundle is the file a site would put in a <script> tag; it defines
// window.snowplowBrowserTracking.
export const TRACKER_BUNDLE = join(here, 'node_modules/@snowplow/browser-tracker/dist/index.umd.min.js');

const ROUTES = {
  '/sp.js': [TRACKER_BUNDLE, 'text/javascript; charset=utf-8'],
  '/page.html': [join(here, 'web/page.html'), 'text/html; charset=utf-8'],
  '/page2.html': [join(here, 'web/page.html'), 'text/html; charset=utf-8'],
};

/** Listen on host:port (0: any free port) and resolve to {server, origin}. */
export function startStatic(host = '127.0.0.1', port = 0) {
  const server = createServer(async (req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    if (path === '/favicon.ico') {
      res.writeHead(204).end(); // no icon, and no 404 console error for the tests to trip on
      return;
    }
    const route = ROUTES[path];
    if (!route) {
      res.writeHead(404).end();
      return;
    }
    const body = await readFile(route[0]);
    res.writeHead(200, { 'Content-Type': route[1], 'Cache-Control': 'no-store' }).end(body);
  });
  return new Promise((resolve) => {
    server.listen(port, host, () => resolve({ server, origin: `http://${host}:${server.address().port}` }));
  });
}
