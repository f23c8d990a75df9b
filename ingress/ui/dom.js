// Small DOM helpers: elements built from data with textContent only (nothing user-made becomes HTML).

/** h("a", {href: "#/x", class: "c"}, "text", child, ...): an element with attributes and children. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A timestamp as "2026-11-30 01:02:03Z" (the admin sends ISO-8601 UTC). */
export function when(iso) {
  if (!iso) return "";
  const text = String(iso);
  return text.replace("T", " ").replace(/\.\d+Z$/, "Z");
}

const STATUS_CLASS = {
  completed: "ok", success: "ok", active: "ok",
  failure: "bad", failed: "bad", killed: "bad", "backing-off": "warn", paused: "warn", draining: "warn",
  running: "run", ready: "run", scheduled: "idle", pending: "idle", suspended: "idle", drained: "idle",
};

/** A coloured status label; `extra` (e.g. the completion result) picks the colour when given. */
export function badge(status, extra) {
  const key = String(extra || status || "").toLowerCase();
  const label = extra && extra !== status ? `${status} · ${extra}` : status;
  return h("span", { class: `badge ${STATUS_CLASS[key] || "idle"}`, dataset: { status: status || "" } }, label || "?");
}

/** Text shortened to `max` characters with its whole in the tooltip. */
export function short(text, max = 80) {
  if (text === null || text === undefined) return "";
  const s = String(text);
  return s.length <= max ? s : h("span", { title: s }, `${s.slice(0, max - 1)}…`);
}

let noticeTimer = 0;

/** A message under the top bar; errors stay until the next message, others fade after a few seconds. */
export function notify(message, kind = "info") {
  const el = document.getElementById("notice");
  fill(el, message);
  el.className = `notice ${kind}`;
  el.hidden = false;
  clearTimeout(noticeTimer);
  if (kind !== "error") noticeTimer = setTimeout(() => { el.hidden = true; }, 6000);
}

export function clearNotice() {
  const el = document.getElementById("notice");
  if (el.classList.contains("error")) el.hidden = true;
}

/** Ask before a destructive action; resolves true when confirmed. */
export function confirmAction(text, confirmLabel = "Confirm") {
  const dialog = document.getElementById("confirm");
  fill(document.getElementById("confirm-text"), text);
  document.getElementById("confirm-yes").textContent = confirmLabel;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}

/** A table from column headers and rows of cells. */
export function table(headers, rows, attrs = {}) {
  return h("table", attrs,
    h("thead", {}, h("tr", {}, headers.map((name) => h("th", {}, name)))),
    h("tbody", {}, rows));
}

/** Decode base64 to bytes, and bytes to text when they are UTF-8 (else null). */
export function fromBase64(b64) {
  const binary = atob(b64);
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  let text = null;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    text = null;
  }
  return { bytes, text };
}

export function toBase64FromText(text) {
  const bytes = new TextEncoder().encode(text);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary);
}
