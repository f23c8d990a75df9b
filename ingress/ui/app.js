// The UI's shell: hash routes to pages, the token panel, and the clean-up of a page's timers on leaving.

import { ApiError, setToken, token } from "./api.js";
import { clearNotice, h, notify } from "./dom.js";
import { renderInvocations } from "./invocations.js";
import { renderJournal } from "./journal.js";
import { renderState } from "./state.js";
import { renderDeployments, renderServices } from "./catalog.js";

// #/invocations?status=running, #/invocation/<id>, #/state/<service>/<key>, #/services, #/deployments
const PAGES = {
  invocations: renderInvocations,
  invocation: renderJournal,
  state: renderState,
  services: renderServices,
  deployments: renderDeployments,
};

let leaveCurrent = () => {};

/** The route of a hash: page name, path parts after it (decoded) and query parameters. */
export function parseRoute(hash) {
  const text = hash.replace(/^#\/?/, "");
  const [path, search = ""] = text.split("?", 2);
  const [page = "invocations", ...parts] = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { page, parts, params: new URLSearchParams(search) };
}

async function show() {
  leaveCurrent();
  const cleanups = [];
  leaveCurrent = () => cleanups.splice(0).forEach((fn) => fn());
  const route = parseRoute(location.hash);
  const render = PAGES[route.page] || PAGES.invocations;
  for (const link of document.querySelectorAll("#nav a")) {
    const active = link.dataset.page === route.page || (route.page === "invocation" && link.dataset.page === "invocations");
    link.classList.toggle("active", active);
  }
  // Each page renders into its own element: a slow answer for a page already left lands nowhere.
  const view = h("div", { class: "view", dataset: { page: route.page } });
  document.getElementById("main").replaceChildren(view);
  clearNotice();
  const page = {
    route,
    onLeave: (fn) => cleanups.push(fn),
    fail: (err) => showError(err),
  };
  try {
    await render(view, page);
  } catch (err) {
    showError(err);
  }
}

function showError(err) {
  const message = err instanceof ApiError || err instanceof Error ? err.message : String(err);
  notify(message, "error");
  if (err instanceof ApiError && err.status === 401) openTokenPanel();
}

function openTokenPanel() {
  document.getElementById("token-panel").hidden = false;
  document.getElementById("token-input").focus();
}

function updateTokenButton() {
  const button = document.getElementById("token-button");
  button.textContent = token() ? "Token ✓" : "Token";
  button.classList.toggle("set", Boolean(token()));
}

function setup() {
  document.getElementById("token-button").addEventListener("click", () => {
    const panel = document.getElementById("token-panel");
    panel.hidden = !panel.hidden;
    if (!panel.hidden) document.getElementById("token-input").focus();
  });
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("token-input");
    setToken(input.value);
    input.value = "";
    document.getElementById("token-panel").hidden = true;
    updateTokenButton();
    clearNotice();
    show();
  });
  document.getElementById("token-forget").addEventListener("click", () => {
    setToken("");
    updateTokenButton();
    notify("Token forgotten.");
    show();
  });
  window.addEventListener("hashchange", show);
  updateTokenButton();
  if (!location.hash) history.replaceState(null, "", "#/invocations");
  show();
}

setup();
