// Small SVG charts for the dashboard: bars (grouped or stacked, vertical or horizontal) and
// lines. Every mark carries data-series/data-label/data-value and a <title> tooltip.

const NS = "http://www.w3.org/2000/svg";
export const PALETTE = ["#3b5bdb", "#2f9e44", "#f08c00", "#ae3ec9", "#e03131", "#1098ad", "#5c940d", "#868e96"];

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

// Dates as "11-22" on the axis; any other label as it is.
const short = (label) => (/^\d{4}-\d\d-\d\d$/.test(String(label)) ? String(label).slice(5) : String(label));

function tip(node, text) {
  node.append(svg("title", {}, text));
  return node;
}

function legend(series) {
  const box = document.createElement("div");
  box.className = "legend";
  series.forEach((s, i) => {
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = s.color || PALETTE[i % PALETTE.length];
    item.append(swatch, s.name);
    box.append(item);
  });
  return box;
}

function empty(target, message) {
  const p = document.createElement("p");
  p.className = "nodata";
  p.textContent = message;
  target.replaceChildren(p);
}

function niceMax(value) {
  if (value <= 0) return 1;
  const step = 10 ** Math.floor(Math.log10(value));
  return Math.ceil(value / step) * step;
}

function yAxis(root, { left, top, height, width, max, format }) {
  for (let i = 0; i <= 4; i += 1) {
    const value = (max * i) / 4;
    const y = top + height - (height * i) / 4;
    root.append(svg("line", { x1: left, x2: left + width, y1: y, y2: y, class: "axis" }));
    root.append(svg("text", { x: left - 6, y: y + 4, "text-anchor": "end" }, format(value)));
  }
}

// labels: x categories; series: [{name, values: [number per label]}]
export function barChart(target, { labels, series, stacked = false, format = String, emptyText = "No data yet." }) {
  if (!labels.length || !series.length) return empty(target, emptyText);
  const W = 640, H = 240, left = 44, top = 10, bottom = 40, width = W - left - 10, height = H - top - bottom;
  const totals = labels.map((_, i) => series.reduce((sum, s) => sum + (s.values[i] || 0), 0));
  const max = niceMax(stacked ? Math.max(...totals) : Math.max(...series.flatMap((s) => s.values)));
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  yAxis(root, { left, top, height, width, max, format });
  const slot = width / labels.length;
  // Few categories must not make wall-wide bars.
  const barWidth = Math.min(stacked ? slot * 0.7 : (slot * 0.8) / series.length, 48);
  const inset = (slot - (stacked ? barWidth : barWidth * series.length)) / 2;
  labels.forEach((label, i) => {
    let base = 0;
    series.forEach((s, j) => {
      const value = s.values[i] || 0;
      const h = (height * value) / max;
      const x = left + slot * i + inset + (stacked ? 0 : barWidth * j);
      const y = top + height - h - (stacked ? (height * base) / max : 0);
      if (value > 0) {
        root.append(tip(svg("rect", {
          x, y, width: Math.max(barWidth - 1, 1), height: h, rx: 2,
          fill: s.color || PALETTE[j % PALETTE.length],
          "data-series": s.name, "data-label": label, "data-value": value,
        }), `${label} · ${s.name}: ${format(value)}`));
      }
      base += value;
    });
    if (labels.length <= 16 || i % Math.ceil(labels.length / 16) === 0) {
      root.append(svg("text", { x: left + slot * (i + 0.5), y: H - bottom + 16, "text-anchor": "middle" },
        short(label)));
    }
  });
  target.replaceChildren(root, legend(series));
}

// series: [{name, points: [[x, y], ...]}]; x: numbers or ISO dates (given as category labels).
export function lineChart(target, { labels, series, max, format = String, emptyText = "No data yet." }) {
  const points = series.flatMap((s) => s.points);
  if (!points.length) return empty(target, emptyText);
  const W = 640, H = 240, left = 44, top = 10, bottom = 40, width = W - left - 14, height = H - top - bottom;
  const top_ = max ?? niceMax(Math.max(...points.map((p) => p[1])));
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  yAxis(root, { left, top, height, width, max: top_, format });
  const xs = labels ?? [...new Set(points.map((p) => p[0]))].sort((a, b) => a - b);
  const xAt = (x) => left + (xs.length === 1 ? width / 2 : (width * xs.indexOf(x)) / (xs.length - 1));
  const yAt = (y) => top + height - (height * y) / top_;
  series.forEach((s, j) => {
    const color = s.color || PALETTE[j % PALETTE.length];
    const path = s.points.map((p, i) => `${i ? "L" : "M"}${xAt(p[0]).toFixed(1)},${yAt(p[1]).toFixed(1)}`);
    root.append(svg("path", { d: path.join(" "), fill: "none", stroke: color, "stroke-width": 2,
      "data-series": s.name }));
    for (const [x, y] of s.points) {
      root.append(tip(svg("circle", { cx: xAt(x), cy: yAt(y), r: 3, fill: color,
        "data-series": s.name, "data-label": x, "data-value": y }), `${s.name} · ${x}: ${format(y)}`));
    }
  });
  const every = Math.ceil(xs.length / 12);
  xs.forEach((x, i) => {
    if (i % every === 0) {
      root.append(svg("text", { x: xAt(x), y: H - bottom + 16, "text-anchor": "middle" },
        short(x)));
    }
  });
  target.replaceChildren(root, legend(series));
}

// items: [{label, value}] as horizontal bars, longest first.
export function hbarChart(target, { items, format = String, emptyText = "No data yet." }) {
  if (!items.length) return empty(target, emptyText);
  const row = 22, left = 230, W = 640, H = items.length * row + 8;
  const max = Math.max(...items.map((i) => i.value));
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  items.forEach((item, i) => {
    const y = 4 + i * row;
    const label = item.label.length > 38 ? `${item.label.slice(0, 37)}…` : item.label;
    root.append(tip(svg("text", { x: left - 8, y: y + 14, "text-anchor": "end" }, label), item.label));
    const w = ((W - left - 50) * item.value) / max;
    root.append(tip(svg("rect", { x: left, y: y + 3, width: Math.max(w, 1), height: row - 8, rx: 2,
      fill: PALETTE[0], "data-series": "citations", "data-label": item.label, "data-value": item.value }),
    `${item.label}: ${format(item.value)}`));
    root.append(svg("text", { x: left + w + 6, y: y + 14 }, format(item.value)));
  });
  target.replaceChildren(root);
}
