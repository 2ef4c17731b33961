// rtcine live viewer: long-polls /api/frames, draws /frame/SEQ on the canvas with its own window/level
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const LATENCY_TARGET_MS = 100;            // useful on a console below about 100 ms
  const canvas = $("cine"), ctx = canvas.getContext("2d");
  const S = {
    first: -1, last: -1, received: 0,       // what the server holds
    shown: null,                            // the frame on screen {meta, pix}
    paused: false, drawn: 0, drawTimes: [],
    wl: null, range: 1,                     // {c, w} in image units; slider range
    cache: new Map(), inflight: null, online: false,
  };
  window.rtcineViewer = S;                  // for tests and the console

  function parseFrame(buf) {
    const n = new DataView(buf).getUint32(0, true);
    const meta = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
    const pix = new Uint16Array(buf, 4 + n, meta.width * meta.height);
    return { meta, pix };
  }

  async function loadFrame(seq) {
    if (S.cache.has(seq)) return S.cache.get(seq);
    const r = await fetch("/frame/" + seq, { cache: "no-store" });
    if (!r.ok) return null;
    const f = parseFrame(await r.arrayBuffer());
    S.cache.set(seq, f);
    if (S.cache.size > 64) S.cache.delete(S.cache.keys().next().value);
    return f;
  }

  function fmt(v, d) { return (v === null || v === undefined || !isFinite(v)) ? "\u2013" : v.toFixed(d); }
  function sig(v) { return (v === null || !isFinite(v)) ? "\u2013" : Number(v.toPrecision(4)).toString(); }

  function setAutoWL(meta) {
    const c = meta.window_center, w = meta.window_width;
    S.wl = { c: c, w: w > 0 ? w : 1 };
    S.range = Math.max(meta.offset + 65535 * meta.scale, S.wl.c + S.wl.w / 2, 1e-30);
    syncWLSliders();
  }

  function syncWLSliders() {
    $("win").value = Math.round(1000 * Math.min(2, S.wl.w / S.range) / 2);
    $("lev").value = Math.round(1000 * Math.min(1, Math.max(0, S.wl.c / S.range)));
    $("wl-val").textContent = "W " + sig(S.wl.w) + "  L " + sig(S.wl.c);
    $("ov-w").textContent = sig(S.wl.w); $("ov-l").textContent = sig(S.wl.c);
  }

  function render(f) {
    const m = f.meta;
    if (canvas.width !== m.width || canvas.height !== m.height) { canvas.width = m.width; canvas.height = m.height; }
    if (!S.wl) setAutoWL(m);
    const lo = S.wl.c - S.wl.w / 2, k = 255 / Math.max(S.wl.w, 1e-30);
    const img = ctx.createImageData(m.width, m.height), d = img.data, p = f.pix;
    const a = m.scale * k, b = (m.offset - lo) * k;
    for (let i = 0, j = 0; i < p.length; i++, j += 4) {
      let v = p[i] * a + b; v = v < 0 ? 0 : v > 255 ? 255 : v;
      d[j] = d[j + 1] = d[j + 2] = v; d[j + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    $("waiting").style.display = "none";
    $("frame-no").textContent = m.frame + (m.partial ? " (partial)" : "");
    $("latency").textContent = fmt(m.latency_ms, 1);
    $("latency").className = (m.latency_ms !== null && m.latency_ms > LATENCY_TARGET_MS) ? "late" : "";
    $("recon").textContent = "rtcine " + (m.recon || "") ;
    $("series").textContent = (m.description || "") + (m.series ? "  series " + m.series : "");
    $("dims").textContent = m.width + " \u00d7 " + m.height;
  }

  function show(f, live) {
    S.shown = f;
    render(f);
    S.drawn += 1;
    if (live) {
      const now = performance.now();
      S.drawTimes.push(now);
      while (S.drawTimes.length && now - S.drawTimes[0] > 2000) S.drawTimes.shift();
    }
    updateFps(); updatePosition();
  }

  function updateFps() {
    const t = S.drawTimes, now = performance.now();
    while (t.length && now - t[0] > 2000) t.shift();
    // frames drawn over the last 2 s, up to now (so it falls when frames stop coming)
    const fps = (!S.paused && t.length >= 2) ? (t.length - 1) * 1000 / Math.max(now - t[0], 1) : 0;
    $("fps").textContent = S.paused ? "\u2013" : fmt(fps, 1);
  }

  function updatePosition() {
    const sc = $("scrub");
    sc.min = Math.max(S.first, 0); sc.max = Math.max(S.last, 0);
    if (S.shown) sc.value = S.shown.meta.seq;
    const behind = S.shown ? S.last - S.shown.meta.seq : 0;
    $("scrub-val").textContent = S.last < 0 ? "no frames yet" :
      (S.shown ? (S.shown.meta.seq + 1) : 0) + " / " + S.received + " received";
    $("pos").textContent = behind > 0 ? behind + " behind newest" : "";
    const badge = $("badge");
    badge.textContent = S.paused ? "PAUSED" : "LIVE"; badge.className = S.paused ? "paused" : "live";
    $("pause").textContent = S.paused ? "\u25B6 Live" : "Pause";
    $("pause").classList.toggle("on", S.paused);
  }

  function setStatus(text, cls) { const s = $("status"); s.textContent = text; s.className = cls || ""; }

  let goToken = 0;
  async function goTo(seq) {
    seq = Math.max(S.first, Math.min(S.last, seq));
    if (seq < 0) return;
    const token = ++goToken;                // quick scrubbing: only the last request is shown
    const f = await loadFrame(seq);
    if (f && token === goToken) show(f, false);
  }

  function pause(p) {
    S.paused = p;
    if (!p) { S.drawTimes = []; if (S.last >= 0) goTo(S.last); }
    updatePosition(); updateFps();
  }

  async function poll() {
    for (;;) {
      try {
        const r = await fetch("/api/frames?wait=2&after=" + (S.paused ? S.last : Math.max(S.last, S.shown ? S.shown.meta.seq : -1)),
                              { cache: "no-store" });
        if (!r.ok) throw new Error("HTTP " + r.status);
        const st = await r.json();
        if (st.received < S.received) {     // the viewer server was restarted: start afresh
          S.cache.clear(); S.shown = null; S.wl = null; S.drawTimes = [];
        }
        S.first = st.first; S.last = st.last; S.received = st.received;
        $("rx-fps").textContent = fmt(st.receive_fps, 1);
        if (!S.online) { S.online = true; }
        setStatus(st.last < 0 ? "connected \u00b7 waiting for images" :
                  st.received + " frames received \u00b7 holding " + st.held + " (last " + st.history + ")", "live");
        if (!S.paused && st.last >= 0 && (!S.shown || st.last > S.shown.meta.seq)) {
          const f = await loadFrame(st.last);
          if (f && !S.paused) show(f, true);
        } else { updatePosition(); updateFps(); }
      } catch (e) {
        S.online = false;
        setStatus("viewer server unreachable (" + e.message + "), retrying\u2026", "error");
        await new Promise((ok) => setTimeout(ok, 1000));
      }
    }
  }

  // controls
  $("pause").onclick = () => pause(!S.paused);
  $("scrub").oninput = (e) => { if (!S.paused) pause(true); goTo(parseInt(e.target.value, 10)); };
  $("step-back").onclick = () => { pause(true); if (S.shown) goTo(S.shown.meta.seq - 1); };
  $("step-fwd").onclick = () => { pause(true); if (S.shown) goTo(S.shown.meta.seq + 1); };
  $("auto").onclick = () => { if (S.shown) { setAutoWL(S.shown.meta); render(S.shown); } };
  function fromSliders() {
    if (!S.wl) return;
    S.wl = { w: Math.max(2 * S.range * $("win").value / 1000, S.range * 1e-4), c: S.range * $("lev").value / 1000 };
    syncWLSliders(); if (S.shown) render(S.shown);
  }
  $("win").oninput = fromSliders; $("lev").oninput = fromSliders;
  let drag = null;
  canvas.addEventListener("pointerdown", (e) => { if (S.wl) { drag = { x: e.clientX, y: e.clientY, wl: { ...S.wl } }; canvas.setPointerCapture(e.pointerId); } });
  canvas.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const k = S.range / 300;
    S.wl = { w: Math.max(drag.wl.w + (e.clientX - drag.x) * k, S.range * 1e-4), c: drag.wl.c - (e.clientY - drag.y) * k };
    syncWLSliders(); if (S.shown) render(S.shown);
  });
  canvas.addEventListener("pointerup", () => { drag = null; });
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" && e.key !== " ") return;
    if (e.key === " ") { e.preventDefault(); pause(!S.paused); }
    else if (e.key === "ArrowLeft") { pause(true); if (S.shown) goTo(S.shown.meta.seq - 1); }
    else if (e.key === "ArrowRight") { pause(true); if (S.shown) goTo(S.shown.meta.seq + 1); }
    else if (e.key === "a" || e.key === "A") $("auto").click();
  });
  setInterval(updateFps, 500);
  poll();
})();
