// Experiments: one card per experiment (GET /ui/api/experiments, every 5 s) with its arms, the CTR per arm
// over time with confidence bands, each treatment's always-valid p-value against the alpha line, the
// sample-ratio check and, for a rollout, its stage, history and the operator's advance / stop / roll back
// (POST /experiments/{name}/{action}: admin key, and only when the server has one configured).

import { api, el, every, fmt, say, setup } from "./console.js";
import { COLORS, lineChart } from "./chart.js";

const POLL_MS = 5000;
const ACTIONS = [["advance", "Advance", "move the treatment to the next stage (or complete it at 100%)"],
  ["stop", "Stop", "freeze the rollout at this stage"],
  ["rollback", "Roll back", "put every user back on control"]];
const $ = (id) => document.getElementById(id);
const cards = new Map(); // experiment name -> {node, parts}
let admin = false;
const state = { alpha: 0.05 }; // the latest view's alpha: the p-value chart's line

function clock(unix) { return new Date(unix * 1000).toLocaleTimeString(); }
function pct(x) { return x === null || x === undefined ? "–" : `${(100 * x).toFixed(x < 0.1 ? 1 : 0)}%`; }
function p(x) { return x === null || x === undefined ? "–" : x < 0.001 ? x.toExponential(1) : x.toFixed(3); }
function signed(x, digits = 4) { return x === null || x === undefined ? "–" : `${x >= 0 ? "+" : ""}${x.toFixed(digits)}`; }

/** The card's fixed structure, built once per experiment so that polling keeps focus and scroll. */
function card(exp, i) {
  const id = (part) => `exp-${i}-${part}`;
  const parts = {
    srm: el("span", { class: "badge", id: id("srm") }),
    status: el("span", { id: id("status"), "aria-live": "polite" }),
    arms: el("tbody"),
    ctr: el("figure", { id: id("ctr") }, el("figcaption", {}, "CTR per arm over time (95% band)")),
    pvalue: el("figure", { id: id("pvalue") }, el("figcaption", {}, "Always-valid p-value against control")),
    rollout: el("div", { class: "rollout" }),
    interleaving: el("dl", { class: "facts" }),
    buttons: [],
  };
  const heading = el("h2", { id: id("heading") }, `${exp.name} `, el("span", { class: "muted" }, `${exp.kind} · layer ${exp.layer}`));
  const section = el("section", { class: "panel experiment", "aria-labelledby": id("heading"), "data-name": exp.name }, heading);
  if (exp.description) section.append(el("p", {}, exp.description));
  section.append(el("div", { class: "row" }, parts.srm, parts.status));
  if (exp.kind === "rollout") {
    const buttons = ACTIONS.map(([action, label, what]) => el("button", {
      type: "button", class: "secondary", "data-action": action, "aria-label": `${label} ${exp.name}`, title: what,
      disabled: "", onclick: () => act(exp.name, action, label, what, parts.status) }, label));
    parts.buttons = buttons;
    section.append(parts.rollout, el("div", { class: "row actions" }, ...buttons));
  }
  section.append(el("div", { style: "overflow-x:auto" }, el("table", {},
    el("caption", { class: "visually-hidden" }, `Arms of ${exp.name}`),
    el("thead", {}, el("tr", {}, ...["Arm", "Version", "Share", "Users", "Lists", "Clicks", "CTR (95% CI)",
      "vs control (95% CI)", "p", "Always-valid p"].map((h) => el("th", { scope: "col" }, h)))),
    parts.arms)));
  if (exp.kind === "interleave") section.append(el("h3", {}, "Interleaving"), parts.interleaving);
  else section.append(el("div", { class: "charts" }, parts.ctr, parts.pvalue));
  return { node: section, parts };
}

async function act(name, action, label, what, status) {
  if (!confirm(`${label} the rollout ${name}? This will ${what}.`)) return;
  say(status, `${label}…`, "muted");
  try {
    await api(`/experiments/${encodeURIComponent(name)}/${action}`, { method: "POST", body: { reason: "from the console" } });
    say(status, `${label}: done.`, "ok");
    await refresh();
  } catch (error) {
    say(status, `${label} refused: ${error.message}`, "bad");
  }
}

function srmText(srm, exp) {
  if (srm === null) {
    return [exp.kind === "interleave" ? "SRM: not applicable (every user sees both rankers)"
      : exp.kind === "rollout" ? "SRM: not checked (one arm holds every user at this stage)"
        : "SRM: not checked (needs two arms with shares)", "badge muted"];
  }
  if (srm.p_value === null) return ["SRM: no users yet", "badge muted"];
  const counts = srm.arms.map((a, j) => `${a} ${srm.users[j]} / ${pct(srm.expected[j])}`).join(", ");
  return srm.mismatch ? [`SRM mismatch: p = ${p(srm.p_value)} < ${srm.alpha} (${counts}); results cannot be trusted`, "badge bad"]
    : [`SRM ok: p = ${p(srm.p_value)} (${counts}; ${srm.scope})`, "badge ok"];
}

