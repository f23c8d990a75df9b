// An object's or workflow's state: GET /services/{svc}/state/{key}, edited with POST /services/{svc}/state.

import { call, isKeyed, query, sqlString } from "./api.js";
import { confirmAction, fill, fromBase64, h, notify, toBase64FromText } from "./dom.js";

function stateHash(service, key) {
  return `#/state/${encodeURIComponent(service)}${key ? `/${encodeURIComponent(key)}` : ""}`;
}

export async function renderState(view, page) {
  const [service = "", key = ""] = page.route.parts;
  const services = await call("GET", "/services").then((d) => (d.services || []).filter((s) => isKeyed(s.ty)));
  const names = services.map((s) => s.name);
  if (service && !names.includes(service)) names.push(service);
  const chosen = service || names[0] || "";
  const knownKeys = chosen
    ? await query(`SELECT DISTINCT service_key FROM state WHERE service_name = ${sqlString(chosen)} ORDER BY 1 LIMIT 200`)
        .then((rows) => rows.map((r) => r.service_key)).catch(() => [])
    : [];

  const form = h("form", { class: "filters", id: "state-chooser" },
    h("label", {}, "Object or workflow",
      h("select", { name: "service" }, names.map((n) => h("option", { value: n, selected: n === chosen }, n)))),
    h("label", {}, "Key", h("input", { name: "key", value: key, list: "known-keys", required: true, size: 24 })),
    h("datalist", { id: "known-keys" }, knownKeys.map((k) => h("option", { value: k }))),
    h("button", { type: "submit" }, "Show state"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    location.hash = stateHash(String(data.get("service")), String(data.get("key")).trim());
  });
  form.querySelector("select").addEventListener("change", (event) => { location.hash = stateHash(event.target.value, ""); });
  const editor = h("section", { id: "state-editor" });
  fill(view, h("h1", {}, "State"), names.length ? form : h("p", { class: "muted" }, "No virtual objects or workflows are registered."), editor);
  if (service && key) await loadEditor(editor, service, key, page);
}

async function loadEditor(editor, service, key, page) {
  const path = `/services/${encodeURIComponent(service)}/state/${encodeURIComponent(key)}`;
  const answer = await call("GET", path);
  const version = answer.version ?? null;
  const rows = h("tbody", {});
  const addRow = (name, b64, isNew) => {
    const decoded = b64 === null ? { text: "" } : fromBase64(b64);
    const binary = decoded.text === null;
    const nameCell = isNew
      ? h("input", { class: "state-key", placeholder: "new key", required: true })
      : h("span", { class: "state-key mono", dataset: { key: name } }, name);
    const value = h("textarea", { class: "state-value", rows: 2, spellcheck: "false" }, binary ? b64 : decoded.text);
    const encoding = h("select", { class: "state-encoding", title: "how the text maps to the stored bytes" },
      h("option", { value: "utf8", selected: !binary }, "UTF-8 text"),
      h("option", { value: "base64", selected: binary }, "base64 bytes"));
    const row = h("tr", { dataset: { key: name || "" } },
      h("td", {}, nameCell), h("td", {}, value), h("td", {}, encoding),
      h("td", {}, h("button", { type: "button", class: "quiet", title: "remove this key", onclick: () => row.remove() }, "Remove")));
    rows.append(row);
  };
  const entries = Object.entries(answer.state || {}).sort(([a], [b]) => a.localeCompare(b));
  for (const [name, b64] of entries) addRow(name, b64, false);

  const collect = () => {
    const state = {};
    for (const row of rows.querySelectorAll("tr")) {
      const keyEl = row.querySelector(".state-key");
      const name = keyEl.tagName === "INPUT" ? keyEl.value.trim() : keyEl.dataset.key;
      if (!name) throw new Error("every state entry needs a key: fill in or remove the empty one");
      if (name in state) throw new Error(`the key ${name} appears twice: keep one`);
      const text = row.querySelector(".state-value").value;
      const base64 = row.querySelector(".state-encoding").value === "base64";
      if (base64 && !/^[A-Za-z0-9+/]*={0,2}$/.test(text.trim())) throw new Error(`the value of ${name} is not base64`);
      state[name] = base64 ? text.trim() : toBase64FromText(text);
    }
    return state;
  };
  const send = async (newState, what) => {
    try {
      await call("POST", `/services/${encodeURIComponent(service)}/state`, { object_key: key, version, new_state: newState });
      notify(`${what} of ${service}/${key} accepted: the processor applies it in order with the object's exclusive handlers.`);
    } catch (err) {
      notify(err.message, "error");
      return;
    }
    setTimeout(() => loadEditor(editor, service, key, page).catch(page.fail), 700);
  };
  const save = async () => {
    let newState;
    try {
      newState = collect();
    } catch (err) {
      notify(err.message, "error");
      return;
    }
    const count = Object.keys(newState).length;
    if (await confirmAction(`Replace the state of ${service}/${key} with these ${count} entr${count === 1 ? "y" : "ies"}? ` +
        "If the state changed since it was read, the processor refuses the edit.", "Save state")) await send(newState, "The edit");
  };
  const clear = async () => {
    if (await confirmAction(`Clear all state of ${service}/${key}?`, "Clear state")) await send({}, "Clearing");
  };

  fill(editor,
    h("h2", {}, `${service}/${key}`),
    h("p", { class: "muted" }, entries.length ? `${entries.length} entr${entries.length === 1 ? "y" : "ies"}` : "No state.",
      version !== null ? ` · version ${version}` : ""),
    h("table", { class: "grid state", id: "state-table" },
      h("thead", {}, h("tr", {}, ["Key", "Value", "Encoding", ""].map((t) => h("th", {}, t)))), rows),
    h("div", { class: "actions" },
      h("button", { type: "button", class: "quiet", onclick: () => addRow("", null, true) }, "Add key"),
      h("button", { type: "button", id: "state-save", onclick: save }, "Save"),
      h("button", { type: "button", id: "state-clear", class: "danger", onclick: clear }, "Clear all"),
      h("button", { type: "button", class: "quiet", onclick: () => loadEditor(editor, service, key, page).catch(page.fail) }, "Reload"),
      h("a", { href: `#/invocations?service=${encodeURIComponent(service)}&key=${encodeURIComponent(key)}` }, "its invocations")));
}
