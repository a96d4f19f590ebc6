// A small RFC 6902 JSON Patch `apply` for the sidestream helpers: browser and Node, no
// dependencies.
//
//   const next = sidestreamJsonPatch.applyJsonPatch(document, patch);
//
// It returns a new document and leaves `document` as it was, so a patch that fails (an
// operation that does not apply) changes nothing: the caller then asks for the full state.
// All six operations are supported (add, remove, replace, move, copy, test); pointers are
// RFC 6901 (`~1` is `/`, `~0` is `~`, `-` is the end of an array for `add`).
(function (root) {
  "use strict";

  function fail(message) {
    throw new Error("JSON Patch: " + message);
  }

  function parsePointer(pointer) {
    if (pointer === "") return [];
    if (typeof pointer !== "string" || pointer.charAt(0) !== "/") fail("bad pointer " + JSON.stringify(pointer));
    return pointer
      .slice(1)
      .split("/")
      .map((token) => token.replace(/~1/g, "/").replace(/~0/g, "~"));
  }

  function clone(value) {
    return value === undefined ? undefined : JSON.parse(JSON.stringify(value));
  }

  function isObject(value) {
    return value !== null && typeof value === "object" && !Array.isArray(value);
  }

  function has(object, key) {
    return Object.prototype.hasOwnProperty.call(object, key);
  }

  // An own property even for keys such as `__proto__`.
  function setKey(object, key, value) {
    Object.defineProperty(object, key, { value: value, writable: true, enumerable: true, configurable: true });
  }

  function arrayIndex(array, token, forAdd) {
    if (forAdd && token === "-") return array.length;
    if (!/^(0|[1-9][0-9]*)$/.test(token)) fail("bad array index " + JSON.stringify(token));
    const index = Number(token);
    if (index > array.length || (!forAdd && index === array.length)) fail("index " + index + " out of range");
    return index;
  }

  function child(node, token) {
    if (Array.isArray(node)) return node[arrayIndex(node, token, false)];
    if (isObject(node) && has(node, token)) return node[token];
    return fail("no member " + JSON.stringify(token));
  }

  function get(document, tokens) {
    return tokens.reduce(child, document);
  }

  function parentOf(document, tokens) {
    return get(document, tokens.slice(0, -1));
  }

  function add(document, tokens, value) {
    if (tokens.length === 0) return value;
    const parent = parentOf(document, tokens);
    const last = tokens[tokens.length - 1];
    if (Array.isArray(parent)) parent.splice(arrayIndex(parent, last, true), 0, value);
    else if (isObject(parent)) setKey(parent, last, value);
    else fail("cannot add below a scalar");
    return document;
  }

  function remove(document, tokens) {
    if (tokens.length === 0) fail("cannot remove the whole document");
    const parent = parentOf(document, tokens);
    const last = tokens[tokens.length - 1];
    if (Array.isArray(parent)) parent.splice(arrayIndex(parent, last, false), 1);
    else if (isObject(parent) && has(parent, last)) delete parent[last];
    else fail("nothing to remove at " + JSON.stringify(last));
    return document;
  }

  function replace(document, tokens, value) {
    if (tokens.length === 0) return value;
    const parent = parentOf(document, tokens);
    const last = tokens[tokens.length - 1];
    if (Array.isArray(parent)) parent[arrayIndex(parent, last, false)] = value;
    else if (isObject(parent) && has(parent, last)) setKey(parent, last, value);
    else fail("nothing to replace at " + JSON.stringify(last));
    return document;
  }

  function equal(a, b) {
    if (a === b) return true;
    if (Array.isArray(a)) return Array.isArray(b) && a.length === b.length && a.every((x, i) => equal(x, b[i]));
    if (isObject(a) && isObject(b)) {
      const keys = Object.keys(a);
      return keys.length === Object.keys(b).length && keys.every((k) => has(b, k) && equal(a[k], b[k]));
    }
    return false;
  }

  function applyJsonPatch(document, patch) {
    if (!Array.isArray(patch)) fail("a patch is an array of operations");
    let doc = clone(document);
    for (const operation of patch) {
      const path = parsePointer(operation.path);
      switch (operation.op) {
        case "add":
          doc = add(doc, path, clone(operation.value));
          break;
        case "remove":
          doc = remove(doc, path);
          break;
        case "replace":
          doc = replace(doc, path, clone(operation.value));
          break;
        case "move": {
          const from = parsePointer(operation.from);
          const value = get(doc, from);
          doc = add(remove(doc, from), path, value);
          break;
        }
        case "copy":
          doc = add(doc, path, clone(get(doc, parsePointer(operation.from))));
          break;
        case "test":
          if (!equal(get(doc, path), operation.value)) fail("test failed at " + operation.path);
          break;
        default:
          fail("unknown operation " + JSON.stringify(operation.op));
      }
    }
    return doc;
  }

  const api = { applyJsonPatch: applyJsonPatch };
  root.sidestreamJsonPatch = api;
  if (typeof module !== "undefined" && module.exports) {
    module.exports = api;
  }
})(typeof globalThis !== "undefined" ? globalThis : this);