function renderRollout(box, r) {
  if (r === null) { box.replaceChildren(el("p", { class: "muted" }, "The rollout has not started yet.")); return; }
  const progress = el("progress", { max: String(r.steps), value: String(r.stage),
    "aria-label": `stage ${r.stage} of ${r.steps}` });
  const rows = r.history.slice().reverse().map((e) => el("tr", {},
    el("td", {}, clock(e.at)), el("td", {}, e.action), el("td", {}, `${e.from_stage} → ${e.to_stage}`),
    el("td", {}, e.source), el("td", {}, e.reasons.join("; "))));
  const last = r.last_decision ? `Last look ${clock(r.last_decision.at)}: ${r.last_decision.action} (${r.last_decision.reasons.join("; ")}).` : "";
  box.replaceChildren(
    el("div", { class: "row" }, el("strong", {}, `Stage ${r.stage} of ${r.steps}`), progress,
      el("span", {}, `${pct(r.treatment_share)} on treatment · ${r.status} · stage began ${clock(r.stage_started_at)}`)),
    el("p", { class: "muted" }, last),
    el("details", {}, el("summary", {}, `History (${r.history.length} changes)`),
      el("table", {}, el("caption", { class: "visually-hidden" }, "Rollout history, newest first"),
        el("thead", {}, el("tr", {}, ...["When", "Action", "Stage", "By", "Why"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, ...rows))));
}

function renderCard(exp, { node, parts }) {
  const [text, kind] = srmText(exp.srm, exp);
  say(parts.srm, text, kind);
  for (const b of parts.buttons) b.disabled = !admin;
  if (exp.kind === "rollout") renderRollout(parts.rollout, exp.rollout);
  parts.arms.replaceChildren(...exp.arms.map((a) => el("tr", { "data-arm": a.name },
    el("th", { scope: "row" }, a.name + (a.name === exp.control ? " (control)" : "")),
    el("td", {}, a.version || (Object.keys(a.params).length ? JSON.stringify(a.params) : "–")),
    el("td", {}, pct(a.share)), el("td", {}, String(a.users)), el("td", {}, String(a.lists)), el("td", {}, String(a.clicks)),
    el("td", {}, a.ctr === null ? "–" : `${fmt(a.ctr, 4)} [${fmt(a.ctr_low, 4)}, ${fmt(a.ctr_high, 4)}]`),
    el("td", {}, a.diff === null ? "–" : `${signed(a.diff)} [${signed(a.diff_low)}, ${signed(a.diff_high)}]`),
    el("td", {}, p(a.p_value)), el("td", {}, p(a.p_value_sequential)))));
  if (exp.kind === "interleave") {
    const v = exp.interleaving;
    const facts = v === null ? [["Lists", "no interleaved list yet"]] : [
      ["Lists / users", `${v.lists} / ${v.users}`],
      ["Users preferring", `${exp.arms[0].name} ${v.users_preferring_first}, ${exp.arms[1].name} ${v.users_preferring_second}, tied ${v.users_tied}`],
      ["Vote test (sign test over users)", `${signed(v.delta, 3)} [${signed(v.ci_low, 3)}, ${signed(v.ci_high, 3)}], p = ${p(v.p_value)}`],
      ["Click test (paired t-test)", v.p_value_clicks === null ? "too few users"
        : `${signed(v.click_difference, 3)} [${signed(v.click_ci_low, 3)}, ${signed(v.click_ci_high, 3)}], p = ${p(v.p_value_clicks)}`]];
    parts.interleaving.replaceChildren(...facts.flatMap(([k, val]) => [el("dt", {}, k), el("dd", {}, val)]));
    return;
  }
  const color = new Map(exp.arms.map((a, j) => [a.name, COLORS[j % COLORS.length]]));
  const valid = (s, key) => s.times.map((t, j) => [t, s[key][j]]).filter(([, y]) => y !== null);
  lineChart(parts.ctr, exp.timeline.map((s) => ({
    name: s.arm, color: color.get(s.arm), points: valid(s, "ctr"),
    band: s.times.map((t, j) => [t, s.ctr_low[j], s.ctr_high[j]]).filter(([, lo, hi]) => lo !== null && hi !== null) })),
  { xText: clock });
  const treated = exp.timeline.filter((s) => s.p_value !== null);
  const times = exp.timeline.flatMap((s) => s.times);
  const alpha = times.length ? [[Math.min(...times), state.alpha], [Math.max(...times), state.alpha]] : [];
  lineChart(parts.pvalue, [...treated.map((s) => ({ name: `${s.arm} vs ${exp.control}`, color: color.get(s.arm), points: valid(s, "p_value") })),
    { name: `alpha ${state.alpha.toFixed(2)}`, color: "#b00020", points: treated.length ? alpha : [] }],
  { xText: clock, summary: treated.map((s) => `${s.arm}: always-valid p ${p(valid(s, "p_value").at(-1)?.[1])}`).join("; ") || "no treatment with data yet" });
  node.dataset.lists = String(exp.arms.reduce((n, a) => n + a.lists, 0));
}

function render(view) {
  state.alpha = view.alpha;
  const minutes = Math.round((view.until - view.since) / 60);
  say($("window"), view.note ? view.note
    : `Lists served in the last ${minutes} min: ${view.lists} lists, ${view.events} events read, at ${clock(view.until)}`
      + (view.truncated ? " (more lists than one reading takes: the newest are left out)." : "."), view.note ? "bad" : "muted");
  view.experiments.forEach((exp, i) => {
    if (!cards.has(exp.name)) {
      const made = card(exp, i);
      cards.set(exp.name, made);
      $("experiments").append(made.node);
    }
    renderCard(exp, cards.get(exp.name));
  });
  if (!view.experiments.length) say($("experiments"), "This server runs no experiment.", "muted");
}

async function refresh() { render(await api("api/experiments")); say($("error"), ""); }

async function main() {
  const session = await setup("experiments.html");
  admin = session.admin_enabled;
  say($("admin-note"), session.admin_note, "note");
  every(POLL_MS, refresh, (error) => say($("error"), error.message, "bad"));
}

main().catch((error) => say($("error"), error.message, "bad"));
