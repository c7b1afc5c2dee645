// imagingkit built-in viewer: lists a study's series (QIDO-RS, PS3.18 §10.6) and pages
// through its frames as WADO-RS rendered images (PS3.18 §9.5, window= §8.3.5.1.4).
// No dependencies; all text is written with textContent, never as markup.
"use strict";

(function () {
  const PRESETS = {
    lung: [-600, 1500],
    mediastinum: [50, 350],
    bone: [400, 1800],
    brain: [40, 80],
    abdomen: [40, 400],
  };
  const PRESET_KEYS = ["", "lung", "mediastinum", "bone", "brain", "abdomen"];
  const UID = /^[0-9][0-9.]{0,127}$/;
  const CACHE_SIZE = 24;

  const $ = (id) => document.getElementById(id);
  const metaBase = document.querySelector('meta[name="imagingkit-dicomweb"]');
  const rawBase = metaBase && metaBase.content && metaBase.content !== "__DICOMWEB_BASE__"
    ? metaBase.content : "../dicom-web";
  const base = new URL(rawBase, window.location.href).href.replace(/\/+$/, "");

  const state = {
    frames: [],      // [{study, series, instance, frame|null}]
    index: 0,
    preset: "",
    cache: new Map(), // url -> Promise<ImageBitmap>
    token: 0,        // increments on series change, stale loads are dropped
  };

  function setStatus(text) { $("status").textContent = text || ""; }
  function fail(err) {
    setStatus(err && err.message ? err.message : String(err));
    document.body.dataset.state = "error";
  }

  function first(ds, tag) {
    const el = ds && ds[tag];
    return el && Array.isArray(el.Value) && el.Value.length ? el.Value[0] : undefined;
  }
  function text(ds, tag) {
    const v = first(ds, tag);
    if (v === undefined || v === null) return "";
    if (typeof v === "object") return v.Alphabetic || "";
    return String(v);
  }
  function formatName(pn) {
    const [family, ...rest] = (pn || "").split("=")[0].split("^");
    const others = rest.filter(Boolean).join(" ");
    return others ? `${family}, ${others}` : family;
  }
  function formatDate(da) {
    return /^\d{8}$/.test(da) ? `${da.slice(0, 4)}-${da.slice(4, 6)}-${da.slice(6, 8)}` : da;
  }

  async function qido(path) {
    const response = await fetch(base + path, { headers: { Accept: "application/dicom+json" } });
    if (response.status === 204) return [];
    if (!response.ok) throw new Error(`QIDO-RS ${path.split("?")[0]} answered HTTP ${response.status}`);
    return response.json();
  }

  function params() {
    const q = new URLSearchParams(window.location.search);
    const list = (name) => (q.get(name) || "").split(",").map((s) => s.trim()).filter(Boolean);
    const studies = list("study").concat(list("StudyInstanceUIDs"));
    const series = list("series").concat(list("SeriesInstanceUIDs"));
    const bad = studies.concat(series).find((u) => !UID.test(u));
    if (bad !== undefined) throw new Error(`not a DICOM UID: ${bad.slice(0, 80)}`);
    return { studies, series };
  }

  // -- study list (no study given) --------------------------------------------------

  async function showStudyList() {
    $("panel-title").textContent = "Studies";
    const studies = await qido("/studies?limit=100&includefield=00081030,00080061");
    const list = $("series-list");
    list.replaceChildren();
    for (const ds of studies) {
      const uid = text(ds, "0020000D");
      if (!UID.test(uid)) continue;
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = "?study=" + encodeURIComponent(uid);
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = `${formatName(text(ds, "00100010")) || "(no name)"} · ${formatDate(text(ds, "00080020"))}`;
      const sub = document.createElement("span");
      sub.className = "sub";
      const mods = ((ds["00080061"] || {}).Value || []).join("/");
      sub.textContent = `${mods} ${text(ds, "00081030")}`.trim();
      b.appendChild(sub);
      b.addEventListener("click", () => { window.location.search = "?study=" + encodeURIComponent(uid); });
      li.appendChild(b);
      list.appendChild(li);
    }
    setStatus(studies.length ? "Choose a study." : "This server holds no study.");
    document.body.dataset.state = "study-list";
  }

  // -- series list -------------------------------------------------------------------

  async function loadStudies(studies, wantedSeries) {
    const list = $("series-list");
    list.replaceChildren();
    const buttons = [];
    for (const study of studies) {
      const info = await qido(`/studies?StudyInstanceUID=${study}&includefield=00081030`);
      const ds = info[0];
      if (ds && !$("study-info").textContent) {
        $("study-info").textContent = [formatName(text(ds, "00100010")), text(ds, "00100020")]
          .filter(Boolean).join(" · ");
      }
      const heading = document.createElement("li");
      heading.className = "study";
      heading.textContent = ds
        ? [formatDate(text(ds, "00080020")), text(ds, "00081030")].filter(Boolean).join(" · ")
        : `Study ${study} (not found)`;
      list.appendChild(heading);
      const series = await qido(`/studies/${study}/series?includefield=0008103E,00200011`);
      series.sort((a, b) => (Number(text(a, "00200011")) || 0) - (Number(text(b, "00200011")) || 0));
      for (const sds of series) {
        const uid = text(sds, "0020000E");
        if (!UID.test(uid)) continue;
        const li = document.createElement("li");
        const b = document.createElement("button");
        b.type = "button";
        b.dataset.series = uid;
        const label = text(sds, "0008103E") || "(no description)";
        b.textContent = `${text(sds, "00080060")} #${text(sds, "00200011")} ${label}`;
        const sub = document.createElement("span");
        sub.className = "sub";
        sub.textContent = `${text(sds, "00201209") || "?"} instance(s)`;
        b.appendChild(sub);
        b.addEventListener("click", () => selectSeries(study, uid, b).catch(fail));
        li.appendChild(b);
        list.appendChild(li);
        buttons.push({ study, uid, b, modality: text(sds, "00080060") });
      }
    }
    if (!buttons.length) throw new Error("no series found for this study");
    const chosen = buttons.find((x) => wantedSeries.includes(x.uid))
      || buttons.find((x) => !["SR", "KO", "PR", "DOC", "SEG"].includes(x.modality))
      || buttons[0];
    await selectSeries(chosen.study, chosen.uid, chosen.b);
  }

  async function selectSeries(study, series, button) {
    const token = ++state.token;
    for (const b of document.querySelectorAll("#series-list button")) {
      b.setAttribute("aria-current", String(b === button));
    }
    setStatus("Loading series…");
    document.body.dataset.state = "loading";
    const instances = await qido(
      `/studies/${study}/series/${series}/instances?includefield=00200013,00280008`);
    if (token !== state.token) return;
    instances.sort((a, b) => (Number(text(a, "00200013")) || 0) - (Number(text(b, "00200013")) || 0));
    const frames = [];
    for (const ds of instances) {
      const instance = text(ds, "00080018");
      if (!UID.test(instance)) continue;
      const count = Number(text(ds, "00280008")) || 1;
      if (count > 1) {
        for (let f = 1; f <= count && frames.length < 20000; f++) frames.push({ study, series, instance, frame: f });
      } else {
        frames.push({ study, series, instance, frame: null });
      }
    }
    state.frames = frames;
    state.cache.clear();
    const slider = $("slider");
    slider.max = String(Math.max(frames.length, 1));
    if (!frames.length) {
      setStatus("This series has no images.");
      document.body.dataset.state = "empty";
      return;
    }
    await show(Math.floor((frames.length - 1) / 2));
    $("stage").focus();
  }

  // -- rendering ---------------------------------------------------------------------

  function renderedURL(f) {
    let path = `/studies/${f.study}/series/${f.series}/instances/${f.instance}`;
    path += f.frame === null ? "/rendered" : `/frames/${f.frame}/rendered`;
    const preset = PRESETS[state.preset];
    return base + path + (preset ? `?window=${preset[0]},${preset[1]},linear` : "");
  }

  // PNG is lossless; JPEG is the one type every server must render (PS3.18 §8.7.4).
  // One type per request: some servers (Orthanc 1.10) refuse weighted Accept lists.
  let mediaType = "image/png";

  async function fetchRendered(url) {
    let response = await fetch(url, { headers: { Accept: mediaType } });
    if (!response.ok && mediaType !== "image/jpeg" && [400, 406].includes(response.status)) {
      const retry = await fetch(url, { headers: { Accept: "image/jpeg" } });
      if (retry.ok) mediaType = "image/jpeg";
      response = retry;
    }
    if (!response.ok) throw new Error(`rendered image answered HTTP ${response.status}`);
    return createImageBitmap(await response.blob());
  }

  function load(f) {
    const url = renderedURL(f);
    let promise = state.cache.get(url);
    if (!promise) {
      promise = fetchRendered(url);
      promise.catch(() => state.cache.delete(url));
      state.cache.set(url, promise);
      while (state.cache.size > CACHE_SIZE) state.cache.delete(state.cache.keys().next().value);
    }
    return promise;
  }

  async function show(index) {
    if (!state.frames.length) return;
    index = Math.max(0, Math.min(state.frames.length - 1, index));
    state.index = index;
    $("slider").value = String(index + 1);
    $("position").textContent = `${index + 1} / ${state.frames.length}`;
    const token = state.token;
    const frame = state.frames[index];
    try {
      const bitmap = await load(frame);
      if (token !== state.token || state.index !== index) return;
      const canvas = $("canvas");
      canvas.width = bitmap.width;
      canvas.height = bitmap.height;
      canvas.getContext("2d").drawImage(bitmap, 0, 0);
      canvas.dataset.instance = frame.instance;
      canvas.dataset.frame = String(frame.frame || 1);
      setStatus("");
      document.body.dataset.state = "ready";
    } catch (err) {
      if (token !== state.token) return;
      setStatus(`Cannot show this image: ${err.message}`);
      document.body.dataset.state = "error";
    }
    for (const k of [1, 2, -1, 3]) {
      const next = state.frames[index + k];
      if (next) load(next).catch(() => {});
    }
  }

  function step(delta) { show(state.index + delta); }

  function setPreset(name) {
    state.preset = name in PRESETS ? name : "";
    $("preset").value = state.preset;
    state.cache.clear();
    show(state.index);
  }

  function bindControls() {
    $("preset").addEventListener("change", (e) => setPreset(e.target.value));
    $("slider").addEventListener("input", (e) => show(Number(e.target.value) - 1));
    $("stage").addEventListener("wheel", (e) => {
      e.preventDefault();
      if (e.deltaY) step(e.deltaY > 0 ? 1 : -1);
    }, { passive: false });
    document.addEventListener("keydown", (e) => {
      if (e.target && e.target.tagName === "SELECT") return;
      const keys = {
        ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1, PageDown: 10, PageUp: -10,
      };
      if (e.key in keys) { step(keys[e.key]); e.preventDefault(); }
      else if (e.key === "Home") { show(0); e.preventDefault(); }
      else if (e.key === "End") { show(state.frames.length - 1); e.preventDefault(); }
      else if (/^[0-5]$/.test(e.key)) { setPreset(PRESET_KEYS[Number(e.key)]); }
    });
  }

  async function main() {
    bindControls();
    try {
      const { studies, series } = params();
      if (!studies.length) await showStudyList();
      else await loadStudies(studies, series);
    } catch (err) {
      fail(err);
    }
  }

  main();
})();
