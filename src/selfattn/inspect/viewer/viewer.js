// selfattn attention viewer: queries on the left, keys on the right, one line per (query, key)
// whose opacity is the attention weight (in the spirit of bertviz's head view, Vig 2019).
// Everything is inline; the data is a JSON block of uint8 maps, code = round(sqrt(weight) * 255),
// base64: weight = (code / 255)^2.
//
// Long inputs: the token columns are ordinary scrolling DOM, but the canvas is only as tall as
// the visible part and is redrawn on scroll (software canvases rasterise every pixel of every
// line, so an 8000-px canvas of 250k diagonals would take seconds). The overview keeps each
// query's strongest keys within LINE_BUDGET lines; a focused token always shows all its lines.
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("attention-data").textContent);
  const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2",
                   "#17becf", "#bcbd22", "#ff7f0e", "#7f7f7f", "#393b79", "#637939"];
  const FOCUS = "#e8590c";
  const LINE_BUDGET = 6000; // overview lines; beyond, each query keeps its strongest keys
  const SQRT_ABOVE = 16; // more keys than this: opacity ∝ √weight, else the ~1/m weights vanish
  const $ = (id) => document.getElementById(id);
  const els = { kind: $("kind"), layer: $("layer"), head: $("head"), rowh: $("rowh"), info: $("info"),
                left: $("left"), right: $("right"), canvas: $("lines"), stage: $("stage"), scroller: $("scroller") };
  const maps = new Map(); // "kind/layer/head" -> {w: Uint8Array (n * m), buckets, lines, perRow}
  const state = { kind: null, layer: 0, head: 0, rowH: 16, focus: null };
  const stats = { draws: 0, lines: 0, highlighted: 0, focus: null, ms: 0 };

  function decode(b64) {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  // The overview's lines, once per map: 32 opacity buckets of (query, key) pairs.
  function overview(k, w) {
    const perRow = Math.max(1, Math.floor(LINE_BUDGET / k.n));
    const buckets = Array.from({ length: 32 }, () => []);
    let lines = 0;
    for (let i = 0; i < k.n; i++) {
      const row = w.subarray(i * k.m, (i + 1) * k.m);
      let cut = 1; // smallest value drawn in this row; 0 (under 0.5/255) is never drawn
      if (k.m > perRow) cut = Math.max(1, Array.from(row).sort((a, b) => b - a)[perRow - 1]);
      let kept = 0;
      for (let j = 0; j < k.m && kept < perRow; j++) {
        if (row[j] < cut) continue;
        buckets[Math.min(31, row[j] >> 3)].push(i, j);
        kept++;
      }
      lines += kept;
    }
    return { w, buckets, lines, perRow };
  }

  function currentMap() {
    const key = state.kind + "/" + state.layer + "/" + state.head;
    if (!maps.has(key)) {
      const k = DATA.kinds[state.kind];
      const w = decode(k.maps[k.layers.indexOf(state.layer)][k.heads.indexOf(state.head)]);
      maps.set(key, overview(k, w));
    }
    return maps.get(key);
  }

  function fill(select, values, label) {
    select.replaceChildren(...values.map((v) => {
      const o = document.createElement("option");
      o.value = String(v);
      o.textContent = label ? label(v) : String(v);
      return o;
    }));
  }

  function buildColumns() {
    const k = DATA.kinds[state.kind];
    const h = state.rowH;
    const font = Math.max(7, Math.min(13, h - 3));
    for (const [col, labels, side] of [[els.left, k.q, "q"], [els.right, k.k, "k"]]) {
      const frag = document.createDocumentFragment();
      labels.forEach((text, i) => {
        const d = document.createElement("div");
        d.className = "tok";
        d.dataset.side = side;
        d.dataset.i = String(i);
        d.style.cssText = `top:${i * h}px;height:${h}px;line-height:${h}px;font-size:${font}px`;
        const pos = document.createElement("span");
        pos.className = "pos";
        pos.textContent = String(i);
        const t = document.createElement("span");
        t.textContent = text;
        if (side === "q") d.append(t, pos); else d.append(pos, t);
        d.title = text + " (" + i + ")";
        frag.append(d);
      });
      col.replaceChildren(frag);
    }
    els.stage.style.height = Math.max(k.n, k.m) * h + 40 + "px";
  }

  // The canvas covers the visible rows only: its top follows the scroll position.
  function placeCanvas() {
    const width = parseInt(getComputedStyle(els.stage).getPropertyValue("--linesw"), 10) || 320;
    const headOffset = els.left.offsetTop; // the column titles above row 0
    const top = Math.max(0, els.scroller.scrollTop - headOffset);
    const height = Math.max(1, Math.min(els.scroller.clientHeight, els.stage.offsetHeight - headOffset - top));
    const dpr = window.devicePixelRatio || 1;
    if (els.canvas.width !== Math.round(width * dpr) || els.canvas.height !== Math.round(height * dpr)) {
      els.canvas.width = Math.round(width * dpr);
      els.canvas.height = Math.round(height * dpr);
      els.canvas.style.width = width + "px";
      els.canvas.style.height = height + "px";
    }
    els.canvas.style.top = headOffset + top + "px";
    return { width, height, top, dpr };
  }

  function strokePairs(ctx, pairs, h, W, lo, hi) {
    ctx.beginPath();
    for (let p = 0; p < pairs.length; p += 2) {
      const y1 = (pairs[p] + 0.5) * h, y2 = (pairs[p + 1] + 0.5) * h;
      if (Math.max(y1, y2) < lo || Math.min(y1, y2) > hi) continue; // entirely off screen
      ctx.moveTo(0, y1);
      ctx.lineTo(W, y2);
    }
    ctx.stroke();
  }

  function draw() {
    const t0 = performance.now();
    const k = DATA.kinds[state.kind];
    const map = currentMap();
    const h = state.rowH;
    const view = placeCanvas();
    const ctx = els.canvas.getContext("2d");
    ctx.setTransform(view.dpr, 0, 0, view.dpr, 0, -view.top * view.dpr); // stage coordinates
    ctx.clearRect(0, view.top, view.width, view.height);
    const lo = view.top, hi = view.top + view.height;
    const sqrt = k.m > SQRT_ABOVE;
    const fade = state.focus ? 0.12 : 1;
    ctx.strokeStyle = PALETTE[state.head % PALETTE.length];
    ctx.lineWidth = Math.max(0.6, Math.min(2, h / 8));
    map.buckets.forEach((pairs, b) => {
      if (!pairs.length) return;
      const v = (b + 0.5) / 32;
      ctx.globalAlpha = fade * Math.min(1, (sqrt ? v : v * v) + 0.04); // buckets are in √weight
      strokePairs(ctx, pairs, h, view.width, lo, hi);
    });
    const highlighted = state.focus ? drawFocus(ctx, k, map.w, h, view.width, lo, hi) : 0;
    if (!state.focus) clearFocus();
    ctx.globalAlpha = 1;
    stats.draws++;
    stats.lines = map.lines;
    stats.highlighted = highlighted;
    stats.focus = state.focus ? state.focus.side + state.focus.i : null;
    stats.ms = performance.now() - t0;
    const f = state.focus;
    els.info.textContent = k.n + " queries × " + k.m + " keys · " + map.lines + " lines" +
      (k.m > map.perRow ? " (each query's strongest " + map.perRow + ")" : "") +
      (sqrt ? ", opacity ∝ √weight" : "") +
      (f ? " · " + (f.side === "q" ? "query" : "key") + " “" + (f.side === "q" ? k.q : k.k)[f.i] + "” (" + f.i + ")" : "");
  }

  function clearFocus() {
    for (const el of document.querySelectorAll(".tok.lit")) {
      el.style.background = "";
      el.classList.remove("focus", "lit");
      delete el.dataset.w;
    }
  }

  // Every line of the focused token in the focus colour, opacity relative to its largest weight;
  // the tokens at the other end get a background of that strength and their weight as text.
  function drawFocus(ctx, k, w, h, W, lo, hi) {
    clearFocus();
    const { side, i } = state.focus;
    const count = side === "q" ? k.m : k.n;
    const weight = (t) => (side === "q" ? w[i * k.m + t] : w[t * k.m + i]);
    let top = 1;
    for (let t = 0; t < count; t++) top = Math.max(top, weight(t));
    const rel = (c) => (c / top) * (c / top); // weight / largest weight of this token
    const others = side === "q" ? els.right : els.left;
    const buckets = Array.from({ length: 16 }, () => []);
    let highlighted = 0;
    for (let t = 0; t < count; t++) {
      const v = weight(t);
      if (v === 0) continue;
      const pair = side === "q" ? [i, t] : [t, i];
      buckets[Math.min(15, Math.floor(16 * rel(v)))].push(...pair);
      const el = others.children[t];
      el.style.background = "rgba(232, 89, 12, " + (0.6 * rel(v)).toFixed(3) + ")";
      const wt = (v / 255) ** 2;
      el.dataset.w = wt >= 0.001 ? wt.toFixed(3) : wt.toExponential(0); // shown beside the token (CSS)
      el.classList.add("lit");
      highlighted++;
    }
    ctx.strokeStyle = FOCUS;
    ctx.lineWidth = Math.max(1, Math.min(3, h / 5));
    buckets.forEach((pairs, b) => {
      if (!pairs.length) return;
      ctx.globalAlpha = Math.max(0.04, b / 15); // the many near-zero lines of a long row stay faint
      strokePairs(ctx, pairs, h, W, lo, hi);
    });
    (side === "q" ? els.left : els.right).children[i].classList.add("focus", "lit");
    return highlighted;
  }

  function selectKind(kind) {
    state.kind = kind;
    const k = DATA.kinds[kind];
    fill(els.layer, k.layers);
    fill(els.head, k.heads);
    if (!k.layers.includes(state.layer)) state.layer = k.layers[0];
    if (!k.heads.includes(state.head)) state.head = k.heads[0];
    els.kind.value = kind;
    els.layer.value = String(state.layer);
    els.head.value = String(state.head);
    state.focus = null;
    buildColumns();
    draw();
  }

  function onHover(ev) {
    const tok = ev.target.closest(".tok");
    const next = tok ? { side: tok.dataset.side, i: parseInt(tok.dataset.i, 10) } : null;
    const same = (a, b) => (a && b ? a.side === b.side && a.i === b.i : a === b);
    if (!same(next, state.focus)) { state.focus = next; draw(); }
  }

  let pending = false;
  function redrawSoon() { // at most one redraw per frame while scrolling
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; draw(); });
  }

  fill(els.kind, Object.keys(DATA.kinds), (k) => DATA.kinds[k].name);
  els.kind.addEventListener("change", () => selectKind(els.kind.value));
  els.layer.addEventListener("change", () => { state.layer = parseInt(els.layer.value, 10); draw(); });
  els.head.addEventListener("change", () => { state.head = parseInt(els.head.value, 10); draw(); });
  els.rowh.addEventListener("change", () => { state.rowH = parseInt(els.rowh.value, 10); buildColumns(); draw(); });
  els.scroller.addEventListener("scroll", redrawSoon, { passive: true });
  window.addEventListener("resize", redrawSoon);
  for (const col of [els.left, els.right]) {
    col.addEventListener("mouseover", onHover);
    col.addEventListener("mouseleave", () => { if (state.focus) { state.focus = null; draw(); } });
  }
  window.selfattnViewer = { state, stats, draw, selectKind };
  selectKind(Object.keys(DATA.kinds)[0]);
})();
