// Try it: one user's live list. Clicking an item posts a real click (POST /events, with the list's
// request_id); the list is fetched again every second, and the click counts as learned once the serving
// version's trained-through offset reaches the click's offset.

import { ago, api, el, every, say, setup } from "./console.js";

const REFRESH_MS = 1000;
const $ = (id) => document.getElementById(id);
let user = null;
let view = null;
let pending = null; // the last click: {item, title, offset, at (ms), version}
let slo = 30;

function itemMeta(item) {
  const parts = [item.genres.join(", "), item.year === null ? "" : String(item.year)].filter(Boolean);
  return parts.join(" · ") || "no genres or year recorded";
}

function render(next) {
  view = next;
  say($("user-id"), next.user_id);
  $("items").dataset.version = next.model_version;
  $("items").replaceChildren(...next.items.map((item, rank) => el("li", {},
    el("button", { type: "button", class: "item", "data-item": item.item_id, onclick: () => click(item) },
      el("span", { class: "rank" }, `${rank + 1}.`),
      el("span", { class: "title" }, item.title),
      el("span", { class: "score" }, item.score === null ? "" : item.score.toFixed(3)),
      el("span", { class: "meta" }, itemMeta(item)),
      ...(item.because ? [el("span", { class: "why" }, `because of ${item.because}`)] : [])))));
  const how = next.fallback ? "popular items (no usable history yet)" : "personalised";
  say($("served"), `${next.items.length} items, ${how}, from ${next.model_version} on arm ${next.arm}`, "muted");
  say($("version"), next.model_version);
  say($("arm"), Object.entries(next.arms).map(([exp, arm]) => `${arm} (${exp})`).join(", ") || next.arm);
  const published = next.published_at ? (Date.now() - Date.parse(next.published_at)) / 1000 : null;
  say($("published"), published === null ? "–" : ago(Math.max(0, published)));
  say($("trained"), next.trained_through === null ? "offline training" : `event-log offset ${next.trained_through}`);
  say($("applied"), `event-log offset ${next.applied_offset}`);
  $("why").replaceChildren(...(next.weighs_most.length ? next.weighs_most.map((i) => el("li", {}, i.title))
    : [el("li", { class: "muted" }, "the serving model cannot tell (popular items, or no known history)")]));
  $("history").replaceChildren(...(next.history.length ? next.history.map((i) => el("li", {}, i.title))
    : [el("li", { class: "muted" }, "nothing yet")]));
  followClick(next);
}

function followClick(next) {
  if (pending === null) return;
  const seconds = (performance.now() - pending.at) / 1000;
  const status = $("click-status");
  if (next.trained_through !== null && next.trained_through >= pending.offset) {
    status.dataset.roundTrip = seconds.toFixed(3);
    status.dataset.version = next.model_version;
    const within = seconds <= slo ? `within the ${slo} s freshness objective` : `over the ${slo} s objective`;
    say(status, `Learned: ${next.model_version} was trained through your click on “${pending.title}” ` +
      `(offset ${pending.offset}); ${seconds.toFixed(1)} s from click to this list, ${within}.`, "ok");
    pending = null;
  } else {
    say(status, `Click on “${pending.title}” logged at offset ${pending.offset}; the list already reflects your ` +
      `history. Waiting for a version trained on it: ${seconds.toFixed(0)} s.`, "muted");
  }
}

async function click(item) {
  const at = performance.now();
  try {
    const answer = await api("/events", { method: "POST", body: { events: [
      { user_id: view.user_id, item_id: item.item_id, event_type: "click", request_id: view.request_id }] } });
    pending = { item: item.item_id, title: item.title, offset: answer.offsets[1], at, version: view.model_version };
    say($("click-status"), `Click on “${item.title}” accepted at offset ${answer.offsets[1]}.`, "muted");
    $("click-status").dataset.offset = String(answer.offsets[1]);
    await refresh();
  } catch (error) {
    say($("error"), `The click was not accepted: ${error.message}`, "bad");
  }
}

async function refresh() {
  if (user === null) return;
  render(await api(`api/try/${encodeURIComponent(user)}?k=10`));
  say($("error"), "");
}

function choose(userId) {
  user = userId;
  pending = null;
  say($("click-status"), "");
  refresh().catch(showError);
}

function showError(error) { say($("error"), error.message, "bad"); }

async function main() {
  const session = await setup("try.html");
  slo = session.freshness_slo_s;
  const { users, total } = await api("api/users?limit=100");
  const select = $("user-select");
  select.replaceChildren(...users.map((u) => el("option", { value: u.user_id }, `${u.user_id} (${u.history_len} events)`)));
  select.setAttribute("aria-description", `${users.length} most recently active of ${total} users`);
  select.addEventListener("change", () => choose(select.value));
  $("new-user").addEventListener("click", () => choose(`anon-${crypto.randomUUID().slice(0, 8)}`));
  const wanted = new URLSearchParams(location.search).get("user");
  choose(wanted || (users.length ? users[0].user_id : `anon-${crypto.randomUUID().slice(0, 8)}`));
  if (wanted && users.some((u) => u.user_id === wanted)) select.value = wanted;
  every(REFRESH_MS, refresh, showError);
}

main().catch(showError);
