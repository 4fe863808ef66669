// Drive the unmodified @snowplow/browser-tracker in headless Chromium against a running collector.
//
//   node browser.mjs '{"collector": "http://127.0.0.1:8080", "scenario": "normal", "appId": "t1",
//                      "method": "post"}'
//
// With "gpc": true every request the browser makes carries `Sec-GPC: 1` (Global Privacy Control);
// "headers": {name: value} adds other headers to every request the same way.
// Prints one JSON object on stdout: what the browser saw (tracker requests with their Cookie,
// SP-Anonymous, Sec-GPC and Set-Cookie headers, the cookie jar at named marks, console errors, tracker
// failure callbacks). The pytest side asserts on it and on the rows in the store.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { startStatic } from './static.mjs';

const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

const opts = JSON.parse(process.argv[2] ?? '{}');
const collector = opts.collector.replace(/\/$/, '');
const method = opts.method ?? 'post';
const appId = opts.appId ?? `e2e-${opts.scenario}-${method}`;
// How long to wait for the tracker to report one event as sent; generous, only hit on failure.
const ackTimeout = opts.ackTimeoutMs ?? 10000;

const result = {
  scenario: opts.scenario, method, appId, collector, ok: false, error: null,
  pageOrigin: null, requests: [], marks: {}, consoleErrors: [], pageErrors: [],
  requestsFailed: [], trackerFailures: [], expected: 0,
  eids: [], // event ids in the order the collector acknowledged them, across page loads
};

/** The tracker config every scenario starts from: one event per request, so each is acked alone. */
function trackerConfig(extra = {}) {
  return {
    appId, eventMethod: method, encodeBase64: method === 'get', bufferSize: 1,
    // Short timeout and no retry storms: a failure must show up quickly in the callbacks.
    connectionTimeout: 5000, ...extra,
  };
}

class Scenario {
  constructor(context, page, origin) {
    this.context = context;
    this.page = page;
    this.origin = origin;
    this.expected = 0; // events the tracker must acknowledge on the current page
    this.earlierPages = []; // event ids acknowledged on earlier page loads
  }

  async open(path, config) {
    this.earlierPages = [...result.eids];
    await this.page.goto(this.origin + path);
    this.expected = 0;
    await this.page.evaluate(([url, cfg]) => window.e2eInit(url, cfg), [collector, trackerConfig(config)]);
  }

  call(fn, ...args) {
    return this.page.evaluate(([f, a]) => window.snowplowBrowserTracking[f](...a), [fn, args]);
  }

  /** Track one event and wait until the tracker's onRequestSuccess has seen it (or a failure). */
  async track(fn, ...args) {
    this.expected += 1;
    result.expected += 1;
    await this.call(fn, ...args);
    await this.page.waitForFunction(
      (n) => window.e2e.acked >= n || window.e2e.failures.length > 0, this.expected,
      { timeout: ackTimeout },
    );
    const state = await this.page.evaluate(() => window.e2e);
    result.eids = [...this.earlierPages, ...state.eids];
    result.trackerFailures.push(...state.failures);
    if (state.failures.length > 0) {
      throw new Error(`tracker reported a failed request: ${JSON.stringify(state.failures[0])}`);
    }
  }

  /** From now on every request of the page carries `Sec-GPC: 1`, as a browser with GPC on sends it. */
  async sendGpc() {
    await this.context.setExtraHTTPHeaders({ ...EXTRA_HEADERS, ...GPC_HEADERS });
  }

  /** Record the browser's cookie jar for the collector's origin under a label. */
  async mark(label) {
    // The whole jar, filtered here: some playwright-core versions drop Secure cookies from
    // cookies(url) when the URL is http://127.0.0.1, although Chromium stores and sends them.
    const host = new URL(collector).hostname;
    const jar = await this.context.cookies();
    result.marks[label] = { sp: jar.find((c) => c.name === 'sp' && c.domain === host) ?? null };
  }
}

// Global Privacy Control (https://privacycg.github.io/gpc-spec/): the header a browser with GPC on
// adds to every request. Chromium has no GPC setting, so playwright adds it at the network layer.
const GPC_HEADERS = { 'Sec-GPC': '1' };
// Headers every request carries from the start: Sec-GPC with "gpc": true, and any in "headers".
const EXTRA_HEADERS = { ...(opts.gpc ? GPC_HEADERS : {}), ...(opts.headers ?? {}) };
// The user the gpc scenarios log in, so two runs on one store can be told apart.
const GPC_USER = opts.userId ?? 'user-gpc';

const pageView = (title) => ['trackPageView', { title }];
const structEvent = (action, label) => ['trackStructEvent', {
  category: 'shop', action, label, property: 'red', value: 2,
}];
const selfDescribing = (name, data) => ['trackSelfDescribingEvent', {
  event: { schema: `iglu:com.acme/${name}/jsonschema/1-0-0`, data },
}];

