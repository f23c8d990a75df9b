// The admin API as the UI uses it: the bearer token, JSON calls, errors, and POST /query.

const TOKEN_KEY = "keystate.adminToken";

/** The pasted admin token, or "" when none; kept per tab in sessionStorage, never in localStorage. */
export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  const trimmed = value.trim();
  if (trimmed) sessionStorage.setItem(TOKEN_KEY, trimmed);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** A failed admin call: `status` is the HTTP status (0 when the admin could not be reached). */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

// The UI is served at <admin>/ui/, so the admin's routes are one level up (also behind a path prefix).
const BASE = new URL("..", document.baseURI);

/** Call the admin API; answers the parsed JSON body (null when empty), raises ApiError otherwise. */
export async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  const auth = token();
  if (auth) headers.Authorization = `Bearer ${auth}`;
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(new URL(path.replace(/^\//, ""), BASE), init);
  } catch (err) {
    throw new ApiError(0, `the admin API did not answer (${err.message}); is keystate running?`);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    throw new ApiError(response.status, explain(response.status, method, path, data));
  }
  return data;
}

function explain(status, method, path, data) {
  const message = data && typeof data.message === "string" ? data.message : "";
  if (status === 401) {
    return token()
      ? `the admin API refused the token (${message || "401"}); paste the right admin token with the Token button`
      : "the admin API requires a token: paste the admin token ($KEYSTATE_ADMIN_TOKEN on the server) with the Token button";
  }
  if (status === 404 && path === "/query") {
    return "this admin has no POST /query (SQL introspection); upgrade keystate to use the UI's tables";
  }
  return `${method} ${path} answered ${status}${message ? `: ${message}` : ""}`;
}

/** Run a read-only SQL query on the admin's read model; answers the rows as objects. */
export async function query(sql) {
  const data = await call("POST", "/query", { query: sql });
  return (data && data.rows) || [];
}

/** A SQL string literal (single quotes doubled), for values the user typed. */
export function sqlString(value) {
  return `'${String(value).replaceAll("'", "''")}'`;
}

/** Whether a service type (Restate's names, or keystate's older upper-case ones) has keys. */
export function isKeyed(ty) {
  return ["VirtualObject", "Workflow", "VIRTUAL_OBJECT", "WORKFLOW", "virtual_object", "workflow"].includes(ty);
}
