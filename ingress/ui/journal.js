// An invocation's page: its status on top, its journal as a timeline, and the lifecycle actions.

import { call, query, sqlString } from "./api.js";
import { badge, confirmAction, fill, h, notify, short, when } from "./dom.js";

const REFRESH_MS = 3000;
const JOURNAL_COLUMNS = [
  "index", "entry_type", "name", "completed", "entry_json", "invoked_id", "invoked_target", "sleep_wakeup_at",
  "promise_name",
];
// The lifecycle actions: PATCH /invocations/{id}/{action}; `done` says whether it applies to completed ones.
const ACTIONS = [
  { action: "cancel", label: "Cancel", done: false, danger: false,
    ask: "Cancel this invocation? Its handler gets a cancellation error at its next step and may compensate." },
  { action: "kill", label: "Kill", done: false, danger: true,
    ask: "Kill this invocation? It stops at once without running any more of its code (no compensation)." },
  { action: "pause", label: "Pause", done: false, danger: false,
    ask: "Pause this invocation? No further attempts run until it is resumed." },
  { action: "resume", label: "Resume", done: false, danger: false,
    ask: "Resume this invocation now?" },
  { action: "purge", label: "Purge", done: true, danger: true,
    ask: "Purge this completed invocation? Its status, journal and result are forgotten." },
];

/**
 * The failure inside a decoded journal entry, or null: an object with a numeric `code` and a string
 * `message` (keystate's Failure), or a non-empty `failure` / `error` field, looked for a few levels down.
 */
export function findFailure(value, depth = 0) {
  if (!value || typeof value !== "object" || depth > 4) return null;
  if (typeof value.code === "number" && typeof value.message === "string") return value;
  for (const key of ["failure", "error"]) {
    const found = value[key];
    if (found && (typeof found === "string" || typeof found === "object")) {
      return typeof found === "string" ? { message: found } : findFailure(found, depth + 1) || found;
    }
  }
  for (const child of Object.values(value)) {
    const found = findFailure(child, depth + 1);
    if (found) return found;
  }
  return null;
}

/** The value worth showing of an entry: its own `value`, else its result's value, else its argument or input. */
export function entryValue(value, depth = 0) {
  if (!value || typeof value !== "object" || depth > 4) return undefined;
  if ("value" in value && value.value !== null && typeof value.value !== "object") return value.value;
  for (const key of ["result", "value", "completion"]) {
    if (value[key] && typeof value[key] === "object") {
      const inner = entryValue(value[key], depth + 1);
      if (inner !== undefined) return inner;
    }
  }
  for (const key of ["argument", "input", "parameter", "body"]) {
    if (key in value && value[key] !== null && typeof value[key] !== "object") return value[key];
  }
  return undefined;
}

function parseEntry(text) {
  if (text === null || text === undefined) return null;
  if (typeof text === "object") return text;
  try {
    return JSON.parse(text);
  } catch {
    return { raw: String(text) };
  }
}

function targetLink(target, label) {
  // "Svc/key/handler": the object's state page is one click away.
  const parts = String(target || "").split("/");
  return parts.length === 3
    ? h("span", {}, h("a", { href: `#/state/${encodeURIComponent(parts[0])}/${encodeURIComponent(parts[1])}`, title: "the object's state" }, `${parts[0]}/${parts[1]}`), `/${parts[2]}`)
    : label || target;
}

