// Line charts as inline SVG: a few series of (x, y) points, optional confidence bands, y-axis ticks and an
// x range label. Small on purpose: the console needs trends, not an interactive plotting library.

const NS = "http://www.w3.org/2000/svg";
export const COLORS = ["#0b5cad", "#c2410c", "#1b6e20", "#7b1fa2", "#b00020", "#00695c"];
const W = 360, H = 180, PAD = { left: 46, right: 10, top: 10, bottom: 26 };

function node(tag, attrs, text) {
  const n = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  if (text !== undefined) n.textContent = text;
  return n;
}

function short(v) {
  const a = Math.abs(v);
  if (a >= 1000) return `${(v / 1000).toFixed(1)}k`;
  if (a >= 10 || v === 0) return v.toFixed(0);
  if (a >= 1) return v.toFixed(1);
  return v.toPrecision(2);
}

/**
 * Draw `series` ([{name, points: [[x, y]], band: [[x, lo, hi]]?, step: bool?}]) into a new <svg> inside
 * `figure`, replacing the previous one; `xText(x)` labels the x range. The <svg> gets a text summary for
 * screen readers (role="img" + aria-label).
 */
export function lineChart(figure, series, { xText = short, yUnit = "", summary = "" } = {}) {
  const all = series.flatMap((s) => [...s.points, ...(s.band || []).flatMap(([x, lo, hi]) => [[x, lo], [x, hi]])]);
  const svg = node("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img" });
  const label = summary || series.map((s) => `${s.name}: ${s.points.length ? short(s.points.at(-1)[1]) + yUnit : "no data"}`).join("; ");
  svg.setAttribute("aria-label", label);
  if (all.length === 0) {
    svg.append(node("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no data yet"));
  } else {
    let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
    let [y0, y1] = [Math.min(0, ...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
    if (x1 === x0) x1 = x0 + 1;
    if (y1 === y0) y1 = y0 + 1;
    const px = (x) => PAD.left + ((x - x0) / (x1 - x0)) * (W - PAD.left - PAD.right);
    const py = (y) => H - PAD.bottom - ((y - y0) / (y1 - y0)) * (H - PAD.top - PAD.bottom);
    for (const y of [y0, (y0 + y1) / 2, y1]) {
      svg.append(node("line", { x1: PAD.left, x2: W - PAD.right, y1: py(y), y2: py(y), stroke: "#e0e0e0" }));
      svg.append(node("text", { x: PAD.left - 4, y: py(y) + 4, "text-anchor": "end" }, short(y) + yUnit));
    }
    svg.append(node("text", { x: PAD.left, y: H - 6 }, xText(x0)));
    svg.append(node("text", { x: W - PAD.right, y: H - 6, "text-anchor": "end" }, xText(x1)));
    series.forEach((s, i) => {
      const color = s.color || COLORS[i % COLORS.length];
      if (s.band && s.band.length) {
        const upper = s.band.map(([x, , hi]) => `${px(x)},${py(hi)}`);
        const lower = s.band.slice().reverse().map(([x, lo]) => `${px(x)},${py(lo)}`);
        svg.append(node("polygon", { points: [...upper, ...lower].join(" "), fill: color, "fill-opacity": 0.15 }));
      }
      let pts = s.points;
      if (s.step) pts = pts.flatMap((p, j) => (j ? [[p[0], pts[j - 1][1]], p] : [p]));
      if (pts.length === 1) {
        svg.append(node("circle", { cx: px(pts[0][0]), cy: py(pts[0][1]), r: 3, fill: color }));
      } else if (pts.length > 1) {
        svg.append(node("polyline", { points: pts.map(([x, y]) => `${px(x)},${py(y)}`).join(" "), fill: "none",
          stroke: color, "stroke-width": 2 }));
      }
    });
  }
  const legend = document.createElement("div");
  legend.className = "legend";
  series.forEach((s, i) => {
    const item = document.createElement("span");
    item.style.setProperty("--c", s.color || COLORS[i % COLORS.length]);
    item.textContent = s.name;
    legend.append(item);
  });
  figure.querySelectorAll("svg, .legend").forEach((n) => n.remove());
  figure.append(svg, legend);
}
