// The captions screen: follows /api/captions over a WebSocket and shows the latest utterances,
// source above translation. Each caption event carries the whole utterance as it now stands,
// so the page only ever replaces text. When the link to the box drops it says so and retries.
"use strict";

(() => {
  const KEEP = 3; // utterances on screen: the newest big, two before it faded
  const captions = document.getElementById("captions");
  const idle = document.getElementById("idle");
  const banner = document.getElementById("banner");
  const bannerText = document.getElementById("banner-text");
  const bannerDetail = document.getElementById("banner-detail");
  const L = TOLK_LANGUAGES;
  let screen = { source: "", target: "", source_captions: true };
  let retryMs = 500;

  function setBanner(level, text, detail) {
    banner.hidden = level === "ok" || !text;
    banner.className = `banner ${level}`;
    bannerText.textContent = text || "";
    bannerDetail.textContent = detail || "";
  }

  function setScreen(message) {
    screen = message;
    document.getElementById("source-name").textContent = L.name(message.source);
    document.getElementById("target-name").textContent = L.name(message.target);
    const b = message.banner || { level: "ok" };
    setBanner(b.level, b.text, b.detail);
  }

  function fill(p, part, fallbackLanguage) {
    if (!part || !part.text) {
      p.textContent = "";
      return;
    }
    const code = part.language || fallbackLanguage;
    p.textContent = part.text;
    p.lang = L.tag(code);
    p.dir = L.dir(code);
    p.classList.toggle("partial", !part.final);
    p.classList.toggle("final", !!part.final);
  }

  function upsert(caption) {
    let node = captions.querySelector(`[data-utterance="${CSS.escape(caption.utterance)}"]`);
    if (!node) {
      node = document.createElement("section");
      node.className = "utterance";
      node.dataset.utterance = caption.utterance;
      const source = document.createElement("p");
      source.className = "source";
      const translation = document.createElement("p");
      translation.className = "translation";
      node.append(source, translation);
      captions.append(node);
    }
    fill(node.querySelector(".source"), screen.source_captions ? caption.source : null, screen.source);
    fill(node.querySelector(".translation"), caption.translation, screen.target);
    const all = captions.querySelectorAll(".utterance");
    all.forEach((n, i) => n.classList.toggle("older", i < all.length - 1));
    for (let i = 0; i < all.length - KEEP; i++) all[i].remove();
    idle.hidden = true;
  }

  function reset(state) {
    captions.querySelectorAll(".utterance").forEach((n) => n.remove());
    idle.hidden = false;
    setScreen(state);
    (state.captions || []).forEach(upsert);
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/api/captions`);
    ws.onopen = () => {
      retryMs = 500;
    };
    ws.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "state") reset(message);
      else if (message.type === "caption") upsert(message.caption);
      else if (message.type === "screen") setScreen(message);
    };
    ws.onclose = () => {
      setBanner("warn", "Reconnecting to the box…", "the captions will be back in a moment");
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 5000);
    };
  }

  connect();
})();
