// sidestream SSE helper for state topics, with JSON Patch deltas: browser and Node (>= 18),
// no dependencies (load examples/json_patch.js first in a page; Node requires it itself).
//
//   const state = sidestreamState("/api/dashboard", {
//     onState: (document, info) => render(document),   // info: { id, kind: "full" | "patch" }
//   });
//   state.document;        // the current document
//   state.close();
//
// - Asks for `?delta=json-patch` (unless `deltas: false`): the first event is the full state,
//   then `event: patch` events carry RFC 6902 patches, applied here to keep `document`. A
//   topic without `deltas = true` simply sends full states, which work the same.
// - `event`: the topic's SSE event name, when it has one (default `message`).
// - Uses the browser's EventSource (it reconnects with Last-Event-ID itself); elsewhere (Node)
//   a fetch-based reader that does the same. A patch that does not apply (it cannot, unless
//   something went wrong on the way) reconnects without a cursor: the full state follows.
// - `bytesReceived`: bytes of the stream read so far (the fetch reader counts the body;
//   EventSource only shows event data, so there it counts that).
(function (root) {
  "use strict";

  const patches =
    root.sidestreamJsonPatch ||
    (typeof require === "function" ? require("./json_patch.js") : null);

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  function sidestreamState(url, options) {
    const opts = options || {};
    const onState = opts.onState || function () {};
    const onError = opts.onError || function () {};
    const onStale = opts.onStale || function () {};
    const eventName = opts.event || "message";
    const deltas = opts.deltas !== false;
    const base = typeof location !== "undefined" ? location.href : opts.base;
    const useEventSource = !opts.fetch && typeof root.EventSource === "function";
    const fetchImpl = opts.fetch || (root.fetch && root.fetch.bind(root));
    let document;
    let cursor = opts.cursor || null;
    let closed = false;
    let source = null;
    let controller = null;
    let retryMs = 2000;
    let bytes = 0;

    function target() {
      const t = new URL(url, base);
      if (deltas) t.searchParams.set("delta", "json-patch");
      return t.toString();
    }

    function onFull(id, data) {
      document = JSON.parse(data);
      cursor = id;
      onState(document, { id: id, kind: "full" });
    }

    function onPatch(id, data) {
      try {
        if (document === undefined) throw new Error("a patch before any full state");
        document = patches.applyJsonPatch(document, JSON.parse(data));
      } catch (error) {
        onError(error);
        resync();
        return;
      }
      cursor = id;
      onState(document, { id: id, kind: "patch" });
    }

    function handle(event, id, data) {
      bytes += source ? data.length : 0;
      if (event === "patch") onPatch(id, data);
      else if (event === eventName) onFull(id, data);
      else if (event === "stale") onStale(JSON.parse(data).stale);
      // `reset`: the cursor was unknown; the full state that follows replaces the document.
    }

    // Starts over without a cursor: the server answers with the full state.
    function resync() {
      cursor = null;
      if (source) {
        source.close();
        openEventSource();
      } else if (controller) {
        controller.abort();
      }
    }

    function openEventSource() {
      source = new root.EventSource(target());
      for (const name of [eventName, "patch", "stale"]) {
        source.addEventListener(name, (event) => handle(name, event.lastEventId, event.data));
      }
      source.onerror = () => onError(new Error("connection lost; the browser reconnects"));
    }

    // One SSE event block: its fields, per the HTML standard's parser (the parts used here).
    function dispatch(block) {
      let id = null;
      let event = "message";
      const data = [];
      for (const line of block.split(/\r\n|\r|\n/)) {
        if (line === "" || line.charAt(0) === ":") continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.charAt(0) === " ") value = value.slice(1);
        if (field === "id") id = value;
        else if (field === "event") event = value;
        else if (field === "data") data.push(value);
        else if (field === "retry" && /^[0-9]+$/.test(value)) retryMs = Number(value);
      }
      if (data.length > 0) handle(event, id, data.join("\n"));
    }

    async function fetchLoop() {
      let failures = 0;
      while (!closed) {
        try {
          controller = new AbortController();
          const headers = { Accept: "text/event-stream" };
          if (cursor) headers["Last-Event-ID"] = cursor;
          const response = await fetchImpl(target(), { headers: headers, signal: controller.signal, cache: "no-store" });
          if (response.status !== 200) throw new Error("HTTP " + response.status);
          const reader = response.body.getReader();
          const decoder = new TextDecoder();
          let buffer = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            bytes += value.byteLength;
            failures = 0;
            buffer += decoder.decode(value, { stream: true });
            let end;
            while ((end = /\r\n\r\n|\n\n|\r\r/.exec(buffer))) {
              const block = buffer.slice(0, end.index);
              buffer = buffer.slice(end.index + end[0].length);
              dispatch(block);
            }
          }
        } catch (error) {
          if (closed) return;
          if (error.name !== "AbortError") onError(error);
        }
        if (closed) return;
        failures += 1;
        // The server's `retry:` with ±50 % jitter, doubling while connections keep failing.
        const delay = retryMs * Math.min(16, Math.pow(2, failures - 1)) * (0.5 + Math.random());
        await sleep(delay);
      }
    }

    if (useEventSource) openEventSource();
    else fetchLoop();

    return {
      get document() {
        return document;
      },
      get cursor() {
        return cursor;
      },
      get bytesReceived() {
        return bytes;
      },
      close: function () {
        closed = true;
        if (source) source.close();
        if (controller) controller.abort();
      },
    };
  }

  root.sidestreamState = sidestreamState;
  if (typeof module !== "undefined" && module.exports) {
    module.exports = { sidestreamState: sidestreamState };
  }
})(typeof globalThis !== "undefined" ? globalThis : this);
