"use strict";
// mlpulse dashboard: one WebSocket, a snapshot merged with diffs, canvas charts, no build step.
(() => {
  const $ = (id) => document.getElementById(id);
  const state = { snapshot: {}, pos: {}, gaps: 0, connected: false, messages: 0 };
  window.mlpulse = state;  // read by the end-to-end tests and handy in the console

  const fmt = (v, digits = 2) =>
    v === null || v === undefined ? "–" :
    Number.isInteger(v) ? v.toLocaleString("en-US") :
    v.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });

  function setValue(id, value, digits) {
    const el = $(id);
    const text = fmt(value, digits);
    if (el.textContent !== text) {
      el.textContent = text;
      el.dataset.value = value === null || value === undefined ? "" : String(value);
      el.classList.remove("flash"); void el.offsetWidth; el.classList.add("flash");
    }
    el.classList.toggle("nonzero", Boolean(value));
  }

  function renderCards(s) {
    if (!s) return;
    setValue("m-count", s.count);
    setValue("m-mae", s.mae);
    setValue("m-rmse", s.rmse);
    setValue("m-p50", s.p50);
    setValue("m-p95", s.p95);
    setValue("m-rate", s.events_per_s, 1);
    setValue("m-unmatched", s.unmatched);
    setValue("m-rejected", s.rejected);
  }

  function canvas(idOrElement) {
    const c = typeof idOrElement === "string" ? $(idOrElement) : idOrElement;
    const ratio = window.devicePixelRatio || 1;
    const w = c.clientWidth, h = c.clientHeight || 240;
    if (c.width !== Math.round(w * ratio) || c.height !== Math.round(h * ratio)) {
      c.width = Math.round(w * ratio); c.height = Math.round(h * ratio);
    }
    const ctx = c.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.setLineDash([]);
    ctx.font = "11px system-ui, sans-serif";
    return { ctx, w, h };
  }

  function axes(ctx, w, h, pad, yMax, label, format) {
    ctx.strokeStyle = "#e2e8f0"; ctx.fillStyle = "#64748b"; ctx.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const y = pad.t + (h - pad.t - pad.b) * (1 - i / 4);
      ctx.beginPath(); ctx.moveTo(pad.l, y); ctx.lineTo(w - pad.r, y); ctx.stroke();
      ctx.fillText(format ? format(yMax * i / 4) : fmt(yMax * i / 4, yMax < 10 ? 1 : 0), 4, y + 3);
    }
    ctx.fillText(label, pad.l, h - 4);
  }

  function renderHistogram(hist) {
    if (!hist || !hist.counts || !hist.counts.length) return;
    const { ctx, w, h } = canvas("hist");
    const pad = { l: 48, r: 10, t: 10, b: 30 };
    const counts = hist.counts.slice(0, -1);
    let last = counts.length - 1;
    while (last > 0 && counts[last] === 0) last--;
    const shown = counts.slice(0, Math.max(last + 1, 10));
    const overflow = hist.counts[hist.counts.length - 1];
    // Counts are whole: a top that divides by the four gridlines keeps every tick whole.
    const max = Math.ceil(Math.max(1, ...shown) / 4) * 4;
    axes(ctx, w, h, pad, max, "absolute error", (v) => fmt(v, 0));
    const bw = (w - pad.l - pad.r) / shown.length;
    ctx.fillStyle = "#3b82f6";
    shown.forEach((c, i) => {
      const bh = (h - pad.t - pad.b) * c / max;
      ctx.fillRect(pad.l + i * bw + 1, h - pad.b - bh, Math.max(1, bw - 2), bh);
    });
    ctx.fillStyle = "#64748b";
    const step = Math.ceil(shown.length / 8);
    for (let i = 0; i <= shown.length; i += step) {
      ctx.fillText(fmt(i * hist.bin_width, 0), pad.l + i * bw - 6, h - pad.b + 14);
    }
    $("hist-note").textContent = overflow ? `${fmt(overflow)} beyond ${fmt(counts.length * hist.bin_width, 0)}` : "";
  }

  function renderSeries(series) {
    if (!series || !series.length) return;
    const { ctx, w, h } = canvas("series");
    const pad = { l: 48, r: 10, t: 10, b: 30 };
    const maes = series.map((p) => p.mae).filter((v) => v !== null);
    const max = Math.max(1, ...maes) * 1.1;
    axes(ctx, w, h, pad, max, "seconds ago → now");
    const x = (i) => pad.l + (w - pad.l - pad.r) * i / (series.length - 1);
    const y = (v) => h - pad.b - (h - pad.t - pad.b) * v / max;
    const maxCount = Math.max(1, ...series.map((p) => p.count));
    ctx.fillStyle = "rgba(148, 163, 184, 0.25)";
    series.forEach((p, i) => {
      const bh = (h - pad.t - pad.b) * 0.35 * p.count / maxCount;
      ctx.fillRect(x(i) - 1, h - pad.b - bh, 2, bh);
    });
    ctx.strokeStyle = "#dc2626"; ctx.lineWidth = 2; ctx.beginPath();
    let pen = false;
    series.forEach((p, i) => {
      if (p.mae === null) { pen = false; return; }
      if (pen) ctx.lineTo(x(i), y(p.mae)); else ctx.moveTo(x(i), y(p.mae));
      pen = true;
    });
    ctx.stroke();
  }

  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  const ID_SHOWN = 12;

  function renderRecent(rows) {
    if (!rows) return;
    const body = $("recent");
    const max = Math.max(1, ...rows.map((r) => r.absolute_error));
    body.replaceChildren(...rows.slice(0, 12).map((r) => {
      const tr = document.createElement("tr");
      const err = cell(fmt(r.absolute_error));
      const bar = document.createElement("span");
      bar.className = "bar"; bar.style.width = `${Math.round(40 * r.absolute_error / max)}px`;
      err.appendChild(bar);
      // Ids of one run share their start: show the end that tells them apart, all on hover.
      const id = String(r.id), idCell = cell(id.length > ID_SHOWN ? `…${id.slice(-ID_SHOWN)}` : id);
      idCell.title = id;
      tr.append(idCell, cell(fmt(r.y_true)), cell(fmt(r.y_pred)), err, cell(r.model_version || "–"));
      return tr;
    }));
  }

  function renderVersions(v) {
    if (!v) return;
    $("versions").replaceChildren(...Object.entries(v).sort().map(([name, s]) => {
      const tr = document.createElement("tr");
      tr.append(cell(name || "–"), cell(fmt(s.count)), cell(fmt(s.mae)), cell(fmt(s.rmse)));
      return tr;
    }));
  }

  // ------------------------------------------------------------ drift
  const STATUS_COLOURS = { ok: "#16a34a", warn: "#d97706", drift: "#dc2626", insufficient: "#94a3b8" };
  const MAE_COLOURS = { estimated: "#2563eb", realized: "#dc2626", reference: "#94a3b8", change: "#d97706" };
  const drift = { window: "300", markers: [] };  // the window shown, and the MAE chart's change marks

  const missing = (v) => v === null || v === undefined;
  const fixed = (v, digits) => missing(v) ? "–" : v.toFixed(digits);
  const share = (v) => missing(v) ? "–" : v === 0 ? "0%" : v < 0.001 ? "<0.1%" : `${(100 * v).toFixed(1)}%`;
  const clock = (t, seconds) => new Date(t * 1000).toLocaleTimeString([], {
    hour: "2-digit", minute: "2-digit", second: seconds ? "2-digit" : undefined, hourCycle: "h23" });
  // The next of 1, 2, 4, 6, 8 times a power of ten, so that the axis's quarters are round.
  const roundUp = (v) => {
    const step = 10 ** Math.floor(Math.log10(v));
    return [1, 2, 4, 6, 8, 10].map((m) => m * step).find((m) => m >= v);
  };
  const windowName = (s) => {
    const n = Number(s);
    return n % 3600 === 0 ? `${n / 3600} h` : n % 60 === 0 ? `${n / 60} min` : `${n} s`;
  };

  // A line through the values at x(i); a null is a gap, and a value between two gaps a dot.
  // Estimated MAE dashed, realized MAE solid, in the given colours.
  function traceMaes(ctx, estimated, realized, colours, x, y) {
    ctx.lineWidth = 2;
    ctx.setLineDash([6, 4]);
    ctx.strokeStyle = ctx.fillStyle = colours.estimated;
    trace(ctx, estimated, x, y);
    ctx.setLineDash([]);
    ctx.strokeStyle = ctx.fillStyle = colours.realized;
    trace(ctx, realized, x, y);
  }

  function trace(ctx, values, x, y) {
    ctx.beginPath();
    values.forEach((v, i) => {
      if (missing(v)) return;
      if (missing(values[i - 1])) ctx.moveTo(x(i), y(v)); else ctx.lineTo(x(i), y(v));
    });
    ctx.stroke();
    values.forEach((v, i) => {
      if (missing(v) || !(missing(values[i - 1]) && missing(values[i + 1]))) return;
      ctx.beginPath(); ctx.arc(x(i), y(v), 2.5, 0, 2 * Math.PI); ctx.fill();
    });
  }

  function renderSparkline(el, values, status, times) {
    const { ctx, w, h } = canvas(el);
    const known = values.filter((v) => !missing(v));
    ctx.strokeStyle = "#e2e8f0"; ctx.setLineDash([2, 3]);
    ctx.beginPath(); ctx.moveTo(0, h - 3); ctx.lineTo(w, h - 3); ctx.stroke();
    ctx.setLineDash([]);
    if (!known.length) {
      el.title = "no 5-minute block of the last hour had enough events for a PSI";
      return;
    }
    // At least 0.25 high, so sampling noise around zero stays a flat line near the floor.
    const max = Math.max(0.25, ...known) * 1.1;
    const x = (i) => 3 + (w - 6) * i / Math.max(1, values.length - 1);
    const y = (v) => h - 3 - (h - 6) * v / max;
    const colour = status === "drift" || status === "warn" ? STATUS_COLOURS[status] : "#64748b";
    ctx.strokeStyle = colour; ctx.fillStyle = colour; ctx.lineWidth = 1.5;
    trace(ctx, values, x, y);
    const top = values.indexOf(Math.max(...known));
    el.title = `PSI per 5 minutes, last hour; highest ${fixed(values[top], 2)} at ${clock(times[top])}`;
  }

  function driftRow(name, col, label) {
    const tr = document.createElement("tr");
    tr.dataset.feature = name;
    tr.dataset.status = col.status;
    const head = cell(label);
    head.title = name;
    const psi = cell(fixed(col.psi, 2));
    psi.title = `PSI ${fixed(col.psi, 3)} · Wasserstein ${fixed(col.wasserstein, 2)} std`;
    const status = document.createElement("td");
    const chip = document.createElement("span");
    chip.className = `chip chip-${col.status}`; chip.textContent = col.status;
    status.append(chip);
    const spark = document.createElement("td");
    spark.className = "spark";
    spark.append(document.createElement("canvas"));
    tr.append(head, psi, status, cell(share(col.out_of_range)), spark);
    return tr;
  }

  function renderWindowSwitch(names) {
    const box = $("d-windows");
    if (box.dataset.windows !== names.join(",")) {
      box.dataset.windows = names.join(",");
      box.replaceChildren(...names.map((name) => {
        const b = document.createElement("button");
        b.type = "button"; b.dataset.window = name; b.textContent = windowName(name);
        return b;
      }));
    }
    for (const b of box.children) b.setAttribute("aria-pressed", String(b.dataset.window === drift.window));
  }

  function renderAlert(report) {
    const el = $("d-alert");
    const cols = [...report.features, { name: "prediction", ...report.prediction }];
    const moved = cols.filter((c) => c.status === "drift").map((c) => c.name);
    const warned = cols.filter((c) => c.status === "warn").map((c) => c.name);
    const known = cols.some((c) => c.status !== "insufficient");
    el.hidden = !known;
    el.className = `chip chip-${moved.length ? "drift" : warned.length ? "warn" : "ok"}`;
    el.textContent = moved.length ? `drift: ${moved.join(", ")}` : warned.length ? `warning: ${warned.join(", ")}` : "no drift";
  }

  function renderChanges(changes) {
    const list = $("d-changes");
    if (!changes.length) {
      const li = document.createElement("li");
      li.className = "muted"; li.textContent = "No change in the error level detected.";
      list.replaceChildren(li);
      return;
    }
    list.replaceChildren(...changes.slice(-3).reverse().map((c) => {
      const li = document.createElement("li");
      const up = c.after > c.before;
      li.className = up ? "up" : "down";
      li.textContent = `${clock(c.at, true)}  error level ${up ? "rose" : "fell"} ${fixed(c.before, 1)} → ${fixed(c.after, 1)}`;
      return li;
    }));
  }

  function renderMaeChart(trend, report, changes) {
    const { ctx, w, h } = canvas("d-mae");
    const pad = { l: 40, r: 12, t: 22, b: 22 };
    drift.markers = [];
    if (!trend || !trend.t.length) {
      ctx.fillStyle = "#64748b";
      ctx.fillText("No trend yet: it needs this version's reference profile.", pad.l, h / 2);
      return;
    }
    const n = trend.t.length, t0 = trend.t[0], t1 = trend.t[n - 1] + trend.block_s;
    const ref = report.reference_mae;
    const seen = [...trend.estimated_mae, ...trend.realized_mae, ref].filter((v) => !missing(v));
    const max = roundUp(Math.max(1, ...seen) * 1.1);
    axes(ctx, w, h, pad, max, "");
    const at = (t) => pad.l + (w - pad.l - pad.r) * (t - t0) / (t1 - t0);
    const x = (i) => at(trend.t[i] + trend.block_s / 2);
    const y = (v) => h - pad.b - (h - pad.t - pad.b) * v / max;
    ctx.fillStyle = "#64748b";
    for (let i = 0; i < n; i += 3) ctx.fillText(clock(trend.t[i]), at(trend.t[i]) - 14, h - 6);
    ctx.textAlign = "right"; ctx.fillText("now", w - pad.r, h - 6); ctx.textAlign = "left";
    if (!missing(ref)) {
      ctx.strokeStyle = MAE_COLOURS.reference; ctx.lineWidth = 1; ctx.setLineDash([2, 3]);
      ctx.beginPath(); ctx.moveTo(pad.l, y(ref)); ctx.lineTo(w - pad.r, y(ref)); ctx.stroke();
    }
    traceMaes(ctx, trend.estimated_mae, trend.realized_mae, MAE_COLOURS, x, y);
    // Each change inside the hour: a vertical mark at its time, "before → after" on top;
    // labels alternate between two rows so that close changes stay legible.
    ctx.lineWidth = 1.5;
    changes.filter((c) => c.at >= t0 && c.at <= t1).forEach((c, k) => {
      const cx = at(c.at), text = `${fixed(c.before, 1)} → ${fixed(c.after, 1)}`;
      ctx.strokeStyle = ctx.fillStyle = MAE_COLOURS.change; ctx.setLineDash([4, 3]);
      ctx.beginPath(); ctx.moveTo(cx, pad.t); ctx.lineTo(cx, h - pad.b); ctx.stroke();
      ctx.setLineDash([]);
      const tw = ctx.measureText(text).width;
      ctx.fillText(text, Math.min(Math.max(cx - tw / 2, 2), w - tw - 2), k % 2 ? 20 : 10);
      drift.markers.push({ x: cx, text: `error level changed at ${clock(c.at, true)}: ${text}` });
    });
  }

  function renderDrift(d) {
    if (!d) return;
    const windows = d.windows || {};
    const names = Object.keys(windows).sort((a, b) => Number(a) - Number(b));
    if (!names.includes(drift.window)) drift.window = names.includes("300") ? "300" : names[0];
    renderWindowSwitch(names);
    const report = windows[drift.window];
    if (!report) {
      $("d-note").textContent = d.model_version ? `model ${d.model_version}: no report yet` : "no model version is registered yet";
      return;
    }
    const name = windowName(drift.window);
    $("d-note").textContent = `model ${report.model_version || d.model_version || "–"} · ${fmt(report.events)} events in the last ${name} · ${fmt(report.labelled)} labelled`;
    const off = $("d-unavailable");
    off.hidden = !report.unavailable;
    off.textContent = report.unavailable || "";
    $("drift").querySelector(".drift-body").hidden = Boolean(report.unavailable);
    $("d-alert").hidden = true;
    if (report.unavailable) {
      $("d-features").replaceChildren(); $("d-prediction").replaceChildren();
      return;
    }
    renderAlert(report);
    const psi = (d.trend && d.trend.psi) || {};
    const rows = report.features.map((f) => [driftRow(f.name, f, f.name), psi[f.name]]);
    const pred = [driftRow("prediction", report.prediction, "prediction"), psi.prediction];
    $("d-features").replaceChildren(...rows.map(([tr]) => tr));
    $("d-prediction").replaceChildren(pred[0]);
    const times = (d.trend && d.trend.t) || [];
    for (const [tr, values] of [...rows, pred]) {
      renderSparkline(tr.querySelector("canvas"), values || [], tr.dataset.status, times);
    }
    setValue("d-est", report.estimated_mae);
    setValue("d-est-unlabelled", report.estimated_mae_unlabelled);
    setValue("d-realized", report.realized_mae);
    const refKey = $("d-ref");
    refKey.hidden = missing(report.reference_mae);
    refKey.textContent = `reference ${fixed(report.reference_mae, 1)}`;
    const changes = report.changes || (windows["3600"] && windows["3600"].changes) || [];
    renderChanges(changes);
    renderMaeChart(d.trend, report, changes);
  }

  $("d-windows").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-window]");
    if (!b) return;
    drift.window = b.dataset.window;
    renderDrift(state.snapshot.drift);
  });
  $("d-mae").addEventListener("mousemove", (ev) => {
    const x = ev.clientX - ev.target.getBoundingClientRect().left;
    const near = drift.markers.filter((m) => Math.abs(m.x - x) <= 6).map((m) => m.text);
    ev.target.title = near.join("\n");
  });

  // ------------------------------------------------------------ alerts
  // The snapshot's section is the truth; an `alert` message is shown at once and corrected
  // by the next snapshot (a few seconds later).
  const alerts = { view: null, admin: false, done: new Map(), toasts: [], toastTimer: 0 };
  const HISTORY_SHOWN = 10;
  const SEVERITY_RANK = { info: 1, warning: 2, critical: 3 };
  const LABEL_NAMES = { model_version: "version" };
  const TOAST_MS = 8000;

  // The labels a person reads, feature first: alertname and severity are shown elsewhere.
  const labelEntries = (labels) => Object.entries(labels || {})
    .filter(([k]) => k !== "alertname" && k !== "severity")
    .sort(([a], [b]) => (a === "feature" ? -1 : b === "feature" ? 1 : a < b ? -1 : a > b ? 1 : 0));
  const labelValues = (labels) => labelEntries(labels).map(([, v]) => v).join(", ");
  const sameAlert = (a, b) => a.rule === b.rule &&
    JSON.stringify(labelEntries(a.labels)) === JSON.stringify(labelEntries(b.labels));
  // PSI, rates, MAE and events/s share one column: about three significant digits.
  const quantity = (v) => {
    if (missing(v)) return "–";
    const a = Math.abs(v);
    return a === 0 ? "0" : a >= 100 ? fmt(Math.round(v)) : a >= 1 ? v.toFixed(2)
      : String(Number(v.toPrecision(2)));
  };
  function ago(t) {
    const s = Math.max(0, Date.now() / 1000 - t);
    return s < 60 ? `${Math.floor(s)} s` : s < 3600 ? `${Math.floor(s / 60)} min` :
      s < 86400 ? `${Math.floor(s / 3600)} h ${Math.floor(s % 3600 / 60)} min` : `${Math.floor(s / 86400)} d`;
  }

  function span(text, cls) {
    const el = document.createElement("span");
    el.textContent = text;
    if (cls) el.className = cls;
    return el;
  }

  function labelTags(labels) {
    return labelEntries(labels).map(([k, v]) => {
      const tag = span("", "tag");
      tag.title = `${k}=${v}`;
      tag.append(span(LABEL_NAMES[k] || k, "k"), document.createTextNode(` ${v}`));
      return tag;
    });
  }

  // "for 3 min": the text is refreshed every few seconds without rebuilding the row.
  function since(prefix, t) {
    const el = span("", "since");
    el.dataset.since = String(t); el.dataset.prefix = prefix;
    el.title = `since ${new Date(t * 1000).toLocaleString()}`;
    el.textContent = `${prefix} ${ago(t)}`;
    return el;
  }

  function refreshTimes() {
    for (const el of document.querySelectorAll("#alerts [data-since]")) {
      el.textContent = `${el.dataset.prefix} ${ago(Number(el.dataset.since))}`;
    }
  }

  function alertRow(a, index) {
    const li = document.createElement("li");
    const firing = a.state === "firing";
    li.dataset.alert = a.rule; li.dataset.state = a.state; li.dataset.severity = a.severity;
    li.dataset.index = String(index);
    const chip = span(firing ? a.severity : "pending", `chip chip-${firing ? a.severity : "pending"}`);
    const what = span("", "what");
    what.append(chip, span(a.rule, "rule"), ...labelTags(a.labels));
    const value = span("", "value");
    value.title = "value now, and the rule's threshold";
    value.append(span(quantity(a.value), "now"), span(` vs ${quantity(a.threshold)}`, "muted"));
    const when = firing ? since("firing for", a.fired_at ?? a.since) : since("pending for", a.since);
    const side = span("", "side");
    side.append(value, when);
    // What the state says (acked_by, silenced), or what this page just did and the next
    // snapshot will say.
    const done = alerts.done.get(`${a.rule}|${a.episode}`) || {};
    const acked = a.acked_by ? `acknowledged by ${a.acked_by}` : done.ack && "acknowledged";
    const silenced = a.silenced || done.silence;
    if (acked) side.append(span(acked, "done"));
    if (silenced) side.append(span("silenced", "done"));
    if (firing && alerts.admin) {
      if (!acked) side.append(actionButton("ack", "Acknowledge"));
      if (!silenced) side.append(actionButton("silence", "Silence 1 h"));
    }
    li.append(what, side);
    return li;
  }

  function actionButton(action, text) {
    const b = document.createElement("button");
    b.type = "button"; b.dataset.action = action; b.textContent = text;
    return b;
  }

  function historyRow(h) {
    const li = document.createElement("li");
    li.dataset.transition = h.to;
    const when = span(clock(h.at, true), "at");
    when.title = new Date(h.at * 1000).toLocaleString();
    const what = span("", "what");
    what.append(span(h.rule, "rule"), ...labelTags(h.labels));
    const move = span("", "move");
    move.append(span(h.from, "from"), document.createTextNode(" → "), span(h.to, `to to-${h.to}`));
    move.title = `value ${quantity(h.value)}, threshold ${quantity(h.threshold)}`;
    li.append(when, move, what);
    return li;
  }

  function renderBadge(firing) {
    const badge = $("alert-count");
    badge.hidden = !firing.length;
    badge.dataset.count = String(firing.length);
    const rank = (severity) => SEVERITY_RANK[severity] || 0;
    const worst = firing.reduce((w, a) => rank(a.severity) > rank(w) ? a.severity : w, "info");
    badge.className = `badge badge-${worst}`;
    badge.title = `${firing.length} alert${firing.length === 1 ? "" : "s"} firing`;
    badge.replaceChildren(span(String(firing.length), "n"), document.createTextNode(" firing"));
  }

  function renderAlerts() {
    const v = alerts.view;
    if (!v) return;
    const firing = v.firing || [], pending = v.pending || [], history = v.history || [];
    alerts.rows = [...firing, ...pending];
    $("a-note").textContent = `${firing.length} firing · ${pending.length} pending`;
    const rows = alerts.rows.map(alertRow);
    if (!firing.length) {
      const li = document.createElement("li");
      li.className = "none"; li.textContent = "No alerts firing";
      rows.unshift(li);
    }
    $("a-active").replaceChildren(...rows);
    const none = document.createElement("li");
    none.className = "muted"; none.textContent = "No alert has changed state yet.";
    $("a-history").replaceChildren(...(history.length ? history.slice(0, HISTORY_SHOWN).map(historyRow) : [none]));
    renderBadge(firing);
  }

  function applyAlerts(section) {
    if (!section) return;
    alerts.view = { firing: [...(section.firing || [])], pending: [...(section.pending || [])],
                    history: [...(section.history || [])] };
    renderAlerts();
  }

  function toast(text, kind) {
    alerts.toasts = [...alerts.toasts, { text, kind }].slice(-3);
    const box = $("toast");
    box.replaceChildren(...alerts.toasts.map((t) => span(t.text, `toast-line toast-${t.kind}`)));
    box.hidden = false;
    clearTimeout(alerts.toastTimer);
    alerts.toastTimer = setTimeout(() => { box.hidden = true; alerts.toasts = []; }, TOAST_MS);
  }

  // "FeatureDrift firing (bmi, v1)"
  const alertName = (rule, labels, status) => {
    const values = labelValues(labels);
    return `${rule}${status ? ` ${status}` : ""}${values ? ` (${values})` : ""}`;
  };

  function alertEvent(msg, note) {
    const a = msg.data || {};
    const labels = Object.fromEntries(labelEntries(a.labels));
    const severity = (a.labels && a.labels.severity) || "warning";
    const firing = a.status === "firing";
    const at = firing ? (a.starts_at ?? msg.ts) : (a.ends_at ?? msg.ts);
    const text = alertName(a.rule, labels, a.status);
    toast(text, firing ? severity : "resolved");
    addToFeed({ type: "alert", ts: msg.ts, data: { message: text } }, note);
    if (!alerts.view) alerts.view = { firing: [], pending: [], history: [] };
    const v = alerts.view;
    const transition = { at, rule: a.rule, labels, from: firing ? "pending" : "firing", to: a.status,
                         value: a.value, threshold: a.threshold, severity,
                         fingerprint: a.fingerprint, episode: a.episode };
    // Notifications are at least once: the same transition may come twice.
    const known = (h) => h.fingerprint === a.fingerprint && h.episode === a.episode && h.to === a.status;
    if (!v.history.some(known)) v.history = [transition, ...v.history];
    v.firing = v.firing.filter((s) => !sameAlert(s, transition));
    v.pending = v.pending.filter((s) => !sameAlert(s, transition));
    if (firing) {
      v.firing.push({ rule: a.rule, labels, state: "firing", since: at, fired_at: at, severity, episode: a.episode,
                      value: a.value, threshold: a.threshold, fingerprint: a.fingerprint });
    }
    renderAlerts();
  }

  function errorText(r, body) {
    const detail = body && body.detail;
    if (Array.isArray(detail)) return detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
    return detail || `${r.status} ${r.statusText}`;
  }

  async function alertAction(button) {
    const a = alerts.rows[Number(button.closest("li").dataset.index)];
    if (!a) return;
    const action = button.dataset.action;
    const name = alertName(a.rule, a.labels);
    const status = $("a-status");
    status.hidden = false; status.className = "a-status";
    status.textContent = `${action === "ack" ? "Acknowledging" : "Silencing"} ${name}…`;
    for (const b of button.parentElement.querySelectorAll("button")) b.disabled = true;
    try {
      const silence = { matchers: { alertname: a.rule, ...a.labels }, duration: 3600, comment: "" };
      const r = action === "ack"
        ? await fetch(`/api/alerts/ack/${encodeURIComponent(a.fingerprint)}`, { method: "POST" })
        : await fetch("/api/alerts/silences", {
          method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(silence) });
      const body = await r.json().catch(() => ({}));
      if (!r.ok) throw new Error(errorText(r, body));
      const key = `${a.rule}|${a.episode}`;
      alerts.done.set(key, { ...alerts.done.get(key), [action]: true });
      status.textContent = `${name}: ${action === "ack" ? "acknowledged" : "silenced for 1 h"}`;
      renderAlerts();
    } catch (err) {
      status.className = "a-status error";
      status.textContent = `${action === "ack" ? "Acknowledge" : "Silence"} ${name}: ${err.message}`;
      for (const b of button.parentElement.querySelectorAll("button")) b.disabled = false;
    }
  }

  $("a-active").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-action]");
    if (b) alertAction(b);
  });
  setInterval(refreshTimes, 5000);

  function render(changed) {
    const s = state.snapshot;
    if ("summary" in changed) renderCards(s.summary);
    if ("histogram" in changed) renderHistogram(s.histogram);
    if ("series" in changed) renderSeries(s.series);
    if ("recent" in changed) renderRecent(s.recent);
    if ("by_version" in changed) renderVersions(s.by_version);
    if ("drift" in changed) renderDrift(s.drift);
    if ("alerts" in changed) applyAlerts(s.alerts);
  }

  function addToFeed(msg, note) {
    const feed = $("feed");
    if (!state.messages) feed.replaceChildren();
    state.messages++;
    const li = document.createElement("li");
    const kind = document.createElement("span");
    kind.className = "kind"; kind.textContent = msg.type;
    const when = new Date((msg.ts || Date.now() / 1000) * 1000).toLocaleTimeString();
    const data = msg.data && (msg.data.text || msg.data.message);
    li.append(kind, document.createTextNode(` ${when}  ${data || JSON.stringify(msg.data || {})}`));
    if (note) { const g = document.createElement("span"); g.className = "gap"; g.textContent = ` ${note}`; li.append(g); }
    feed.prepend(li);
    while (feed.children.length > 100) feed.lastChild.remove();
  }

  // ------------------------------------------------------------ tasks
  const tasks = new Map();  // id -> record, newest first when rendered

  function normalise(t) {
    const rec = Object.assign({}, tasks.get(t.id) || {}, t);
    if (t.done !== undefined || t.total !== undefined) {
      const done = t.done ?? 0, total = t.total ?? 0;
      rec.progress = { done, total, fraction: total ? done / total : (rec.state === "SUCCESS" ? 1 : 0) };
    }
    if (rec.state === "SUCCESS" && rec.result && rec.result.file) rec.result_url = `/api/tasks/${rec.id}/result`;
    return rec;
  }

  function describeResult(t) {
    const r = t.result || {};
    if (t.kind === "retrain" && r.version) return `${r.version}, holdout MAE ${fmt(r.holdout_mae)}`;
    if (t.kind === "report" && r.summary) return `${fmt(r.summary.count)} errors, MAE ${fmt(r.summary.mae)}`;
    if (t.kind === "collect-labels" && r.published !== undefined) return `${fmt(r.published)} labels, ${fmt(r.bad)} bad`;
    if (t.kind === "batch-score" && r.rows !== undefined) return `${fmt(r.rows)} rows scored with ${r.model_version}`;
    return r.skipped || "";
  }

  function renderTasks() {
    const rows = [...tasks.values()].sort((a, b) => (b.submitted || 0) - (a.submitted || 0));
    if (!rows.length) return;
    $("tasks").replaceChildren(...rows.slice(0, 20).map((t) => {
      const tr = document.createElement("tr");
      tr.dataset.id = t.id; tr.dataset.state = t.state;
      const name = cell(`${t.kind} · ${t.id.slice(0, 8)}`);
      const state = document.createElement("td");
      const badge = document.createElement("span");
      badge.className = `state state-${t.state}`; badge.textContent = t.state;
      state.append(badge);
      const prog = document.createElement("td");
      const p = t.progress || { done: 0, total: 0, fraction: 0 };
      if (p.total > 1 || t.state === "PROGRESS") {
        const bar = document.createElement("progress");
        bar.max = Math.max(1, p.total); bar.value = p.done;
        prog.append(bar, document.createTextNode(`${fmt(p.done)} / ${fmt(p.total)}`));
      } else {
        prog.textContent = t.state === "SUCCESS" ? "done" : "";
      }
      const result = document.createElement("td");
      if (t.state === "FAILURE") {
        result.className = "error"; result.textContent = t.error || "failed";
      } else {
        result.textContent = describeResult(t);
        if (t.result_url) {
          const a = document.createElement("a");
          a.href = t.result_url; a.textContent = t.kind === "report" ? " histogram" : " download";
          a.className = "result-link";
          result.append(a);
        }
      }
      const when = t.submitted ? new Date(t.submitted * 1000).toLocaleTimeString() : "";
      tr.append(name, state, prog, result, cell(when));
      return tr;
    }));
  }

  // The status line under the task buttons follows the task it announced to the end.
  let announced = null;  // { id, label }
  const STATE_WORDS = { PENDING: "queued", STARTED: "running", PROGRESS: "running",
                        RETRY: "retrying", SUCCESS: "done", FAILURE: "failed" };

  function taskEvent(data) {
    const rec = normalise(data);
    tasks.set(data.id, rec);
    renderTasks();
    if (announced && announced.id === rec.id && STATE_WORDS[rec.state]) {
      const status = $("t-status");
      status.className = rec.state === "FAILURE" ? "error" : "muted";
      status.textContent = `${announced.label}: ${STATE_WORDS[rec.state]}`;
    }
  }

  async function loadTasks() {
    const r = await fetch("/api/tasks");
    if (!r.ok) return;
    for (const t of await r.json()) tasks.set(t.id, Object.assign({}, tasks.get(t.id) || {}, t));
    renderTasks();
  }

  async function submit(kind, init, label) {
    const status = $("t-status");
    status.className = "muted"; status.textContent = `${label}…`;
    try {
      const r = await fetch(`/api/tasks/${kind}`, Object.assign({ method: "POST" }, init));
      const body = await r.json().catch(() => ({}));
      if (!r.ok) throw new Error(body.detail || `${r.status} ${r.statusText}`);
      status.textContent = `${label}: queued`;
      announced = { id: body.id, label };
      taskEvent({ id: body.id, kind, state: body.state, submitted: Date.now() / 1000 });
    } catch (err) {
      status.className = "error"; status.textContent = `${label}: ${err.message}`;
    }
  }

  $("t-file").addEventListener("change", (ev) => {
    const file = ev.target.files[0];
    if (!file) return;
    const form = new FormData();
    form.append("file", file);
    submit("batch-score", { body: form }, `Scoring ${file.name}`);
    ev.target.value = "";
  });
  $("t-report").addEventListener("click", () => submit("report", {
    headers: { "Content-Type": "application/json" }, body: JSON.stringify({ minutes: 60 }) }, "Report"));
  $("t-retrain").addEventListener("click", () => submit("retrain", {}, "Retraining"));

  // ------------------------------------------------------------ history (a time range)
  // Live is the page as it always was; any other range adds the History panel, drawn from
  // /api/history: one read gives every version's series (per_version), then one more the
  // drift of one version (model_version), whose PSI and estimated MAE come from there.
  // The range lives in the URL's fragment (the query string belongs to the sign-in), so a
  // view can be shared and reloaded, and back and forward walk through the ranges chosen;
  // the version whose drift is drawn rides along (`&v=v2`) once one is picked.
  const RANGES = { "15m": 900, "1h": 3600, "24h": 86400, "7d": 604800 };
  const RANGE_NAMES = { "15m": "15 min", "1h": "1 h", "24h": "24 h", "7d": "7 d" };
  const HISTORY_REFRESH_MS = 30000;
  const HISTORY_METRICS = ["mae", "rmse", "p95", "count"];
  const HISTORY_PAD = { l: 42, r: 10, t: 8, b: 20 };
  // Line colours, none like the grid's, the axis text's or the combined line's (ink, dashed).
  const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d"];
  const ALL_COLOUR = "#0f172a";
  const TIME_TICKS = [60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200];
  // The steps /api/history answers in; the page asks for about 120 points a line, which a
  // chart a phone wide still draws apart (the API's default, 240, runs dots together).
  const HISTORY_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
                         21600, 43200, 86400, 604800];
  const HISTORY_POINTS = 120;
  // The PSI guide lines: the thresholds the gateway runs with (each drift answer says
  // them; these defaults hold until one has).
  let PSI_WARN = 0.1, PSI_DRIFT = 0.25;
  const DRIFT_COLOURS = { top: "#7c3aed", feature: "#94a3b8", prediction: "#0f172a", warn: "#d97706",
                          drift: "#dc2626", estimated: "#2563eb", realized: "#dc2626" };
  const DRIFT_TIP_FEATURES = 5;
  // range: what the URL says; view: the last answer for it; chart: that laid out per step;
  // drift: the last drift answer for the view ({version, answer}), laid out in driftChart.
  const past = { range: { key: "live" }, view: null, error: null, chart: null, gen: 0, timer: 0,
                 hover: null, editing: false, drift: null, driftError: null, driftChart: null,
                 dgen: 0, dhover: null };
  state.history = past;

  const day = (t) => new Date(t * 1000).toLocaleDateString([], { month: "short", day: "numeric" });
  const sameDay = (a, b) => new Date(a * 1000).toDateString() === new Date(b * 1000).toDateString();
  const pad2 = (n) => String(n).padStart(2, "0");
  // Axis numbers: three significant digits, thousands and millions shortened.
  const tickText = (v) => v >= 1e6 ? `${+(v / 1e6).toFixed(1)}M` : v >= 1e4 ? `${+(v / 1e3).toFixed(1)}k`
    : String(+v.toPrecision(3));
  const metricText = (metric, v) => metric === "count" ? fmt(v) : quantity(v);

  // The range a fragment names (and the version whose drift is drawn, if one was picked);
  // null for a fragment that is an anchor (#alerts), not a range.
  function parseRange(hash) {
    const text = hash.replace(/^#/, "");
    const p = new URLSearchParams(text);
    const v = p.get("v") || null;
    if (p.has("range")) return Object.hasOwn(RANGES, p.get("range")) ? { key: p.get("range"), v } : { key: "live" };
    if (p.has("since") || p.has("until")) {
      const since = Number(p.get("since")), until = Number(p.get("until"));
      const ok = p.get("since") && p.get("until") && Number.isFinite(since) && Number.isFinite(until)
        && until > since;
      return ok ? { key: "custom", since, until, v } : { key: "live" };
    }
    return text ? null : { key: "live" };
  }

  const rangeHash = (r) => r.key === "live" ? "" : (r.key === "custom"
    ? `#since=${Math.floor(r.since)}&until=${Math.ceil(r.until)}` : `#range=${r.key}`)
    + (r.v ? `&v=${encodeURIComponent(r.v)}` : "");
  const sameRange = (a, b) => a.key === b.key && a.since === b.since && a.until === b.until;

  // A choice on the page goes into the URL as a new history entry, and from there onto the page.
  function chooseRange(r) {
    const hash = rangeHash(r);
    if (hash === location.hash) {
      applyRange(r, true);  // the range shown, chosen again: read it again
    } else if (hash) {
      location.hash = hash;  // hashchange applies it
    } else {
      window.history.pushState(null, "", location.pathname + location.search);
      applyRange(r);
    }
  }

  function fromUrl() {
    const r = parseRange(location.hash);
    if (r) applyRange(r);
  }

  function applyRange(r, again) {
    const changed = !sameRange(r, past.range);
    const otherVersion = (r.v || null) !== (past.range.v || null);
    past.range = r;
    past.editing = r.key === "custom" && past.editing;
    if (r.key === "custom") fillCustom(r.since, r.until);
    const live = r.key === "live";
    renderPicker();
    $("history").hidden = live;
    $("live-head").hidden = live;
    document.body.dataset.range = r.key;
    if (!changed && !again) {
      if (otherVersion && !live) loadDrift();  // the same range, another version's drift
      return;
    }
    clearInterval(past.timer);
    past.gen++; past.dgen++;  // an answer still on its way is for the range before
    if (changed) {
      Object.assign(past, { view: null, chart: null, error: null, hover: null,
                            drift: null, driftError: null, driftChart: null, dhover: null });
    }
    if (live) { $("history").dataset.state = "off"; return; }
    loadHistory();
    if (RANGES[r.key]) past.timer = setInterval(loadHistory, HISTORY_REFRESH_MS);
  }

  function renderPicker() {
    const custom = past.range.key === "custom" || past.editing;
    for (const b of $("r-picker").querySelectorAll("button[data-range]")) {
      const key = b.dataset.range;
      b.setAttribute("aria-pressed", String(key === "custom" ? custom : !custom && key === past.range.key));
    }
    $("r-custom").hidden = !custom;
  }

  const localInput = (t) => {
    const d = new Date(t * 1000);
    return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())}T${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
  };

  function fillCustom(since, until) {
    $("r-since").value = localInput(since);
    $("r-until").value = localInput(until);
    $("r-error").textContent = "";
  }

  $("r-picker").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-range]");
    if (!b) return;
    if (b.dataset.range !== "custom") {
      past.editing = false;
      chooseRange({ key: b.dataset.range, v: past.range.v });
      return;
    }
    // The editor opens on what is shown (the last hour when live); Apply makes it the range.
    const now = Date.now() / 1000;
    past.editing = true;
    if (past.view) fillCustom(past.view.since, past.view.until); else fillCustom(now - 3600, now);
    renderPicker();
    $("r-since").focus();
  });

  $("r-custom").addEventListener("submit", (ev) => {
    ev.preventDefault();
    // A datetime-local value has no zone, and is read as the browser's local time.
    const since = Date.parse($("r-since").value) / 1000, until = Date.parse($("r-until").value) / 1000;
    if (!Number.isFinite(since) || !Number.isFinite(until)) {
      $("r-error").textContent = "Pick a start and an end.";
    } else if (until <= since) {
      $("r-error").textContent = "The end must be after the start.";
    } else {
      $("r-error").textContent = "";
      past.editing = false;
      chooseRange({ key: "custom", since, until, v: past.range.v });
    }
  });

  $("r-custom").addEventListener("keydown", (ev) => {
    if (ev.key !== "Escape") return;
    past.editing = false;  // the range stays as it was
    renderPicker();
  });

  // A badge link would replace the range in the URL with #alerts: scroll there instead.
  $("alert-count").addEventListener("click", (ev) => {
    if (past.range.key === "live") return;
    ev.preventDefault();
    $("alerts").scrollIntoView({ behavior: "smooth" });
  });

  async function getHistory(params) {
    const query = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== undefined) query.set(k, String(v));
    const r = await fetch(`/api/history?${query}`, { cache: "no-store" });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(errorText(r, body));
    return body;
  }

  async function loadHistory() {
    const gen = ++past.gen;
    const r = past.range;
    // Whole seconds, so that the range on the page is one anyone can ask for again.
    const until = r.key === "custom" ? r.until : Math.ceil(Date.now() / 1000);
    const since = r.key === "custom" ? r.since : until - RANGES[r.key];
    const panel = $("history");
    panel.setAttribute("aria-busy", "true");
    if (!past.view) renderHistory();
    try {
      const want = (until - since) / HISTORY_POINTS;
      const step = HISTORY_STEPS.find((s) => s >= want) || HISTORY_STEPS[HISTORY_STEPS.length - 1];
      // Every version's series from the one read, all with the same step, so their points
      // line up; the answer's bounds (whole minutes from the rollups) are the axes'.
      const all = await getHistory({ since, until, step, per_version: true });
      if (gen !== past.gen) return;
      past.view = { key: r.key, since: all.since, until: all.until, all };
      past.error = null;
    } catch (err) {
      if (gen !== past.gen) return;
      past.error = err.message;  // a failed refresh leaves the last answer on the page
    }
    panel.removeAttribute("aria-busy");
    renderHistory();
    if (gen === past.gen && !past.error) loadDrift();
  }

  // Newest first: v10 after v9, a name that is no registry version last.
  const versionOrder = (a, b) => {
    const n = (v) => (/^v(\d+)$/.exec(v) || [])[1];
    const x = n(a), y = n(b);
    return x !== undefined && y !== undefined ? Number(y) - Number(x)
      : x !== undefined ? -1 : y !== undefined ? 1 : a < b ? 1 : a > b ? -1 : 0;
  };

  // The version whose drift is drawn: the URL's, else the newest in the range.
  function driftVersion() {
    if (past.range.v) return past.range.v;
    const names = ((past.view && past.view.all.versions) || []).filter(Boolean).sort(versionOrder);
    return names.length ? names[0] : null;
  }

  async function loadDrift() {
    const v = past.view, fig = $("h-drift");
    const version = v ? driftVersion() : null;
    const dgen = ++past.dgen;
    if (!v || !(v.all.series || []).length || version === null) {
      past.drift = null; past.driftError = null;
      fig.removeAttribute("aria-busy");
      renderDriftHistory();
      return;
    }
    fig.setAttribute("aria-busy", "true");
    if (!past.drift || past.drift.version !== version) {
      past.drift = { version, answer: null };
      renderDriftHistory();
    }
    try {
      const answer = await getHistory({ since: v.all.since, until: v.all.until, step: v.all.step,
                                        model_version: version });
      if (dgen !== past.dgen) return;
      past.drift = { version, answer };
      past.driftError = null;
    } catch (err) {
      if (dgen !== past.dgen) return;
      past.driftError = err.message;
    }
    fig.removeAttribute("aria-busy");
    renderDriftHistory();
  }

  // Colours follow the version's name, so a version keeps its colour from range to range.
  function coloursOf(names) {
    const colours = new Map(), used = new Set();
    for (const name of names) {
      let i = [...name].reduce((h, ch) => (h * 31 + ch.codePointAt(0)) >>> 0, 7) % PALETTE.length;
      while (used.has(i) && used.size < PALETTE.length) i = (i + 1) % PALETTE.length;
      used.add(i);
      colours.set(name, PALETTE[i]);
    }
    return colours;
  }

  // Figures over the whole range from the points: all exact but the p95, of which only
  // the highest step's is known.
  function totals(points) {
    let count = 0, sum = 0, squares = 0, p95 = null, max = null;
    for (const p of points) {
      count += p.count; sum += p.mae * p.count; squares += p.rmse * p.rmse * p.count;
      p95 = p95 === null ? p.p95 : Math.max(p95, p.p95);
      max = max === null ? p.max : Math.max(max, p.max);
    }
    return { count, mae: count ? sum / count : null, rmse: count ? Math.sqrt(squares / count) : null, p95, max };
  }

  function layOut(v) {
    const step = v.all.step, first = Math.floor(v.since / step) * step;
    const n = Math.max(1, Math.ceil((v.until - first) / step));
    const names = v.all.versions || [], by = v.all.by_version || {};
    const colours = coloursOf(names);
    const lines = names.map((name) => ({ name, label: name || "(no version)",
                                         colour: colours.get(name), points: by[name] || [], all: false }));
    // The combined line says something only beside two versions or more.
    if (lines.length !== 1) {
      lines.unshift({ name: "*", label: "all versions", colour: ALL_COLOUR, points: v.all.series, all: true });
    }
    for (const line of lines) {
      // A step without a point had no events: a count of 0, and no error to draw.
      line.values = Object.fromEntries(HISTORY_METRICS.map((m) => [m, new Array(n).fill(m === "count" ? 0 : null)]));
      for (const p of line.points) {
        const i = Math.round((p.t - first) / step);
        if (i < 0 || i >= n) continue;
        for (const m of HISTORY_METRICS) line.values[m][i] = p[m];
      }
      line.totals = totals(line.points);
    }
    const written = missing(v.all.written_until) ? null : v.all.written_until;
    return { since: v.since, until: v.until, step, first, n, lines, written };
  }

  function rangeText(v) {
    const span = v.until - v.since;
    const at = (t) => span > 86400 || !sameDay(t, Date.now() / 1000) ? `${day(t)} ${clock(t)}` : clock(t);
    return sameDay(v.since, v.until) && span <= 86400
      ? `${at(v.since)}–${clock(v.until)}` : `${at(v.since)} – ${at(v.until)}`;
  }

  function renderHistory() {
    const panel = $("history"), v = past.view, warn = $("h-warn");
    if (past.range.key === "live") return;
    const warnings = [];
    if (past.error) warnings.push(`${v ? "Not refreshed" : "History unavailable"}: ${past.error}`);
    if (!v) {
      panel.dataset.state = past.error ? "error" : "loading";
      $("h-note").textContent = past.error ? "" : "loading…";
      warn.hidden = !warnings.length; warn.textContent = warnings.join(" ");
      $("h-empty").hidden = true; $("h-body").hidden = true;
      return;
    }
    const all = v.all;
    const complete = all.complete !== false;
    if (!complete) {
      const skipped = all.skipped_files || 0;
      warnings.unshift(`Incomplete: ${fmt(skipped)} history file${skipped === 1 ? "" : "s"} could not be read, ` +
                       "so these figures leave their rows out.");
    }
    warn.hidden = !warnings.length; warn.textContent = warnings.join(" ");
    Object.assign(panel.dataset, { range: v.key, since: String(v.since), until: String(v.until),
                                   step: String(all.step), complete: String(complete) });
    $("h-note").textContent = [
      RANGES[v.key] ? `last ${RANGE_NAMES[v.key]}` : "", rangeText(v), `per ${windowName(all.step)}`,
      all.source === "rows" ? "from the rows" : "from per-minute rollups",
      all.quantiles === "bin" ? "p95 within one 4.4 % bin" : "",
      RANGES[v.key] ? "refreshed every 30 s" : "",
    ].filter(Boolean).join(" · ");
    const empty = !(all.series || []).length;
    const written = missing(all.written_until) ? null : all.written_until;
    panel.dataset.writtenUntil = written === null ? "" : String(written);
    $("h-empty").hidden = !empty;
    $("h-empty").textContent = "No history in this range yet; " + (written === null
      ? "rows reach the history within 30 s."
      : `the history is written up to ${whenText(written, v)}, and newer rows reach it within 30 s.`);
    $("h-body").hidden = empty;
    past.chart = empty ? null : layOut(v);
    panel.dataset.state = empty ? "empty" : "ready";
    if (empty) return;
    const sum = totals(all.series);
    const caption = (metric, value) => {
      const el = $(`h-v-${metric}`);
      el.textContent = metricText(metric, value);
      el.dataset.value = missing(value) ? "" : String(value);
    };
    caption("mae", sum.mae); caption("rmse", sum.rmse); caption("p95", sum.p95); caption("count", sum.count);
    const binned = all.quantiles === "bin";
    $("h-q").textContent = binned ? "highest step · binned" : "highest step · exact";
    $("h-q").title = binned ? "p95 within one 4.4 % bin: ranges over 2 h are read from per-minute rollups"
      : "p95 exact: read from the rows";
    $("h-per").textContent = `in the range · per ${windowName(all.step)}`;
    const lines = past.chart.lines;
    const keys = lines.map((line) => {
      const key = span(line.label, `key h-key${line.all ? " all" : ""}`);
      key.dataset.version = line.name;
      key.style.setProperty("--c", line.colour);
      return key;
    });
    // Where the range runs past the history: shaded on the charts, and said here.
    if (written !== null && written < v.until) {
      const key = span(`history written up to ${whenText(written, v)}`, "key h-written");
      key.id = "h-written";
      key.dataset.value = String(written);
      key.title = "rows joined after this are in the live log, and reach the history within 30 s";
      keys.push(key);
    }
    $("h-legend").replaceChildren(...keys);
    $("h-summary").replaceChildren(...lines.map((line) => {
      const tr = document.createElement("tr");
      tr.dataset.version = line.name;
      if (line.all) tr.className = "all";
      const name = cell("");
      const swatch = span("", "swatch");
      swatch.style.setProperty("--c", line.colour);
      name.append(swatch, document.createTextNode(line.label));
      name.title = line.label;
      const t = line.totals, count = cell(fmt(t.count), "count");
      count.dataset.value = String(t.count);
      tr.append(name, count, cell(quantity(t.mae)), cell(quantity(t.rmse)), cell(quantity(t.p95)), cell(quantity(t.max)));
      return tr;
    }));
    drawHistoryCharts();
  }

  // A time as a clock, with the day when the range is longer than a day or not today's.
  function whenText(t, v) {
    return `${v.until - v.since > 86400 || !sameDay(t, Date.now() / 1000) ? `${day(t)} ` : ""}${clock(t, true)}`;
  }

  function timeTicks(since, until, room) {
    const span = until - since, most = Math.max(2, Math.floor(room / 52));
    const ticks = [];
    if (span <= 86400) {  // HH:MM on local round times
      const step = TIME_TICKS.find((s) => span / s <= most) || TIME_TICKS[TIME_TICKS.length - 1];
      const east = -new Date(since * 1000).getTimezoneOffset() * 60;
      for (let t = Math.ceil((since + east) / step) * step - east; t <= until; t += step) ticks.push([t, clock(t)]);
      return ticks;
    }
    const days = [1, 2, 3, 7, 14].find((d) => span / (d * 86400) <= most) || Math.ceil(span / 86400 / most);
    const d = new Date(since * 1000);
    d.setHours(0, 0, 0, 0);
    if (d.getTime() / 1000 < since) d.setDate(d.getDate() + 1);
    for (; d.getTime() / 1000 <= until; d.setDate(d.getDate() + days)) ticks.push([d.getTime() / 1000, day(d.getTime() / 1000)]);
    return ticks;
  }

  // x of a time on a chart of [since, until), clamped to the plot.
  const timeX = (w, pad, since, until) => (t) =>
    pad.l + (w - pad.l - pad.r) * Math.min(1, Math.max(0, (t - since) / (until - since)));

  function timeAxis(ctx, w, h, pad, since, until, at) {
    ctx.textAlign = "center";
    ctx.fillStyle = "#64748b";
    for (const [t, text] of timeTicks(since, until, w - pad.l - pad.r)) {
      const tx = at(t), half = ctx.measureText(text).width / 2;
      ctx.strokeStyle = "#f1f5f9";
      ctx.beginPath(); ctx.moveTo(tx, pad.t); ctx.lineTo(tx, h - pad.b); ctx.stroke();
      ctx.strokeStyle = "#cbd5e1";
      ctx.beginPath(); ctx.moveTo(tx, h - pad.b); ctx.lineTo(tx, h - pad.b + 4); ctx.stroke();
      ctx.fillText(text, Math.min(Math.max(tx, half + 1), w - half - 1), h - 5);
    }
    ctx.textAlign = "left";
  }

  // The part of the range the history does not reach yet: shaded, from a dashed line.
  function notWritten(ctx, el, w, h, pad, c, at) {
    delete el.dataset.writtenX;
    if (c.written === null || c.written >= c.until) return;
    const x0 = at(c.written);
    ctx.fillStyle = "rgba(100, 116, 139, 0.12)";
    ctx.fillRect(x0, pad.t, w - pad.r - x0, h - pad.t - pad.b);
    if (c.written > c.since) {
      ctx.strokeStyle = "#64748b"; ctx.lineWidth = 1; ctx.setLineDash([3, 3]);
      ctx.beginPath(); ctx.moveTo(x0, pad.t); ctx.lineTo(x0, h - pad.b); ctx.stroke();
      ctx.setLineDash([]);
    }
    el.dataset.writtenX = String(x0);
  }

  function drawHistoryChart(metric) {
    const c = past.chart, el = $(`h-${metric}`), pad = HISTORY_PAD;
    const { ctx, w, h } = canvas(el);
    let top = 0;
    for (const line of c.lines) for (const v of line.values[metric]) if (!missing(v) && v > top) top = v;
    const max = top > 0 ? roundUp(top * 1.1) : 1;
    const at = timeX(w, pad, c.since, c.until);
    notWritten(ctx, el, w, h, pad, c, at);
    axes(ctx, w, h, pad, max, "", tickText);
    const x = (i) => at(c.first + (i + 0.5) * c.step);
    const y = (v) => h - pad.b - (h - pad.t - pad.b) * v / max;
    timeAxis(ctx, w, h, pad, c.since, c.until, at);
    for (const line of c.lines) {
      ctx.strokeStyle = ctx.fillStyle = line.colour;
      ctx.lineWidth = line.all ? 1.5 : 2;
      ctx.setLineDash(line.all ? [5, 4] : []);
      trace(ctx, line.values[metric], x, y);
    }
    ctx.setLineDash([]);
    el.dataset.lines = JSON.stringify(c.lines.map((line) => line.name));
    if (past.hover === null || past.hover >= c.n) return;
    const hx = x(past.hover);
    ctx.strokeStyle = "#94a3b8"; ctx.lineWidth = 1;
    ctx.beginPath(); ctx.moveTo(hx, pad.t); ctx.lineTo(hx, h - pad.b); ctx.stroke();
    for (const line of c.lines) {
      const v = line.values[metric][past.hover];
      if (missing(v)) continue;
      ctx.fillStyle = line.colour;
      ctx.beginPath(); ctx.arc(hx, y(v), 3.5, 0, 2 * Math.PI); ctx.fill();
    }
  }

  function drawHistoryCharts() {
    if (!past.chart || $("history").hidden) return;
    for (const metric of HISTORY_METRICS) drawHistoryChart(metric);
    drawDriftCharts();
  }

  // The values of every line in the step under the pointer, beside it.
  function showTip(fig, px) {
    const c = past.chart, metric = fig.dataset.metric, tip = fig.querySelector(".h-tip");
    const t = c.first + past.hover * c.step, span_ = c.until - c.since;
    const when = c.step >= 86400 ? day(t)
      : `${span_ > 86400 || !sameDay(t, Date.now() / 1000) ? `${day(t)} ` : ""}${clock(t, c.step < 60)}–${clock(t + c.step, c.step < 60)}`;
    const rows = c.lines.map((line) => {
      const row = span("", "row");
      const swatch = span("", `swatch${line.all ? " all" : ""}`);
      swatch.style.setProperty("--c", line.colour);
      row.append(swatch, span(line.label, "who"), span(metricText(metric, line.values[metric][past.hover]), "num"));
      return row;
    });
    tip.replaceChildren(span(when, "when"), ...rows);
    tip.hidden = false;
    const el = fig.querySelector("canvas"), width = tip.offsetWidth, room = fig.clientWidth;
    const left = px + 14 + width <= room ? px + 14 : px - 14 - width;
    tip.style.left = `${Math.max(0, Math.min(left, room - width))}px`;
    tip.style.top = `${el.offsetTop + HISTORY_PAD.t}px`;
  }

  function hideTips() {
    for (const tip of document.querySelectorAll("#history .h-tip")) tip.hidden = true;
  }

  // The step under the pointer on a chart laid out as `c`, and the pointer's x in it.
  function stepUnder(c, canvasEl, ev) {
    const rect = canvasEl.getBoundingClientRect(), pad = HISTORY_PAD;
    const px = ev.clientX - rect.left;
    const share = Math.min(1, Math.max(0, (px - pad.l) / (rect.width - pad.l - pad.r)));
    const t = c.since + share * (c.until - c.since);
    return { i: Math.min(c.n - 1, Math.max(0, Math.floor((t - c.first) / c.step))), px };
  }

  function hoverAt(fig, ev) {
    const c = past.chart;
    if (!c) return;
    const { i, px } = stepUnder(c, fig.querySelector("canvas"), ev);
    past.hover = i;
    drawHistoryCharts();
    hideTips();
    showTip(fig, px);
  }

  for (const fig of document.querySelectorAll("#history .h-chart")) {
    const el = fig.querySelector("canvas");
    el.addEventListener("pointermove", (ev) => hoverAt(fig, ev));
    el.addEventListener("pointerdown", (ev) => hoverAt(fig, ev));
    el.addEventListener("pointerleave", (ev) => {
      if (ev.pointerType !== "mouse") return;  // a finger lifted: the values stay to be read
      past.hover = null;
      hideTips();
      drawHistoryCharts();
    });
  }
  // ------------------------------------------------------------ history: drift of one version
  // Per step of scoring time: each feature's PSI (thin), the prediction's, the feature that
  // went highest drawn over them and named at its peak, the warning and drift thresholds;
  // beside it the estimated MAE against the realized MAE of the same version.
  function layOutDrift(version, answer) {
    const d = answer.drift, step = d.step, since = answer.since, until = answer.until;
    if (d.thresholds) { PSI_WARN = d.thresholds.psi_warn; PSI_DRIFT = d.thresholds.psi_drift; }
    const first = Math.floor(since / step) * step;
    const n = Math.max(1, Math.ceil((until - first) / step));
    const points = d.series || [], names = [];
    for (const p of points) for (const name of Object.keys(p.features || {})) if (!names.includes(name)) names.push(name);
    const blank = (fill) => new Array(n).fill(fill);
    const features = Object.fromEntries(names.map((name) => [name, blank(null)]));
    const prediction = blank(null), events = blank(0), estimated = blank(null);
    for (const p of points) {
      const i = Math.round((p.t - first) / step);
      if (i < 0 || i >= n) continue;
      events[i] = p.events; estimated[i] = p.estimated_mae; prediction[i] = p.prediction_psi;
      for (const name of names) features[name][i] = missing(p.features[name]) ? null : p.features[name];
    }
    // The realized MAE per the same step, from the version's series (a finer step divides it).
    const sums = blank(0), counts = blank(0);
    for (const p of answer.series || []) {
      const i = Math.floor((p.t - first) / step);
      if (i < 0 || i >= n) continue;
      sums[i] += p.mae * p.count; counts[i] += p.count;
    }
    const realized = counts.map((c, i) => c ? sums[i] / c : null);
    let top = null;
    for (const name of names) {
      features[name].forEach((v, i) => { if (!missing(v) && (top === null || v > top.value)) top = { name, value: v, i }; });
    }
    return { version, since, until, step, first, n, names, features, prediction, events, estimated,
             realized, top, complete: d.complete !== false };
  }

  function versionOptions(names, chosen) {
    const select = $("h-dv"), all = chosen && !names.includes(chosen) ? [...names, chosen] : names;
    const key = JSON.stringify([all, chosen]);
    if (select.dataset.options !== key) {
      select.dataset.options = key;
      select.replaceChildren(...all.map((name) => {
        const o = document.createElement("option");
        o.value = name;
        o.textContent = names.includes(name) ? name : `${name} (no rows in range)`;
        return o;
      }));
    }
    select.value = chosen || "";
    select.disabled = !all.length;
  }

  function renderDriftHistory() {
    const fig = $("h-drift"), off = $("h-d-off"), body = $("h-d-body"), d = past.drift;
    const view = past.view;
    const names = ((view && view.all.versions) || []).filter(Boolean).sort(versionOrder);
    versionOptions(names, d ? d.version : null);
    const answer = d && d.answer, drift = answer && answer.drift;
    let state = "ready", message = "";
    if (!d) {
      state = "off"; message = "No model version in this range to draw the drift of.";
    } else if (past.driftError && !answer) {
      state = "error"; message = `Drift unavailable: ${past.driftError}`;
    } else if (!answer) {
      state = "loading"; message = "loading…";
    } else if (!drift || drift.unavailable) {
      state = "unavailable"; message = drift ? drift.unavailable : "this gateway gives no drift";
    } else if (!(drift.series || []).length) {
      state = "empty";
      message = `No drift counts of ${d.version} in this range: each minute's counts reach the history a few minutes after it ends.`;
    } else if (past.driftError) {
      message = `Not refreshed: ${past.driftError}`;
    }
    const ready = state === "ready";
    if (!ready || !past.driftChart || past.driftChart.version !== d.version) past.dhover = null;
    past.driftChart = ready ? layOutDrift(d.version, answer) : null;
    fig.dataset.state = state;
    fig.dataset.version = d ? d.version : "";
    off.hidden = !message;
    off.textContent = message;
    body.hidden = !ready;
    const topEl = $("h-d-top"), c = past.driftChart;
    if (!c) {
      topEl.textContent = ""; delete topEl.dataset.feature; delete topEl.dataset.value;
      $("h-d-note").textContent = "";
      return;
    }
    const scored = c.events.reduce((a, b) => a + b, 0);
    $("h-d-note").textContent = [`per ${windowName(c.step)} of scoring time`, `${fmt(scored)} events scored`,
      c.complete ? "" : "incomplete: a drift file could not be read"].filter(Boolean).join(" · ");
    if (c.top) {
      const at = c.first + c.top.i * c.step;
      topEl.textContent = `${c.top.name} ${quantity(c.top.value)}`;
      topEl.dataset.feature = c.top.name; topEl.dataset.value = String(c.top.value);
      topEl.title = `highest PSI of any feature in one step: ${c.top.name}, ${fixed(c.top.value, 3)} at ${whenText(at, c)}`;
      $("h-d-key-top").textContent = c.top.name;
    } else {
      topEl.textContent = "no PSI"; delete topEl.dataset.feature; delete topEl.dataset.value;
      topEl.title = "no step had enough events for a PSI";
      $("h-d-key-top").textContent = "top feature";
    }
    $("h-d-key-warn").textContent = `warn ${PSI_WARN}`;
    $("h-d-key-drift").textContent = `drift ${PSI_DRIFT}`;
    $("h-d-mae-note").textContent = "estimated by time scored, realized by time joined";
    drawDriftCharts();
  }

  function hoverLine(ctx, x, h, pad) {
    ctx.strokeStyle = "#94a3b8"; ctx.lineWidth = 1;
    ctx.beginPath(); ctx.moveTo(x, pad.t); ctx.lineTo(x, h - pad.b); ctx.stroke();
  }

  function drawPsiChart(c) {
    const el = $("h-psi"), pad = HISTORY_PAD;
    const { ctx, w, h } = canvas(el);
    let top = PSI_DRIFT;
    for (const values of [c.prediction, ...Object.values(c.features)]) {
      for (const v of values) if (!missing(v) && v > top) top = v;
    }
    const max = roundUp(top * 1.15);
    axes(ctx, w, h, pad, max, "", tickText);
    const at = timeX(w, pad, c.since, c.until);
    const x = (i) => at(c.first + (i + 0.5) * c.step);
    const y = (v) => h - pad.b - (h - pad.t - pad.b) * v / max;
    timeAxis(ctx, w, h, pad, c.since, c.until, at);
    // The guides, named at the right end; side by side when they run too close for two rows.
    ctx.lineWidth = 1; ctx.textAlign = "right";
    let right = w - pad.r - 2;
    for (const [v, colour, text] of [[PSI_DRIFT, DRIFT_COLOURS.drift, `drift ${PSI_DRIFT}`],
                                     [PSI_WARN, DRIFT_COLOURS.warn, `warn ${PSI_WARN}`]]) {
      ctx.strokeStyle = ctx.fillStyle = colour;
      ctx.setLineDash([5, 4]);
      ctx.beginPath(); ctx.moveTo(pad.l, y(v)); ctx.lineTo(w - pad.r, y(v)); ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillText(text, right, y(v) - 3);
      const close = y(PSI_WARN) - y(PSI_DRIFT) < 12;
      right = close ? right - ctx.measureText(text).width - 8 : w - pad.r - 2;
    }
    ctx.textAlign = "left";
    const topName = c.top ? c.top.name : null;
    ctx.lineWidth = 1;
    ctx.strokeStyle = ctx.fillStyle = DRIFT_COLOURS.feature;
    for (const name of c.names) if (name !== topName) trace(ctx, c.features[name], x, y);
    ctx.lineWidth = 1.5; ctx.setLineDash([4, 3]);
    ctx.strokeStyle = ctx.fillStyle = DRIFT_COLOURS.prediction;
    trace(ctx, c.prediction, x, y);
    ctx.setLineDash([]);
    delete el.dataset.top; delete el.dataset.peakX;
    if (c.top) {
      ctx.lineWidth = 2;
      ctx.strokeStyle = ctx.fillStyle = DRIFT_COLOURS.top;
      trace(ctx, c.features[topName], x, y);
      // Its name and highest PSI at its peak, on a halo so that the lines under it do not blur it.
      const px = x(c.top.i), py = y(c.top.value), text = `${topName} ${quantity(c.top.value)}`;
      ctx.beginPath(); ctx.arc(px, py, 3.5, 0, 2 * Math.PI); ctx.fill();
      ctx.font = "600 11px system-ui, sans-serif";
      const tw = ctx.measureText(text).width;
      const tx = px + 6 + tw <= w - pad.r ? px + 6 : px - 6 - tw;
      const ty = Math.max(pad.t + 10, py - 6);
      ctx.strokeStyle = "rgba(255, 255, 255, 0.9)"; ctx.lineWidth = 3; ctx.lineJoin = "round";
      ctx.strokeText(text, tx, ty);
      ctx.fillText(text, tx, ty);
      ctx.font = "11px system-ui, sans-serif";
      el.dataset.top = topName; el.dataset.peakX = String(px);
    }
    if (past.dhover !== null) hoverLine(ctx, x(past.dhover), h, pad);
  }

  function drawMaeChart(c) {
    const el = $("h-est"), pad = HISTORY_PAD;
    const { ctx, w, h } = canvas(el);
    const seen = [...c.estimated, ...c.realized].filter((v) => !missing(v));
    const max = seen.length && Math.max(...seen) > 0 ? roundUp(Math.max(...seen) * 1.1) : 1;
    axes(ctx, w, h, pad, max, "", tickText);
    const at = timeX(w, pad, c.since, c.until);
    const x = (i) => at(c.first + (i + 0.5) * c.step);
    const y = (v) => h - pad.b - (h - pad.t - pad.b) * v / max;
    timeAxis(ctx, w, h, pad, c.since, c.until, at);
    traceMaes(ctx, c.estimated, c.realized, DRIFT_COLOURS, x, y);
    if (past.dhover !== null) hoverLine(ctx, x(past.dhover), h, pad);
  }

  function drawDriftCharts() {
    const c = past.driftChart;
    if (!c || $("history").hidden || $("h-body").hidden) return;
    drawPsiChart(c);
    drawMaeChart(c);
  }

  // What the step under the pointer held: events, the prediction's PSI, the features
  // highest first, and both MAEs.
  function showDriftTip(el, px) {
    const c = past.driftChart, i = past.dhover, fig = $("h-drift"), tip = fig.querySelector(".h-tip");
    const t = c.first + i * c.step;
    const row = (label, value, colour, cls) => {
      const r = span("", `row${cls ? ` ${cls}` : ""}`);
      const swatch = span("", "swatch");
      if (colour) swatch.style.setProperty("--c", colour); else swatch.style.visibility = "hidden";
      const num = span(value, "num");
      r.append(swatch, span(label, "who"), num);
      return [r, num];
    };
    const rows = [row("events scored", fmt(c.events[i]))[0]];
    const [pred, predNum] = row("prediction PSI", quantity(c.prediction[i]), DRIFT_COLOURS.prediction);
    predNum.dataset.value = missing(c.prediction[i]) ? "" : String(c.prediction[i]);
    rows.push(pred);
    const ranked = c.names.filter((name) => !missing(c.features[name][i]))
      .sort((a, b) => c.features[b][i] - c.features[a][i]);
    for (const name of ranked.slice(0, DRIFT_TIP_FEATURES)) {
      const v = c.features[name][i];
      const colour = c.top && name === c.top.name ? DRIFT_COLOURS.top : DRIFT_COLOURS.feature;
      const [r, num] = row(name, quantity(v), colour, v >= PSI_DRIFT ? "drift" : v >= PSI_WARN ? "warn" : "");
      r.dataset.feature = name; num.dataset.value = String(v);
      rows.push(r);
    }
    if (ranked.length > DRIFT_TIP_FEATURES) rows.push(span(`+ ${ranked.length - DRIFT_TIP_FEATURES} more features`, "when"));
    if (!ranked.length) rows.push(span("too few events for a PSI", "when"));
    rows.push(row("estimated MAE", quantity(c.estimated[i]), DRIFT_COLOURS.estimated)[0]);
    rows.push(row("realized MAE", quantity(c.realized[i]), DRIFT_COLOURS.realized)[0]);
    const when = c.step >= 86400 ? day(t)
      : `${c.until - c.since > 86400 || !sameDay(t, Date.now() / 1000) ? `${day(t)} ` : ""}${clock(t)}–${clock(t + c.step)}`;
    tip.replaceChildren(span(when, "when"), ...rows);
    tip.hidden = false;
    const box = fig.getBoundingClientRect(), rect = el.getBoundingClientRect();
    const fx = rect.left - box.left + px, width = tip.offsetWidth, room = fig.clientWidth;
    const left = fx + 14 + width <= room ? fx + 14 : fx - 14 - width;
    tip.style.left = `${Math.max(0, Math.min(left, room - width))}px`;
    tip.style.top = `${rect.top - box.top + HISTORY_PAD.t}px`;
  }

  function driftHoverAt(el, ev) {
    const c = past.driftChart;
    if (!c) return;
    const { i, px } = stepUnder(c, el, ev);
    past.dhover = i;
    drawDriftCharts();
    hideTips();
    showDriftTip(el, px);
  }

  for (const el of [$("h-psi"), $("h-est")]) {
    el.addEventListener("pointermove", (ev) => driftHoverAt(el, ev));
    el.addEventListener("pointerdown", (ev) => driftHoverAt(el, ev));
    el.addEventListener("pointerleave", (ev) => {
      if (ev.pointerType !== "mouse") return;
      past.dhover = null;
      hideTips();
      drawDriftCharts();
    });
  }

  // Another version's drift: the range stays, the URL's entry names the version now.
  $("h-dv").addEventListener("change", (ev) => {
    const r = { ...past.range, v: ev.target.value };
    window.history.replaceState(null, "", location.pathname + location.search + rangeHash(r));
    applyRange(r);
  });

  window.addEventListener("resize", () => { hideTips(); drawHistoryCharts(); });
  window.addEventListener("hashchange", fromUrl);
  window.addEventListener("popstate", fromUrl);

  function setConn(kind, text) {
    const el = $("conn");
    el.className = `conn conn-${kind}`;
    el.dataset.state = kind;
    el.textContent = text;
  }

  // A refused handshake's HTTP status (401, 403, 429) is hidden from the page, and a socket
  // whose token expires is closed with 1008: either way /api/me says whether the sign-in is
  // still good. Signed out, the page says so instead of reconnecting forever.
  function signedOut(why) {
    state.signedOut = true;
    setConn("offline", `signed out: ${why} · `);
    $("conn").dataset.state = "signed-out";
    const again = document.createElement("a");
    again.href = "/logout"; again.textContent = "sign in again";
    $("conn").append(again);
  }

  async function stillSignedIn() {
    try {
      const r = await fetch("/api/me", { cache: "no-store" });
      if (r.status !== 401) return true;
      const body = await r.json().catch(() => ({}));
      signedOut(body.detail || "token expired");
      return false;
    } catch (err) {
      return true;  // the gateway is away, not the sign-in: keep retrying
    }
  }

  let delay = 1000;
  function connect() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    // Where this page was in each stream: a reconnect resumes there, and gets what it
    // missed, or a fresh snapshot when the gateway no longer has it.
    const resume = Object.entries(state.pos)
      .map(([name, p]) => `${name}=${encodeURIComponent(`${p.epoch}:${p.offset}`)}`).join("&");
    const ws = new WebSocket(`${proto}://${location.host}/ws${resume ? `?${resume}` : ""}`);
    state.ws = ws;
    setConn("connecting", "connecting…");
    ws.onopen = () => {
      state.connected = true; delay = 1000; setConn("live", "live");
      loadTasks();  // catch up on anything that changed while the socket was down
    };
    ws.onmessage = (ev) => {
      const msg = JSON.parse(ev.data);
      let note = "";
      if (msg.type === "hello") {
        for (const [name, p] of Object.entries(msg.streams)) {
          state.pos[name] = { epoch: p.epoch, offset: p.offset };
        }
        return;
      }
      const pos = msg.stream && state.pos[msg.stream];
      if (pos) {
        if (msg.offset !== pos.offset + 1) {
          state.gaps++; note = `(missed ${msg.offset - pos.offset - 1})`;
        }
        pos.offset = msg.offset;
      }
      if (msg.type === "snapshot") {
        if (msg.data.full) state.snapshot = {};
        Object.assign(state.snapshot, msg.data);
        render(msg.data);
      } else if (msg.type === "task") {
        taskEvent(msg.data);
        if (msg.data.state === "SUCCESS" || msg.data.state === "FAILURE") {
          addToFeed({ type: "task", ts: msg.ts, data: { message: `${msg.data.kind} ${msg.data.state.toLowerCase()}` } }, note);
        }
      } else if (msg.type === "alert") {
        alertEvent(msg, note);
      } else if (msg.type !== "pong") {
        addToFeed(msg, note);
      }
    };
    ws.onclose = async () => {
      state.connected = false;
      if (state.signedOut || !(await stillSignedIn())) return;
      const secs = Math.round(delay / 1000);
      setConn("offline", `offline, retrying in ${secs}s`);
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 10000);
    };
  }

  async function whoami() {
    const r = await fetch("/api/me");
    if (r.status === 401) {
      const body = await r.json().catch(() => ({}));
      signedOut(body.detail || "token expired");
    } else if (r.ok) {
      const me = await r.json();
      $("who").textContent = me.admin ? `${me.user} (admin)` : me.user;
      $("t-retrain").hidden = !me.admin;
      alerts.admin = Boolean(me.admin);
      renderAlerts();
    }
  }

  function refreshPlot() {
    const img = $("plot");
    const next = new Image();
    next.onload = () => { img.src = next.src; };
    next.src = `/plot.png?t=${Date.now()}`;
  }

  window.addEventListener("resize", () => render({ histogram: 1, series: 1, drift: 1 }));
  fromUrl();
  connect();
  whoami();
  refreshPlot();
  setInterval(refreshPlot, 10000);
})();
