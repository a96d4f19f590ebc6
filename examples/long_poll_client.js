// sidestream long-poll client: browser and Node (>= 18, global fetch), no dependencies.
//
//   const poll = sidestreamLongPoll("/api/prices/AAPL", { onMessage: (m) => console.log(m) });
//   poll.stop();
//
// It loops with the topic's cursor so no message falls between two polls, and backs off
// with full jitter (1 s doubling to 30 s) on network errors and 5xx. Each message is
// { id, event, data, contentType }: for state topics `data` is the body as text, for event
// topics it is the message's data as the server sent it in the JSON batch.
//
// With `deltas: true` (a state topic with `deltas = true`) it asks for `?delta=json-patch`: an
// answer is then either the full state or an RFC 6902 patch from the state it holds
// (`application/json-patch+json`), applied here; `poll.document` is the current document and
// each message also carries it as `document`. Needs examples/json_patch.js (loaded first in a
// page; Node requires it itself).
(function (root) {
  "use strict";

  const patches =
    root.sidestreamJsonPatch ||
    (typeof require === "function" ? require("./json_patch.js") : null);

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  function stripEtag(etag) {
    return etag ? etag.replace(/^W\//, "").replace(/^"|"$/g, "") : null;
  }

  function sidestreamLongPoll(url, options) {
    const opts = options || {};
    const onMessage = opts.onMessage || function () {};
    const onReset = opts.onReset || function () {};
    const onError = opts.onError || function () {};
    const waitSeconds = opts.waitSeconds || 25;
    const fetchImpl = opts.fetch || root.fetch.bind(root);
    const base = typeof location !== "undefined" ? location.href : undefined;
    let cursor = opts.cursor || null;
    let document;
    let stopped = false;
    let failures = 0;

    async function loop() {
      while (!stopped) {
        const target = new URL(url, base);
        target.searchParams.set("wait", String(waitSeconds));
        if (cursor) target.searchParams.set("cursor", cursor);
        if (opts.deltas) target.searchParams.set("delta", "json-patch");
        try {
          const response = await fetchImpl(target.toString(), { cache: "no-store" });
          if (response.status === 304) {
            failures = 0;
            continue;
          }
          if (response.status === 200) {
            failures = 0;
            if (response.headers.get("X-Sidestream-Mode") === "events") {
              const batch = await response.json();
              if (batch.reset) onReset(batch);
              for (const message of batch.messages) onMessage(message);
              cursor = batch.cursor;
            } else if (opts.deltas) {
              const contentType = response.headers.get("Content-Type") || "";
              const body = await response.json();
              try {
                document = contentType.startsWith("application/json-patch+json")
                  ? patches.applyJsonPatch(document, body)
                  : body;
              } catch (error) {
                // Cannot happen unless something broke on the way: start over with the full state.
                cursor = null;
                document = undefined;
                throw error;
              }
              cursor = stripEtag(response.headers.get("ETag")) || cursor;
              onMessage({ id: cursor, data: JSON.stringify(document), document: document, contentType: "application/json" });
            } else {
              const data = await response.text();
              cursor = stripEtag(response.headers.get("ETag")) || cursor;
              onMessage({ id: cursor, data: data, contentType: response.headers.get("Content-Type") });
            }
            continue;
          }
          if (response.status >= 400 && response.status < 500 && response.status !== 429) {
            // A request that is truly wrong will not get better by retrying.
            stopped = true;
            onError(new Error("HTTP " + response.status + ": " + (await response.text())), null);
            return;
          }
          throw new Error("HTTP " + response.status);
        } catch (error) {
          failures += 1;
          const ceiling = Math.min(30000, 1000 * Math.pow(2, Math.min(failures - 1, 5)));
          const delay = Math.random() * ceiling;
          onError(error, delay);
          await sleep(delay);
        }
      }
    }

    loop();
    return {
      stop: function () {
        stopped = true;
      },
      get cursor() {
        return cursor;
      },
      get document() {
        return document;
      },
    };
  }

  root.sidestreamLongPoll = sidestreamLongPoll;
  if (typeof module !== "undefined" && module.exports) {
    module.exports = { sidestreamLongPoll: sidestreamLongPoll };
  }
})(typeof globalThis !== "undefined" ? globalThis : this);
