// sidestream WebSocket client helper: plain JavaScript, no dependencies (browser; Node >= 22
// has a global WebSocket too).
//
//   const ws = sidestreamWebSocket("/rooms/lobby", { onMessage: (m) => console.log(m) });
//   ws.send(JSON.stringify({ say: "hi" }));   // forwarded to the topic's `inbound` URL
//   ws.close();
//
// - Reconnects on close with exponential backoff and full jitter (1 s doubling to 30 s),
//   reset once a connection has stayed healthy for 10 s.
// - Resumes with the last cursor it saw (`?cursor=`), which needs the topic's
//   `websocket.envelope = "json"`: each message is then {id, event, data}. With the raw
//   envelope messages carry no cursor, so a reconnect starts from the latest state.
// - Drops duplicates by cursor (a message whose seq is not after the last one seen within
//   the same epoch), so a replay that overlaps what was already shown is harmless.
// - `deltas: true` (JSON envelope, a state topic with `deltas = true`): asks for
//   `?delta=json-patch`; `{id, event, patch}` messages are applied to the document it holds
//   (needs examples/json_patch.js), `ws.document` is the current one, and each message's
//   `data` is the whole current document either way.
(function (root) {
  "use strict";

  const patches =
    root.sidestreamJsonPatch ||
    (typeof require === "function" ? require("./json_patch.js") : null);

  function parseCursor(id) {
    const dash = typeof id === "string" ? id.lastIndexOf("-") : -1;
    if (dash < 1) return null;
    return { epoch: id.slice(0, dash), seq: Number(id.slice(dash + 1)) };
  }

  function sidestreamWebSocket(path, options) {
    const opts = options || {};
    const onMessage = opts.onMessage || function () {};
    const onReset = opts.onReset || function () {};
    const onStatus = opts.onStatus || function () {};
    const WebSocketImpl = opts.WebSocket || root.WebSocket;
    let cursor = opts.cursor || null;
    let document;
    let socket = null;
    let failures = 0;
    let closedByUser = false;
    let healthyTimer = null;
    let retryTimer = null;

    function url() {
      const base = typeof location !== "undefined" ? location.href : opts.base;
      const target = new URL(path, base);
      target.protocol = target.protocol === "https:" ? "wss:" : "ws:";
      if (cursor) target.searchParams.set("cursor", cursor);
      if (opts.deltas) target.searchParams.set("delta", "json-patch");
      return target.toString();
    }

    function isDuplicate(id) {
      const seen = parseCursor(cursor);
      const next = parseCursor(id);
      return seen && next && seen.epoch === next.epoch && next.seq <= seen.seq;
    }

    function handle(event) {
      let message = event.data;
      if (typeof message === "string" && message.charAt(0) === "{") {
        try {
          const parsed = JSON.parse(message);
          if (parsed && parsed.reset === true) {
            cursor = parsed.cursor || null;
            onReset(parsed);
            return;
          }
          if (parsed && typeof parsed.id === "string" && "patch" in parsed) {
            if (isDuplicate(parsed.id)) return;
            try {
              document = patches.applyJsonPatch(document, parsed.patch);
            } catch (_) {
              // Cannot happen unless something broke: reconnect without a cursor (full state).
              cursor = null;
              socket.close(4000);
              return;
            }
            cursor = parsed.id;
            message = { id: parsed.id, event: parsed.event, data: document, patch: parsed.patch };
          } else if (parsed && typeof parsed.id === "string" && "data" in parsed) {
            if (isDuplicate(parsed.id)) return;
            cursor = parsed.id;
            document = parsed.data;
            message = parsed;
          }
        } catch (_) {
          // Not an envelope: a raw JSON payload.
        }
      }
      onMessage(message);
    }

    function connect() {
      onStatus("connecting");
      socket = new WebSocketImpl(url());
      socket.onopen = function () {
        onStatus("open");
        healthyTimer = setTimeout(function () {
          failures = 0;
        }, 10000);
      };
      socket.onmessage = handle;
      socket.onclose = function (event) {
        clearTimeout(healthyTimer);
        if (closedByUser) return;
        failures += 1;
        const ceiling = Math.min(30000, 1000 * Math.pow(2, Math.min(failures - 1, 5)));
        const delay = Math.random() * ceiling;
        onStatus("closed " + event.code + "; reconnecting in " + Math.round(delay) + " ms");
        retryTimer = setTimeout(connect, delay);
      };
    }

    connect();
    return {
      send: function (data) {
        if (socket && socket.readyState === 1) socket.send(data);
      },
      close: function () {
        closedByUser = true;
        clearTimeout(retryTimer);
        clearTimeout(healthyTimer);
        if (socket) socket.close(1000);
      },
      get cursor() {
        return cursor;
      },
      get document() {
        return document;
      },
    };
  }

  root.sidestreamWebSocket = sidestreamWebSocket;
  if (typeof module !== "undefined" && module.exports) {
    module.exports = { sidestreamWebSocket: sidestreamWebSocket };
  }
})(typeof globalThis !== "undefined" ? globalThis : this);
