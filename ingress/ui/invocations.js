// The invocations page: sys_invocation with filters (status, service, key, deployment), paging, auto refresh.

import { call, query, sqlString } from "./api.js";
import { badge, fill, h, short, table, when } from "./dom.js";

export const STATUSES = ["pending", "scheduled", "ready", "running", "backing-off", "suspended", "paused", "completed"];
// Choices besides the plain statuses: the ones an operator asks for first.
const GROUPS = { active: "not completed", failed: "completed with a failure" };
const PAGE_SIZES = [20, 50, 100, 500];
const REFRESH_MS = 3000;

const COLUMNS = [
  "id", "target", "target_service_name", "target_service_key", "target_handler_name", "status",
  "completion_result", "completion_failure", "created_at", "modified_at", "pinned_deployment_id", "retry_count",
  "last_failure",
];

/** The WHERE clause of the filters (values as SQL literals). */
export function whereClause(filters) {
  const terms = [];
  if (filters.status === "active") terms.push("status <> 'completed'");
  else if (filters.status === "failed") terms.push("completion_result = 'failure'");
  else if (filters.status) terms.push(`status = ${sqlString(filters.status)}`);
  if (filters.service) terms.push(`target_service_name = ${sqlString(filters.service)}`);
  if (filters.key) terms.push(`target_service_key = ${sqlString(filters.key)}`);
  if (filters.deployment) terms.push(`pinned_deployment_id = ${sqlString(filters.deployment)}`);
  return terms.length ? ` WHERE ${terms.join(" AND ")}` : "";
}

function readFilters(params) {
  const size = Number(params.get("size"));
  return {
    status: params.get("status") || "",
    service: params.get("service") || "",
    key: params.get("key") || "",
    deployment: params.get("deployment") || "",
    page: Math.max(0, Number(params.get("page")) || 0),
    size: PAGE_SIZES.includes(size) ? size : PAGE_SIZES[1],
  };
}

/** The hash of the invocations page with these filters (empty ones left out). */
export function invocationsHash(filters) {
  const params = new URLSearchParams();
  for (const name of ["status", "service", "key", "deployment"]) if (filters[name]) params.set(name, filters[name]);
  if (filters.page) params.set("page", String(filters.page));
  if (filters.size && filters.size !== PAGE_SIZES[1]) params.set("size", String(filters.size));
  const search = params.toString();
  return `#/invocations${search ? `?${search}` : ""}`;
}

function select(name, label, options, current) {
  return h("label", {}, label,
    h("select", { name },
      options.map(([value, text]) => h("option", { value, selected: value === current }, text))));
}

export async function renderInvocations(view, page) {
  const filters = readFilters(page.route.params);
  const [services, deployments] = await Promise.all([
    call("GET", "/services").then((d) => d.services || []).catch(() => []),
    call("GET", "/deployments").then((d) => d.deployments || []).catch(() => []),
  ]);
  const serviceNames = services.map((s) => s.name);
  if (filters.service && !serviceNames.includes(filters.service)) serviceNames.push(filters.service);
  const deploymentIds = deployments.map((d) => d.id);
  if (filters.deployment && !deploymentIds.includes(filters.deployment)) deploymentIds.push(filters.deployment);

  const form = h("form", { class: "filters", id: "filters" },
    select("status", "Status", [["", "any"], ...Object.entries(GROUPS), ...STATUSES.map((s) => [s, s])], filters.status),
    select("service", "Service", [["", "any"], ...serviceNames.map((n) => [n, n])], filters.service),
    h("label", {}, "Key", h("input", { name: "key", value: filters.key, placeholder: "object or workflow key", size: 16 })),
    select("deployment", "Deployment", [["", "any"], ...deploymentIds.map((d) => [d, d])], filters.deployment),
    select("size", "Per page", PAGE_SIZES.map((n) => [String(n), String(n)]), String(filters.size)),
    h("button", { type: "submit" }, "Apply"),
    h("label", { class: "inline" }, h("input", { type: "checkbox", id: "auto-refresh", checked: true }), "auto refresh"));
  const apply = (event) => {
    event.preventDefault();
    const data = new FormData(form);
    location.hash = invocationsHash({
      status: data.get("status"), service: data.get("service"), key: String(data.get("key")).trim(),
      deployment: data.get("deployment"), size: Number(data.get("size")), page: 0,
    });
  };
  form.addEventListener("submit", apply);
  form.addEventListener("change", (event) => { if (event.target.tagName === "SELECT") apply(event); });

  const summary = h("p", { class: "muted", id: "invocations-summary" });
  const body = h("div", { id: "invocations-table", class: "scroll" });
  const pager = h("div", { class: "pager" });
  fill(view, h("h1", {}, "Invocations"), form, summary, body, pager);

  const where = whereClause(filters);
  const load = async () => {
    const offset = filters.page * filters.size;
    const [rows, counted] = await Promise.all([
      query(`SELECT ${COLUMNS.join(", ")} FROM sys_invocation${where} ORDER BY created_at DESC, id DESC ` +
            `LIMIT ${filters.size + 1} OFFSET ${offset}`),
      query(`SELECT count(*) AS n FROM sys_invocation${where}`),
    ]);
    const total = Number(counted[0]?.n ?? 0);
    const shown = rows.slice(0, filters.size);
    fill(summary, total === 0 ? "No invocations match." :
      `${offset + 1}–${offset + shown.length} of ${total} invocation${total === 1 ? "" : "s"}, newest first` +
      ` · updated ${new Date().toLocaleTimeString()}`);
    fill(body, shown.length ? invocationTable(shown) : "");
    fill(pager,
      filters.page > 0 ? h("a", { href: invocationsHash({ ...filters, page: filters.page - 1 }), class: "button" }, "← Newer") : "",
      rows.length > filters.size ? h("a", { href: invocationsHash({ ...filters, page: filters.page + 1 }), class: "button", id: "next-page" }, "Older →") : "");
  };
  await load();
  let busy = false;
  const timer = setInterval(async () => {
    if (busy || !document.getElementById("auto-refresh")?.checked) return;
    busy = true;
    try {
      await load();
    } catch (err) {
      page.fail(err);
    } finally {
      busy = false;
    }
  }, REFRESH_MS);
  page.onLeave(() => clearInterval(timer));
}

/** "inv_1a2b3c4d…" : enough to tell invocations apart in a table; the link's title has it whole. */
function shortId(id) {
  return id.length > 16 ? `${id.slice(0, 14)}…` : id;
}

function invocationTable(rows) {
  return table(["Id", "Target", "Status", "Deployment", "Retries", "Created", "Modified", "Failure"],
    rows.map((row) => h("tr", { class: row.completion_result === "failure" ? "failed" : "", dataset: { id: row.id } },
      h("td", { class: "mono" }, h("a", { href: `#/invocation/${encodeURIComponent(row.id)}`, title: row.id }, shortId(row.id))),
      h("td", {}, h("a", { href: `#/invocation/${encodeURIComponent(row.id)}` }, row.target)),
      h("td", {}, badge(row.status, row.completion_result)),
      h("td", { class: "mono" }, short(row.pinned_deployment_id || "", 24)),
      h("td", { class: "num" }, row.retry_count ?? ""),
      h("td", { class: "time" }, when(row.created_at)),
      h("td", { class: "time" }, when(row.modified_at)),
      h("td", { class: "failure-text" }, short(row.completion_failure || row.last_failure, 60)))),
    { class: "grid", id: "invocations" });
}
