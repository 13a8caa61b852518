// Dashboard behaviour without inline scripts (CSP: script-src 'self').
"use strict";
document.addEventListener("click", (ev) => {
  const row = ev.target.closest(".wf-row");
  if (!row) return;
  document.querySelectorAll(".wf-row.selected").forEach((r) => r.classList.remove("selected"));
  document.querySelectorAll(".step-detail").forEach((d) => { d.hidden = true; });
  row.classList.add("selected");
  const detail = document.getElementById(row.dataset.target);
  if (detail) detail.hidden = false;
  const hint = document.getElementById("detail-hint");
  if (hint) hint.hidden = true;
});
document.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && ev.target.classList && ev.target.classList.contains("wf-row")) ev.target.click();
});

// Costs: the stacked series drawn as filled bands, each band the running sum of the groups below it.
function drawCostChart() {
  const holder = document.getElementById("cost-chart");
  const source = document.getElementById("cost-data");
  if (!holder || !source || typeof uPlot === "undefined") return;
  const data = JSON.parse(source.textContent);
  if (!data.x.length) { holder.textContent = "No costs in this window."; return; }
  const palette = ["#5b7cfa", "#14a38b", "#d4a10b", "#c2410c", "#8e5bd6", "#0e7490", "#be185d", "#4d7c0f", "#8b95a5"];
  const series = [{}];
  data.names.forEach((name, i) => {
    const color = palette[i % palette.length];
    series.push({ label: name, stroke: color, fill: color + "55", width: 1,
      value: (u, v) => (v == null ? "—" : "$" + v.toFixed(6)) });
  });
  // Later bands are drawn first so that each lower band's fill stays visible on top.
  const order = series.slice(1).map((_, i) => data.names.length - i);
  const opts = { width: holder.clientWidth || 900, height: 300, series: [series[0], ...order.map((i) => series[i])],
    axes: [{}, { values: (u, vals) => vals.map((v) => "$" + v) }] };
  const columns = [data.x, ...order.map((i) => data.stacked[i - 1])];
  new uPlot(opts, columns, holder);
}
document.addEventListener("DOMContentLoaded", drawCostChart);
