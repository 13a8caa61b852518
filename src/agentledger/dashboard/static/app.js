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
