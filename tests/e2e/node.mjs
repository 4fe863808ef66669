// Send events with the unmodified @snowplow/node-tracker to a running collector.
//
//   node node.mjs '{"collector": "http://127.0.0.1:8080", "method": "post", "appId": "n1",
//                   "serverAnonymization": false}'
//
// The tracker is given every identifier it can carry (uid, duid, nuid, sid, vid, ip, ua); Node sends
// them even with serverAnonymization on, so the collector has to drop them. Prints one JSON object.
import { randomUUID } from 'node:crypto';
import { newTracker, buildPageView, buildStructEvent, buildSelfDescribingEvent } from '@snowplow/node-tracker';

const opts = JSON.parse(process.argv[2] ?? '{}');
const ackTimeout = opts.ackTimeoutMs ?? 10000;

const ids = {
  userId: 'node-user-1',
  ip: '203.0.113.9',
  useragent: 'node-e2e/1.0 (+https://example.test)',
  domainUserId: randomUUID(),
  // A signed sp cookie value forwarded by the app (the collector's device), or an unsigned guess.
  networkUserId: opts.networkUserId ?? randomUUID(),
  sessionId: randomUUID(),
  sessionIndex: 3,
};
const result = { ok: false, error: null, ids, expected: 3, acked: 0, eids: [], successes: [], failures: [] };

async function main() {
  const tracker = newTracker(
    { namespace: 'e2e-node', appId: opts.appId, encodeBase64: opts.method === 'get' },
    {
      endpoint: opts.collector,
      eventMethod: opts.method,
      bufferSize: 1,
      // The option that makes the Node tracker send SP-Anonymous: * (tracker-core 4.x spelling).
      serverAnonymization: Boolean(opts.serverAnonymization),
      retryFailedRequests: false,
      onRequestSuccess: (payloads, response) => {
        result.acked += payloads.length;
        result.eids.push(...payloads.map((p) => p.eid));
        result.successes.push({ events: payloads.length, status: response.status });
      },
      onRequestFailure: (failure) => {
        result.failures.push({ status: failure.status ?? null, message: failure.message ?? null });
      },
    },
  );
  tracker.setUserId(ids.userId);
  tracker.setIpAddress(ids.ip);
  tracker.setUseragent(ids.useragent);
  tracker.setDomainUserId(ids.domainUserId);
  tracker.setNetworkUserId(ids.networkUserId);
  tracker.setSessionId(ids.sessionId);
  tracker.setSessionIndex(ids.sessionIndex);

  tracker.track(buildPageView({ pageUrl: 'https://shop.example/checkout?step=1', pageTitle: 'Checkout' }));
  tracker.track(buildStructEvent({ category: 'shop', action: 'order', label: 'o-1', property: 'eur', value: 42 }));
  tracker.track(buildSelfDescribingEvent({
    event: { schema: 'iglu:com.acme/order_placed/jsonschema/1-0-0', data: { orderId: 'o-1', total: 42 } },
  }));
  await tracker.flush();
  // Callbacks run on a timer after each answer: wait for all three (or a failure).
  const deadline = Date.now() + ackTimeout;
  while (result.acked < result.expected && result.failures.length === 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
  }
  result.ok = result.acked === result.expected && result.failures.length === 0;
  if (!result.ok) result.error = `acked ${result.acked}/${result.expected}, failures ${result.failures.length}`;
}

main()
  .catch((e) => {
    result.error = String(e && e.stack ? e.stack : e);
  })
  .finally(() => {
    process.stdout.write(JSON.stringify(result) + '\n');
  });
