// The services and deployments pages, from GET /services and GET /deployments.

import { call, isKeyed } from "./api.js";
import { badge, fill, h, short, table, when } from "./dom.js";

function ms(value) {
  if (value === null || value === undefined) return h("span", { class: "muted" }, "default");
  const seconds = value / 1000;
  if (seconds >= 86400 && seconds % 3600 === 0) return `${seconds / 86400} d`;
  if (seconds >= 60) return `${Math.round(seconds / 60)} min`;
  return `${seconds} s`;
}

export async function renderServices(view) {
  const { services = [] } = await call("GET", "/services");
  fill(view, h("h1", {}, "Services"),
    services.length === 0 ? h("p", { class: "muted" }, "No services: register a deployment (keystate deployments register URI).") :
    table(["Service", "Type", "Handlers", "Deployment", "Journal retention", "", ""],
      services.map((s) => h("tr", { dataset: { service: s.name } },
        h("td", {}, h("strong", {}, s.name), s.ingress_private ? h("span", { class: "badge idle" }, "private") : ""),
        h("td", {}, s.ty),
        h("td", {}, h("ul", { class: "plain" }, (s.handlers || []).map((hd) =>
          h("li", {}, h("span", { class: "mono" }, hd.name), " ", h("span", { class: "muted" }, hd.ty))))),
        h("td", { class: "mono" }, h("a", { href: "#/deployments" }, short(s.deployment_id, 28))),
        h("td", {}, ms(s.journal_retention_ms)),
        h("td", {}, h("a", { href: `#/invocations?service=${encodeURIComponent(s.name)}` }, "invocations")),
        h("td", {}, isKeyed(s.ty) ? h("a", { href: `#/state/${encodeURIComponent(s.name)}` }, "state") : ""))),
      { class: "grid", id: "services" }));
}

export async function renderDeployments(view) {
  const { deployments = [] } = await call("GET", "/deployments");
  deployments.sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
  fill(view, h("h1", {}, "Deployments"),
    h("p", { class: "muted" }, "active: the latest for some service · draining: invocations still pinned to it · drained: safe to remove"),
    deployments.length === 0 ? h("p", { class: "muted" }, "No deployments registered.") :
    table(["Id", "Endpoint", "Status", "Services", "Pinned invocations", "Created", ""],
      deployments.map((d) => {
        const status = d.state || d.status || "unknown";
        return h("tr", { dataset: { deployment: d.id } },
          h("td", { class: "mono" }, d.id),
          h("td", { class: "mono" }, d.uri || d.endpoint || ""),
          h("td", {}, badge(status)),
          h("td", {}, (d.services || []).map((s) => s.name).join(", ")),
          h("td", { class: "num" }, d.pinned_invocations ?? ""),
          h("td", { class: "time" }, when(d.created_at)),
          h("td", {}, h("a", { href: `#/invocations?deployment=${encodeURIComponent(d.id)}` }, "invocations")));
      }),
      { class: "grid", id: "deployments" }));
}
