// Models: the registry's versions with their offline metrics and what serves them; promote and roll back
// (admin key, and only when the server has one configured); the training curves of the current version's run.

import { api, el, every, say, setup } from "./console.js";
import { lineChart } from "./chart.js";

const POLL_MS = 3000;
const $ = (id) => document.getElementById(id);
let admin = false;

function metricText(metrics) {
  const keys = Object.keys(metrics).filter((k) => /^(test|valid)\/(ndcg@10|hr@10|mrr)$/.test(k)).sort();
  return keys.map((k) => `${k} ${Number(metrics[k]).toFixed(4)}`).join("\n") || "–";
}

async function act(path, what) {
  say($("action-status"), `${what}…`, "muted");
  try {
    const answer = await api(path, { method: "POST" });
    say($("action-status"), `${answer.detail}; CURRENT is ${answer.current}.`, "ok");
    await refresh();
  } catch (error) {
    say($("action-status"), `${what} refused: ${error.message}`, "bad");
  }
}

function render(view) {
  say($("current"), view.current || "none");
  say($("rollback-target"), view.rollback_target || "nothing");
  $("rollback").disabled = !admin || !view.rollback_target;
  $("versions").replaceChildren(...view.versions.slice().reverse().map((v) => el("tr", { "data-version": v.version },
    el("th", { scope: "row" }, v.version + (v.current ? " (current)" : "") + (v.pinned ? " (pinned)" : "")),
    el("td", {}, v.created.replace("T", " ").slice(0, 19)),
    el("td", {}, v.model_name),
    el("td", { style: "white-space:pre-line" }, metricText(v.metrics)),
    el("td", {}, v.offset === null ? "offline" : `offset ${v.offset}, ${v.events_trained ?? 0} events`),
    el("td", {}, [...v.served_by.map((a) => `arm ${a}`), ...v.channels.map((c) => `channel ${c}`)].join(", ") || "–"),
    el("td", {}, el("button", { type: "button", class: "secondary promote", "aria-label": `Promote ${v.version}`,
      ...(admin && !v.current ? {} : { disabled: "" }),
      onclick: () => act(`api/models/${encodeURIComponent(v.version)}/promote`, `Promote ${v.version}`) }, "Promote")))));
  say($("curves-of"), view.curves_of ? `Curves of ${view.curves_of}, the offline run the current version descends from.`
    : "No training run on disk for the current version's lineage.", "muted");
  const curve = (name) => (view.curves[name] || []).map((p) => [p.step, p.value]);
  lineChart($("chart-train"), [{ name: "train loss", points: curve("train loss") }]);
  lineChart($("chart-valid"), [{ name: "NDCG@10", points: curve("valid ndcg@10") }, { name: "HR@10", points: curve("valid hr@10") }]);
  const online = view.versions.filter((v) => v.metrics["online/loss"] !== undefined)
    .map((v) => [Number(v.version.replace(/\D/g, "")), v.metrics["online/loss"]]);
  lineChart($("chart-online"), [{ name: "online loss", points: online }], { xText: (x) => `v${x.toFixed(0)}` });
  const events = view.versions.filter((v) => v.events_trained !== null)
    .map((v) => [Number(v.version.replace(/\D/g, "")), v.events_trained]);
  lineChart($("chart-events"), [{ name: "events trained", points: events }], { xText: (x) => `v${x.toFixed(0)}` });
}

async function refresh() { render(await api("api/models")); say($("error"), ""); }

async function main() {
  const session = await setup("models.html");
  admin = session.admin_enabled;
  say($("admin-note"), session.admin_note, "note");
  $("rollback").addEventListener("click", () => act("api/models/rollback", "Rollback"));
  every(POLL_MS, refresh, (error) => say($("error"), error.message, "bad"));
}

main().catch((error) => say($("error"), error.message, "bad"));
