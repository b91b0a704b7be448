// Shared by every page: the header (navigation and the API key field), calls to the server, formatting.
// The key is kept in sessionStorage (gone when the tab closes) and sent as the API's own header.

const KEY_STORAGE = "seekrec.apiKey";
const PAGES = [["try.html", "Try it"], ["live.html", "Live"], ["experiments.html", "Experiments"], ["models.html", "Models"]];

export class ApiError extends Error {
  constructor(status, detail) { super(`${status}: ${detail}`); this.status = status; this.detail = detail; }
}

/** Fetch JSON from the server with the stored key; an ApiError carries the server's `detail`. */
export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { detail: text }; }
  if (!response.ok) {
    const detail = data && data.detail !== undefined ? data.detail : response.statusText;
    throw new ApiError(response.status, typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return data;
}

/** Build the header: page links (the current one marked), the key field; returns /ui/api/session. */
export async function setup(current) {
  const header = document.createElement("header");
  const links = PAGES.map(([href, name]) =>
    `<li><a href="${href}"${href === current ? ' aria-current="page"' : ""}>${name}</a></li>`).join("");
  header.innerHTML = `<span class="brand">seekrec console</span>
    <nav aria-label="Console pages"><ul>${links}</ul></nav>
    <form class="key" id="key-form">
      <label for="api-key">API key</label>
      <input id="api-key" type="password" autocomplete="off" placeholder="optional">
      <button type="submit" class="secondary">Use key</button>
    </form>`;
  document.body.prepend(header);
  const input = header.querySelector("#api-key");
  input.value = sessionStorage.getItem(KEY_STORAGE) || "";
  header.querySelector("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.value) sessionStorage.setItem(KEY_STORAGE, input.value); else sessionStorage.removeItem(KEY_STORAGE);
    location.reload();
  });
  return api("api/session");
}

/** Replace the children of `element` with text (never HTML: titles come from data). */
export function say(element, text, kind = "") {
  element.textContent = text;
  element.className = kind;
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

export function fmt(value, digits = 1, unit = "") {
  return value === null || value === undefined || Number.isNaN(value) ? "–" : `${Number(value).toFixed(digits)}${unit}`;
}

export function ago(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 90) return `${seconds.toFixed(0)} s ago`;
  if (seconds < 5400) return `${(seconds / 60).toFixed(0)} min ago`;
  return `${(seconds / 3600).toFixed(1)} h ago`;
}

/** Run `job` now and every `ms`, never two at once; errors go to `onError`. */
export function every(ms, job, onError) {
  let running = false;
  const tick = async () => {
    if (running) return;
    running = true;
    try { await job(); } catch (error) { onError(error); } finally { running = false; }
  };
  tick();
  return setInterval(tick, ms);
}