// The tracker's client_session entity on every identified event: it repeats duid (userId) and sid
// (sessionId) inside contexts, with previousSessionId, firstEventId and the session count.
const SESSION_CONTEXT = { contexts: { session: true, webPage: true } };

const SCENARIOS = {
  // Identified browsing: the collector's sp cookie comes back on every later request.
  async normal(s) {
    await s.open('/page.html', {});
    await s.mark('start');
    await s.track(...pageView('home'));
    await s.mark('after_first');
    await s.call('setUserId', 'user-normal');
    await s.track(...structEvent('add-to-basket', 'sku-1'));
    await s.track(...selfDescribing('button_click', { id: 'buy' }));
    await s.open('/page2.html', {}); // a second page load reuses the cookies
    await s.call('setUserId', 'user-normal'); // a site sets the user id on every page load
    await s.track(...pageView('checkout'));
    await s.mark('end');
  },

  // Server-side anonymisation from the first event on: no cookie may ever be set.
  async anonymous(s) {
    await s.open('/page.html', { anonymousTracking: { withServerAnonymisation: true } });
    await s.call('setUserId', 'user-anon');
    await s.track(...pageView('home'));
    await s.track(...structEvent('add-to-basket', 'sku-2'));
    await s.track(...selfDescribing('button_click', { id: 'buy' }));
    await s.mark('end');
  },

  // Identified, then anonymous (the old cookie still goes out with SP-Anonymous), then identified.
  async toggle(s) {
    await s.open('/page.html', {});
    await s.track(...pageView('before-consent-withdrawn'));
    await s.mark('identified');
    await s.call('enableAnonymousTracking', { options: { withServerAnonymisation: true } });
    await s.track(...pageView('anonymous-1'));
    await s.track(...structEvent('browse', 'anonymous-2'));
    await s.mark('anonymous');
    await s.call('disableAnonymousTracking');
    await s.track(...pageView('identified-again'));
    await s.mark('end');
  },

  // Alice logs out: the anonymize event rotates the device, clearUserData resets the tracker's ids.
  async logout(s) {
    await s.open('/page.html', {});
    await s.call('setUserId', 'alice');
    await s.track(...pageView('account'));
    await s.mark('alice');
    await s.track(...structEvent('logged out', 'alice'));
    await s.track(...selfDescribing('anonymize', { reason: 'logout' }));
    await s.mark('after_anonymize');
    await s.call('clearUserData');
    await s.track(...pageView('after-logout'));
    await s.open('/page2.html', {}); // continue browsing on another page
    await s.track(...pageView('browsing'));
    await s.call('setUserId', 'bob');
    await s.track(...pageView('bob-home'));
    await s.track(...structEvent('add-to-basket', 'sku-3'));
    await s.mark('end');
  },

  // An identified tracker (no anonymous tracking of its own) in a browser that sends Sec-GPC: 1 on
  // every request when opts.gpc is set: whatever the collector does, it must do it on its own.
  async gpc(s) {
    await s.open('/page.html', {});
    await s.mark('start');
    await s.call('setUserId', GPC_USER);
    await s.track(...pageView('home'));
    await s.mark('after_first');
    await s.track(...structEvent('add-to-basket', 'sku-gpc'));
    await s.open('/page2.html', {}); // a second page load, as in normal
    await s.call('setUserId', GPC_USER);
    await s.track(...pageView('checkout'));
    await s.mark('end');
  },

  // The visitor turns GPC on after the collector set its cookie: the old cookie goes out with Sec-GPC.
  async gpc_later(s) {
    await s.open('/page.html', {});
    await s.call('setUserId', GPC_USER);
    await s.track(...pageView('before-gpc'));
    await s.mark('identified');
    await s.sendGpc();
    await s.track(...pageView('gpc-1'));
    await s.track(...structEvent('browse', 'gpc-2'));
    await s.mark('end');
  },

  // The app logs out but forgets clearUserData: the tracker keeps sending the old device's
  // duid and sid after the anonymize event, and the collector must not keep them.
  async logout_without_clear(s) {
    await s.open('/page.html', {});
    await s.call('setUserId', 'carol');
    await s.track(...pageView('account'));
    await s.track(...selfDescribing('anonymize', { reason: 'logout' }));
    await s.mark('after_anonymize');
    await s.call('setUserId', null);
    await s.track(...pageView('after-logout'));
    await s.track(...structEvent('browse', 'sku-4'));
    await s.mark('end');
  },

  // toggle with the session entity on. newSession() stands for a visit after 30 idle minutes: the old
  // device reaches vid 2 and a previousSessionId, history a new device must not continue.
  async toggle_session(s) {
    await s.open('/page.html', SESSION_CONTEXT);
    await s.track(...pageView('identified-1'));
    await s.call('newSession');
    await s.track(...pageView('identified-2'));
    await s.track(...structEvent('browse', 'identified-3'));
    await s.mark('identified');
    await s.call('enableAnonymousTracking', { options: { withServerAnonymisation: true } });
    await s.track(...pageView('anonymous-1'));
    await s.track(...structEvent('browse', 'anonymous-2'));
    await s.mark('anonymous');
    await s.call('disableAnonymousTracking'); // the tracker resumes its old id cookie
    await s.track(...pageView('identified-again'));
    await s.track(...structEvent('browse', 'identified-again-2'));
    await s.mark('end');
  },

  // Alice logs out (anonymize event) but the app forgets clearUserData, then Bob logs in: with the
  // session entity on, the tracker keeps sending the old device's session in contexts too.
  async logout_session(s) {
    await s.open('/page.html', SESSION_CONTEXT);
    await s.call('setUserId', 'alice');
    await s.track(...pageView('account'));
    await s.call('newSession');
    await s.track(...pageView('orders'));
    await s.mark('alice');
    await s.track(...structEvent('logged out', 'alice'));
    await s.track(...selfDescribing('anonymize', { reason: 'logout' }));
    await s.mark('after_anonymize');
    await s.call('setUserId', null);
    await s.track(...pageView('after-logout'));
    await s.open('/page2.html', SESSION_CONTEXT); // Bob logs in on the next page load
    await s.call('setUserId', 'bob');
    await s.track(...pageView('bob-home'));
    await s.track(...structEvent('add-to-basket', 'sku-5'));
    await s.mark('end');
  },
};

