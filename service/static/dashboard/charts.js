// Hand-drawn SVG charts: vertical bars (by day), horizontal bars (by model) and a budget gauge.
const SVG = "http://www.w3.org/2000/svg";

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, String(value));
  for (const child of children) el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return el;
}

function chart(width, height, label) {
  return s("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label, class: "chart" });
}

// points: [{label, value}] oldest first; `format` writes a value.
export function columnChart(points, label, format = String) {
  const width = 720;
  const height = 220;
  const pad = { top: 16, right: 8, bottom: 40, left: 56 };
  const svg = chart(width, height, label);
  svg.append(s("title", {}, label));
  const max = Math.max(0, ...points.map((p) => p.value)) || 1;
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  for (const fraction of [0, 0.5, 1]) {
    const y = pad.top + plotH * (1 - fraction);
    svg.append(
      s("line", { x1: pad.left, x2: width - pad.right, y1: y, y2: y, class: "grid" }),
      s("text", { x: pad.left - 6, y: y + 4, "text-anchor": "end", class: "axis" }, format(max * fraction)),
    );
  }
  const step = plotW / Math.max(points.length, 1);
  const labelEvery = Math.ceil(points.length / 10);
  points.forEach((point, i) => {
    const barH = (point.value / max) * plotH;
    const x = pad.left + i * step + step * 0.15;
    const bar = s("rect", { x, y: pad.top + plotH - barH, width: step * 0.7, height: barH, class: "bar" });
    bar.append(s("title", {}, `${point.label}: ${format(point.value)}`));
    svg.append(bar);
    if (i % labelEvery === 0) {
      svg.append(s("text", { x: x + step * 0.35, y: height - pad.bottom + 16, "text-anchor": "middle", class: "axis" }, point.label));
    }
  });
  if (!points.length) svg.append(s("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "axis" }, "no data"));
  return svg;
}

// rows: [{label, value}] drawn as one horizontal bar each.
export function barChart(rows, label, format = String) {
  const rowH = 26;
  const width = 720;
  const labelW = 220;
  const height = Math.max(rows.length, 1) * rowH + 8;
  const svg = chart(width, height, label);
  svg.append(s("title", {}, label));
  const max = Math.max(0, ...rows.map((r) => r.value)) || 1;
  rows.forEach((row, i) => {
    const y = 4 + i * rowH;
    const barW = ((width - labelW - 90) * row.value) / max;
    svg.append(
      s("text", { x: labelW - 8, y: y + 17, "text-anchor": "end", class: "axis" }, row.label),
      s("rect", { x: labelW, y: y + 4, width: barW, height: rowH - 8, class: "bar" }),
      s("text", { x: labelW + barW + 6, y: y + 17, class: "axis" }, format(row.value)),
    );
  });
  if (!rows.length) svg.append(s("text", { x: width / 2, y: 20, "text-anchor": "middle", class: "axis" }, "no data"));
  return svg;
}

// A half-circle gauge of used (spent + reserved) against a limit.
export function gauge(used, limit, label) {
  const svg = chart(240, 150, label);
  svg.append(s("title", {}, label));
  const fraction = limit > 0 ? Math.min(used / limit, 1) : 0;
  const r = 90;
  const cx = 120;
  const cy = 120;
  const arc = (f) => {
    const angle = Math.PI * (1 - f);
    return [cx + r * Math.cos(angle), cy - r * Math.sin(angle)];
  };
  const [ex, ey] = arc(fraction);
  svg.append(s("path", { d: `M ${cx - r} ${cy} A ${r} ${r} 0 0 1 ${cx + r} ${cy}`, class: "gauge-track" }));
  if (fraction > 0) {
    const level = fraction >= 1 ? "full" : fraction >= 0.8 ? "high" : "ok";
    svg.append(s("path", { d: `M ${cx - r} ${cy} A ${r} ${r} 0 0 1 ${ex} ${ey}`, class: `gauge-fill ${level}` }));
  }
  svg.append(s("text", { x: cx, y: cy - 10, "text-anchor": "middle", class: "gauge-value" }, `${Math.round(fraction * 100)}%`));
  return svg;
}
