// Live: the server's recent-window figures (GET /ui/api/live) every 2 s, as cards and as charts of the
// readings taken since the page opened.

import { ago, api, el, every, fmt, say, setup } from "./console.js";
import { lineChart } from "./chart.js";

const POLL_MS = 2000;
const KEEP = 300; // readings kept on the page: 10 minutes at one per 2 s
const $ = (id) => document.getElementById(id);
const history = [];

function card(label, value, id) {
  return el("div", { class: "card", id }, el("div", { class: "label" }, label), el("div", { class: "value" }, value));
}

function clock(unix) { return new Date(unix * 1000).toLocaleTimeString(); }

function render(now) {
  history.push(now);
  if (history.length > KEEP) history.shift();
  say($("window"), `Figures over the last ${fmt(now.window_s, 1)} s, read ${new Date(now.server_time * 1000).toLocaleTimeString()}.`, "muted");
  const ages = Object.entries(now.model_age_s).map(([arm, s]) => `${arm}: ${ago(s)}`).join(", ") || "–";
  $("cards").replaceChildren(
    card("Requests/s", fmt(now.qps, 1), "card-qps"),
    card("Latency p50", fmt(now.latency_p50_ms, 1, " ms"), "card-p50"),
    card("Latency p99", fmt(now.latency_p99_ms, 1, " ms"), "card-p99"),
    card("Freshness p50", fmt(now.freshness_p50_s, 2, " s"), "card-fresh50"),
    card("Freshness p99", fmt(now.freshness_p99_s, 2, " s"), "card-fresh99"),
    card("Events/s", fmt(now.events_per_s, 1), "card-events"),
    card("Event-log lag", now.event_log_lag === null ? "–" : String(now.event_log_lag), "card-lag"),
    card("Awaiting a version", String(now.freshness_pending), "card-pending"),
    card("Serving", Object.entries(now.served).map(([arm, v]) => `${v} (${arm})`).join(", ") || "–", "card-served"),
    card("Published", ages, "card-age"));
  const pts = (key) => history.filter((h) => h[key] !== null).map((h) => [h.server_time, h[key]]);
  lineChart($("chart-qps"), [{ name: "req/s", points: pts("qps") }], { xText: clock });
  lineChart($("chart-latency"), [{ name: "p50", points: pts("latency_p50_ms") }, { name: "p99", points: pts("latency_p99_ms") }],
    { xText: clock, yUnit: " ms" });
  lineChart($("chart-freshness"), [{ name: "p50", points: pts("freshness_p50_s") }, { name: "p99", points: pts("freshness_p99_s") }],
    { xText: clock, yUnit: " s" });
  lineChart($("chart-lag"), [{ name: "lag", points: pts("event_log_lag") }], { xText: clock });
  const versions = now.published.map(({ time, version }) => [time, Number(version.replace(/\D/g, ""))]);
  lineChart($("chart-versions"), [{ name: "version number", points: versions, step: true }],
    { xText: clock, summary: `${versions.length} retained versions, newest ${now.published.at(-1)?.version ?? "none"}` });
  $("chart-versions").dataset.count = String(versions.length);
  say($("error"), "");
}

async function main() {
  await setup("live.html");
  every(POLL_MS, async () => render(await api("api/live")), (error) => say($("error"), error.message, "bad"));
}

main().catch((error) => say($("error"), error.message, "bad"));