/** The data of the client_session entity an event carried in `co` or base64url `cx`, else null. */
function sentClientSession(event) {
  try {
    const text = event.co ?? (event.cx ? Buffer.from(event.cx, 'base64url').toString('utf8') : null);
    const entities = text ? JSON.parse(text).data ?? [] : [];
    return entities.find((c) => String(c.schema).includes('/client_session/'))?.data ?? null;
  } catch {
    return null;
  }
}

async function collectRequest(request) {
  if (!request.url().startsWith(collector + '/')) return;
  const response = await request.response();
  const headers = await request.allHeaders();
  const setCookies = response
    ? (await response.headersArray()).filter((h) => h.name.toLowerCase() === 'set-cookie').map((h) => h.value)
    : [];
  const url = new URL(request.url());
  // The tracker-side ids each event carried, to tell what the tracker sent from what was stored.
  let events = [Object.fromEntries(url.searchParams)];
  if (request.method() === 'POST') {
    try {
      events = JSON.parse(request.postData() ?? '{}').data ?? [];
    } catch {
      events = [];
    }
  }
  result.requests.push({
    sent: events.map((e) => ({
      duid: e.duid ?? null, sid: e.sid ?? null, uid: e.uid ?? null, session: sentClientSession(e),
    })),
    method: request.method(),
    path: url.pathname,
    spAnonymous: headers['sp-anonymous'] ?? null,
    gpc: headers['sec-gpc'] ?? null, // what went out on the wire (Chromium reports the sent headers)
    cookie: headers.cookie ?? null,
    status: response ? response.status() : null,
    allowOrigin: response ? await response.headerValue('access-control-allow-origin') : null,
    contentType: response ? await response.headerValue('content-type') : null,
    setCookie: setCookies,
  });
}

async function main() {
  const scenario = SCENARIOS[opts.scenario];
  if (!scenario) throw new Error(`unknown scenario ${opts.scenario}`);
  const { server, origin } = await startStatic(opts.pageHost ?? '127.0.0.1', opts.pagePort ?? 0);
  result.pageOrigin = origin;
  // A fresh profile every run: no cookie or localStorage from an earlier scenario.
  const profile = await mkdtemp(join(tmpdir(), 'e2e-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: opts.chromium ?? '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
  });
  const pending = [];
  try {
    if (Object.keys(EXTRA_HEADERS).length > 0) await context.setExtraHTTPHeaders(EXTRA_HEADERS);
    context.on('requestfinished', (r) => pending.push(collectRequest(r)));
    context.on('requestfailed', (r) => {
      if (r.url().startsWith(collector + '/')) {
        result.requestsFailed.push({ method: r.method(), url: r.url(), error: r.failure()?.errorText });
      }
    });
    const page = context.pages()[0] ?? (await context.newPage());
    page.on('console', (m) => {
      if (m.type() === 'error') result.consoleErrors.push(m.text());
    });
    page.on('pageerror', (e) => result.pageErrors.push(String(e)));
    const s = new Scenario(context, page, origin);
    try {
      await scenario(s);
      result.ok = true;
    } catch (e) {
      result.error = String(e && e.message ? e.message : e);
      // Give the browser a moment to log the CORS error that usually explains the failure.
      await page.waitForTimeout(500);
      const state = await page.evaluate(() => window.e2e).catch(() => null);
      if (state) result.trackerFailures = state.failures;
    }
    await Promise.allSettled(pending);
  } finally {
    await context.close();
    server.close();
    await rm(profile, { recursive: true, force: true });
  }
}

main()
  .catch((e) => {
    result.error = String(e && e.stack ? e.stack : e);
  })
  .finally(() => {
    process.stdout.write(JSON.stringify(result) + '\n');
  });