export async function renderJournal(view, page) {
  const id = page.route.parts[0];
  if (!id) {
    location.hash = "#/invocations";
    return;
  }
  const header = h("section", { class: "invocation-head", id: "invocation" });
  const actions = h("div", { class: "actions", id: "actions" });
  const journal = h("section", { id: "journal-section" });
  fill(view, h("p", {}, h("a", { href: "#/invocations" }, "← Invocations")), header, actions, journal);

  const deployments = await call("GET", "/deployments").then((d) => d.deployments || []).catch(() => []);
  let status = null;
  let actionsFor = null;
  const load = async () => {
    const [rows, entries] = await Promise.all([
      query(`SELECT * FROM sys_invocation WHERE id = ${sqlString(id)}`),
      query(`SELECT ${JOURNAL_COLUMNS.join(", ")} FROM sys_journal WHERE id = ${sqlString(id)} ORDER BY index`),
    ]);
    const inv = rows[0];
    if (!inv) {
      fill(header, h("h1", {}, "Invocation ", h("span", { class: "mono" }, id)),
        h("p", { class: "muted" }, "Unknown invocation: it never existed, was purged, or is too new for the read model."));
      fill(actions);
      actionsFor = null;
      fill(journal);
      return;
    }
    status = inv.status;
    fill(header, ...invocationHead(inv));
    // Redrawn only when the status changes: a refresh must not reset a choice the user is making.
    if (actionsFor !== inv.status) {
      actionsFor = inv.status;
      fill(actions, ...actionButtons(inv, deployments, () => load().catch(page.fail)));
    }
    fill(journal, h("h2", {}, `Journal (${entries.length} entr${entries.length === 1 ? "y" : "ies"})`),
      entries.length ? timeline(entries, inv) :
        h("p", { class: "muted" }, "No journal entries (not started yet, or its journal retention has passed)."));
  };
  await load();
  const timer = setInterval(() => {
    if (status !== "completed") load().catch(page.fail);
  }, REFRESH_MS);
  page.onLeave(() => clearInterval(timer));
}

function invocationHead(inv) {
  const failure = inv.completion_failure || inv.last_failure;
  const facts = [
    ["Target", targetLink(inv.target)],
    ["Status", badge(inv.status, inv.completion_result)],
    ["Deployment", inv.pinned_deployment_id ? h("a", { href: `#/invocations?deployment=${encodeURIComponent(inv.pinned_deployment_id)}`, class: "mono" }, inv.pinned_deployment_id) : "none yet"],
    ["Attempt", inv.attempt ?? ""],
    ["Retries", inv.retry_count ?? 0],
    ["Created", when(inv.created_at)],
    ["Modified", when(inv.modified_at)],
    inv.scheduled_at ? ["Scheduled", when(inv.scheduled_at)] : null,
    ["Invoked by", inv.invoked_by_id ? h("span", {}, `${inv.invoked_by} `, h("a", { href: `#/invocation/${encodeURIComponent(inv.invoked_by_id)}`, class: "mono" }, inv.invoked_by_id)) : inv.invoked_by || ""],
    inv.idempotency_key ? ["Idempotency key", inv.idempotency_key] : null,
    ["Journal size", inv.journal_size ?? ""],
  ].filter(Boolean);
  return [
    h("h1", {}, "Invocation ", h("span", { class: "mono" }, inv.id)),
    h("dl", { class: "facts" }, facts.map(([name, value]) => [h("dt", {}, name), h("dd", {}, value)])),
    failure ? h("div", { class: "failure-box", id: "invocation-failure" },
      h("strong", {}, inv.completion_failure ? "Failed: " : "Last failure: "),
      inv.last_failure_error_code && !inv.completion_failure ? `[${inv.last_failure_error_code}] ` : "",
      failure) : "",
  ];
}

function actionButtons(inv, deployments, reload) {
  const completed = inv.status === "completed";
  const items = [];
  for (const spec of ACTIONS.filter((a) => a.done === completed)) {
    items.push(h("button", { type: "button", class: spec.danger ? "danger" : "", dataset: { action: spec.action },
      onclick: () => act(inv, spec, reload) }, spec.label));
    if (spec.action === "resume") {
      items.push(h("label", { class: "inline muted" }, "on ",
        h("select", { id: "resume-deployment", title: "the deployment Resume continues the invocation on" },
          h("option", { value: "" }, "its pinned deployment"),
          h("option", { value: "latest" }, "the latest deployment"),
          deployments.map((d) => h("option", { value: d.id }, `${d.id} (${d.state || d.status || "?"})`)))));
    }
  }
  if (completed || inv.status === "paused") {
    items.push(h("button", { type: "button", dataset: { action: "restart-as-new" }, onclick: () => restart(inv) }, "Restart as new"),
      h("label", { class: "inline muted" }, "keeping entries before #",
        h("input", { id: "restart-from", type: "number", min: 1, size: 4, placeholder: "all",
          title: "restart from this journal index: the completed entries before it are kept" })));
  }
  return items;
}

