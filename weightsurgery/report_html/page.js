"use strict";
(function () {
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const records = data.records, sources = data.sources;
  const state = { statuses: new Set(data.statuses), q: "", select: null, openAll: false };
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
    }
    for (const kid of kids) if (kid !== null && kid !== undefined) e.append(kid);
    return e;
  }
  function human(n) {
    for (const [u, d] of [["G", 1e9], ["M", 1e6], ["k", 1e3]]) if (n >= d) return (n / d).toFixed(2) + u;
    return String(n);
  }
  function pct(a, b) { return b ? (Math.floor((a / b) * 1000) / 10).toFixed(1) + "%" : "100.0%"; }
  function shape(s) { return s === undefined || s === null ? "" : (s.length ? s.join("×") : "scalar"); }
  function bar(parts, total, cls) {
    const b = el("span", { class: cls || "bar" });
    for (const [status, n] of parts) {
      if (!n) continue;
      b.append(el("span", { class: "st-" + status, style: "width:" + (100 * n / (total || 1)) + "%", title: status + " " + human(n) }));
    }
    return b;
  }

  // --- header -------------------------------------------------------------------------------
  function header() {
    const h = $("header");
    h.append(el("h1", { text: "weightsurgery report" + (data.applied ? "" : " (dry run)") }));
    const meta = el("dl", { class: "meta" });
    for (const [k, v] of [["source", data.source], ["target", data.target], ["summary", data.summary]]) {
      meta.append(el("dt", { text: k }), el("dd", { class: k === "summary" ? null : "mono", id: "meta-" + k, text: v }));
    }
    h.append(meta);
    const bars = el("div", { class: "bars" });
    const [lp, np] = data.coverage.params, [lt, nt] = data.coverage.tensors;
    const byStatus = {};
    for (const r of records) if (r.status !== "tied") byStatus[r.view] = (byStatus[r.view] || 0) + r.numel;
    bars.append(el("span", { text: "parameters" }), bar([["loaded", lp]], np),
                el("span", { id: "coverage-params", text: pct(lp, np) + " of " + human(np) + " from the source" }));
    bars.append(el("span", { text: "tensors" }), bar([["loaded", lt]], nt),
                el("span", { id: "coverage-tensors", text: lt + " of " + nt + " (" + pct(lt, nt) + ")" }));
    bars.append(el("span", { text: "by status" }), bar(data.statuses.map((s) => [s, byStatus[s] || 0]), np),
                el("span", { class: "counts", text: data.statuses.filter((s) => byStatus[s]).map((s) => s + " " + human(byStatus[s])).join(" · ") }));
    h.append(bars);
    if (data.warnings.length) {
      const w = el("ul", { class: "warnings", id: "warnings" });
      for (const line of data.warnings) w.append(el("li", { text: "warning: " + line }));
      h.append(w);
    }
  }

  // --- filters ------------------------------------------------------------------------------
  function filters() {
    const counts = {};
    for (const r of records) counts[r.view] = (counts[r.view] || 0) + 1;
    for (const s of data.statuses) {
      if (!counts[s]) continue;
      const box = el("input", { type: "checkbox", "data-status": s, checked: "" });
      box.addEventListener("change", () => { box.checked ? state.statuses.add(s) : state.statuses.delete(s); update(true); });
      $("filters").append(el("label", { class: "chip st-" + s }, box, el("span", { class: "dot" }), s + " " + counts[s]));
    }
    $("search").addEventListener("input", (e) => { state.q = e.target.value; update(true); });
    $("expand").addEventListener("click", () => setAll(false));
    $("collapse").addEventListener("click", () => setAll(true));
  }
  function setAll(collapsed) {
    for (const n of document.querySelectorAll(".node:not(.leaf)")) n.classList.toggle("collapsed", collapsed && n.dataset.depth !== "0");
  }

  // --- trees --------------------------------------------------------------------------------
  function uniform(obj) { const ks = Object.keys(obj).filter((k) => obj[k]); return ks.length === 1 ? ks[0] : "mixed"; }
  function tree(node, side, depth) {
    const isTarget = side === "target";
    const status = uniform(node.counts);
    const div = el("div", { class: "node st-" + status + (depth >= 2 ? " collapsed" : ""), "data-side": side,
                            "data-path": node.path, "data-status": status, "data-depth": String(depth) });
    const counts = isTarget
      ? data.statuses.filter((s) => node.params[s] || (s === "tied" && node.counts[s])).map((s) => s + " " + (s === "tied" ? node.counts[s] : human(node.params[s])))
      : ["used", "unused"].filter((s) => node.counts[s]).map((s) => node.counts[s] + " " + s);
    const total = Object.values(isTarget ? node.params : node.counts).reduce((a, b) => a + b, 0);
    const mini = bar(Object.entries(isTarget ? node.params : node.counts), total, "minibar");
    const caret = el("span", { class: "caret" + (node.children.length || Object.keys(node.tensors).length ? " has" : "") });
    const row = el("div", { class: "row" }, caret, el("span", { class: "name", text: depth ? node.name : (isTarget ? data.target : data.source) }), mini,
                   el("span", { class: "counts", text: counts.join(" · ") }));
    caret.addEventListener("click", (e) => { e.stopPropagation(); div.classList.toggle("collapsed"); });
    row.addEventListener("click", () => select(side, node.path));
    div.items = node.items;
    div.append(row);
    const kids = el("div", { class: "children" });
    for (const c of node.children) kids.append(tree(c, side, depth + 1));
    for (const [leaf, items] of Object.entries(node.tensors)) {
      const st = uniform(Object.fromEntries(items.map((i) => [isTarget ? records[i].view : (sources[i].used_by.length ? "used" : "unused"), 1])));
      const path = node.path ? node.path + "." + leaf : leaf;
      const keys = items.map((i) => (isTarget ? records[i].target : sources[i].key));
      const l = el("div", { class: "node leaf st-" + st, "data-side": side, "data-path": path, "data-status": st,
                            "data-depth": String(depth + 1), title: keys.join("\n") },
                   el("div", { class: "row" }, el("span", { class: "caret" }), el("span", { class: "name", text: leaf + (items.length > 1 ? " ×" + items.length : "") }),
                      el("span", { class: "counts", text: isTarget ? st : (st === "unused" ? "unused" : "→ " + sources[items[0]].used_by.map((i) => records[i].target).join(", ")) })));
      l.items = items;
      l.firstChild.addEventListener("click", () => select(side, path));
      kids.append(l);
    }
    div.append(kids);
    return div;
  }

  // --- table --------------------------------------------------------------------------------
  function table() {
    const body = document.querySelector("#tensors tbody");
    records.forEach((r, i) => {
      const how = r.adapter ? r.adapter + "(" + Object.entries(r.adapter_args || {}).map(([k, v]) => k + "=" + JSON.stringify(v)).join(", ") + ")" : "";
      const init = r.init_spec ? r.init_spec + (r.init_rule ? " (rule " + r.init_rule + ")" : "") : "";
      const evidence = el("td", {}, el("span", { class: "why", text: r.evidence || (r.alias_of ? "tied to " + r.alias_of : "") }));
      if (r.candidates && r.candidates.length) {
        const ul = el("ul", { class: "candidates" });
        for (const c of r.candidates) {
          ul.append(el("li", { "data-candidate": c.source }, "candidate ", el("code", { text: c.source }), ": paste ",
                       el("code", { class: "rename", text: c.rename }), " (CLI ", el("code", { text: c.cli }), ")"));
        }
        evidence.append(ul);
      }
      const src = r.sources && r.sources.length > 1 ? r.sources.join(", ") : (r.source || "");
      const tr = el("tr", { "data-key": r.target, "data-status": r.view, "data-index": String(i) },
        el("td", { class: "key", text: r.target }),
        el("td", {}, el("span", { class: "badge st-" + r.view, text: r.view }), r.view !== r.status ? " " + r.status : ""),
        el("td", { class: "key", text: src }),
        el("td", { text: shape(r.target_shape) + (r.source_shape && shape(r.source_shape) !== shape(r.target_shape) ? " ← " + shape(r.source_shape) : "") }),
        el("td", { text: r.cast || r.target_dtype }),
        el("td", { text: r.strategy || "" }), evidence, el("td", { text: how }), el("td", { text: init }));
      tr.item = i;
      body.append(tr);
    });
    const list = $("unused-list");
    if (data.unused.length) {
      list.append(el("h2", { text: "unused source keys (" + data.unused.length + ")" }));
      const ul = el("ul", { class: "mono" });
      for (const k of data.unused) ul.append(el("li", { class: "unused-key", "data-unused-key": k, text: k }));
      list.append(ul);
    }
  }

  // --- state --------------------------------------------------------------------------------
  function matcher(q) {
    q = q.trim().toLowerCase();
    if (!q) return () => true;
    if (q.includes("*")) {
      const re = new RegExp("^" + q.split("*").map((p) => p.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join(".*") + "$");
      return (s) => re.test(s.toLowerCase());
    }
    return (s) => s.toLowerCase().includes(q);
  }
  function select(side, path) {
    state.select = state.select && state.select.side === side && state.select.path === path ? null : { side, path };
    update(true);
  }
  function update(writeHash) {
    const match = matcher(state.q);
    const visible = records.map((r) => state.statuses.has(r.view) && (match(r.target) || match(r.source || "")));
    let chosen = null;
    if (state.select) {
      const n = document.querySelector('.node[data-side="' + state.select.side + '"][data-path="' + CSS.escape(state.select.path) + '"]');
      if (n) {
        chosen = new Set(state.select.side === "target" ? n.items : n.items.flatMap((s) => sources[s].used_by));
        chosen.sources = new Set(state.select.side === "source" ? n.items.map((s) => sources[s].key) : []);
      } else state.select = null;
    }
    for (const n of document.querySelectorAll(".node")) {
      n.classList.toggle("selected", !!state.select && n.dataset.side === state.select.side && n.dataset.path === state.select.path);
      const shown = n.dataset.side === "target" ? n.items.some((i) => visible[i])
        : n.items.some((s) => match(sources[s].key) || sources[s].used_by.some((i) => visible[i]));
      n.hidden = !shown;
      if (state.openAll || state.q.trim()) n.classList.remove("collapsed");
    }
    let rows = 0;
    for (const tr of document.querySelectorAll("#tensors tbody tr")) {
      const show = visible[tr.item] && (!chosen || chosen.has(tr.item));
      tr.hidden = !show;
      rows += show ? 1 : 0;
    }
    for (const li of document.querySelectorAll("[data-unused-key]")) {
      const k = li.dataset.unusedKey;
      li.hidden = !match(k) || (!!chosen && state.select.side === "source" && !chosen.sources.has(k)) || (!!chosen && state.select.side === "target");
    }
    for (const box of document.querySelectorAll("#filters input")) box.checked = state.statuses.has(box.dataset.status);
    if ($("search").value !== state.q) $("search").value = state.q;
    $("details-title").textContent = "tensors" + (state.select ? " of " + state.select.side + " " + (state.select.path || "(all)") : "") + " (" + rows + " of " + records.length + ")";
    document.body.dataset.shown = String(rows);
    if (writeHash) {
      const p = new URLSearchParams();
      if (state.statuses.size !== data.statuses.length) p.set("status", [...state.statuses].join(","));
      if (state.q) p.set("q", state.q);
      if (state.select) p.set("select", state.select.side + ":" + state.select.path);
      history.replaceState(null, "", p.toString() ? "#" + p.toString() : location.pathname + location.search);
    }
  }
  function readHash() {
    const p = new URLSearchParams(location.hash.slice(1));
    state.statuses = new Set(p.has("status") ? p.get("status").split(",").filter((s) => data.statuses.includes(s)) : data.statuses);
    state.q = p.get("q") || "";
    state.openAll = p.get("open") === "all";
    const sel = p.get("select");
    state.select = sel ? { side: sel.startsWith("source:") ? "source" : "target", path: sel.replace(/^(source|target):/, "") } : null;
  }

  header();
  filters();
  $("target-tree").append(tree(data.target_tree, "target", 0));
  $("source-tree").append(tree(data.source_tree, "source", 0));
  table();
  readHash();
  update(false);
  window.addEventListener("hashchange", () => { readHash(); update(false); });
  document.body.dataset.ready = "1";
})();