async function act(inv, spec, reload) {
  let path = `/invocations/${encodeURIComponent(inv.id)}/${spec.action}`;
  let ask = spec.ask;
  if (spec.action === "resume") {
    const where = document.getElementById("resume-deployment")?.value;
    if (where) {
      path += `?deployment=${encodeURIComponent(where)}`;
      ask += where === "latest" ? " It moves to the latest deployment." : ` It moves to deployment ${where}.`;
    }
  }
  if (!(await confirmAction(`${ask}\n\n${inv.id} (${inv.target})`, spec.label))) return;
  try {
    await call("PATCH", path);
    notify(`${spec.label} of ${inv.id} requested; the processor applies it in order.`);
    if (spec.action === "purge") {
      location.hash = "#/invocations";
      return;
    }
  } catch (err) {
    notify(err.message, "error");
  }
  // The command goes through the log: give the read model a moment before reading again.
  setTimeout(reload, 700);
}

async function restart(inv) {
  const from = document.getElementById("restart-from")?.value;
  const kept = from ? `, keeping its completed entries before #${from}` : "";
  if (!(await confirmAction(`Start a new invocation of ${inv.target} with the same input${kept}?\n\n${inv.id}`, "Restart as new"))) return;
  try {
    const query = from ? `?from=${encodeURIComponent(from)}` : "";
    const answer = await call("PATCH", `/invocations/${encodeURIComponent(inv.id)}/restart-as-new${query}`);
    notify("Restarted as a new invocation.");
    if (answer && answer.new_invocation_id) location.hash = `#/invocation/${encodeURIComponent(answer.new_invocation_id)}`;
  } catch (err) {
    notify(err.message, "error");
  }
}

function timeline(entries, inv) {
  return h("ol", { class: "timeline", id: "journal" }, entries.map((entry) => {
    const decoded = parseEntry(entry.entry_json);
    const failure = findFailure(decoded) ||
      (entry.entry_type === "Output" && inv.completion_result === "failure"
        ? { message: inv.completion_failure || "failed" } : null);
    const value = entryValue(decoded);
    const details = [];
    if (entry.invoked_target || entry.invoked_id) {
      details.push(h("div", {}, "→ ", entry.invoked_target ? targetLink(entry.invoked_target) : "",
        entry.invoked_id ? [" ", h("a", { href: `#/invocation/${encodeURIComponent(entry.invoked_id)}`, class: "mono" }, entry.invoked_id)] : ""));
    }
    if (entry.sleep_wakeup_at) details.push(h("div", {}, `wakes up at ${when(entry.sleep_wakeup_at)}`));
    if (entry.promise_name) details.push(h("div", {}, `promise ${entry.promise_name}`));
    if (failure) {
      details.push(h("div", { class: "failure-text" },
        typeof failure.code === "number" ? `[${failure.code}] ` : "", failure.message || JSON.stringify(failure)));
    } else if (value !== undefined) {
      details.push(h("div", { class: "value" }, short(value, 200)));
    }
    return h("li", {
      class: `entry${failure ? " failed" : ""}${entry.completed ? "" : " pending"}`,
      dataset: { index: entry.index, type: entry.entry_type },
    },
    h("div", { class: "entry-head" },
      h("span", { class: "index" }, `#${entry.index}`),
      h("span", { class: "type" }, entry.entry_type),
      entry.name ? h("span", { class: "name" }, entry.name) : "",
      h("span", { class: `done ${entry.completed ? "yes" : "no"}` }, entry.completed ? "completed" : "waiting")),
    details,
    decoded ? h("details", {}, h("summary", {}, "entry"), h("pre", {}, JSON.stringify(decoded, null, 2))) : "");
  }));
}
