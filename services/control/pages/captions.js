// The captions screen: follows /api/captions over a WebSocket and shows the latest utterances,
// source above translation. Each caption event carries the whole utterance as it now stands,
// so the page only ever replaces text. When the link to the box drops it says so and retries.
// In conversation mode ([languages] mode) the screen is face to face: each half shows, in its
// reader's language, what the other person said, and a button to hold while speaking.
"use strict";

(() => {
  const KEEP = 3; // utterances on screen: the newest big, two before it faded
  const captions = document.getElementById("captions");
  const idle = document.getElementById("idle");
  const banner = document.getElementById("banner");
  const bannerText = document.getElementById("banner-text");
  const bannerDetail = document.getElementById("banner-detail");
  const faceToFace = document.getElementById("face-to-face");
  const sides = {
    a: faceToFace.querySelector('[data-side="a"]'),
    b: faceToFace.querySelector('[data-side="b"]'),
  };
  const L = TOLK_LANGUAGES;
  let screen = { source: "", target: "", source_captions: true, mode: "one-way" };
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
    const conversation = message.mode === "conversation";
    document.body.classList.toggle("conversation", conversation);
    faceToFace.hidden = !conversation;
    for (const [side, code] of [["a", message.source], ["b", message.target]]) {
      const button = sides[side].querySelector(".talk");
      button.textContent = L.name(code);
      button.lang = L.tag(code);
      button.setAttribute("aria-label", `hold while speaking ${L.name(code)}`);
      sides[side].lang = L.tag(code);
      sides[side].dir = L.dir(code);
    }
    const b = message.banner || { level: "ok" };
    setBanner(b.level, b.text, b.detail);
    showNotice(message.notice || [], !!message.camera);
    showVisitorLanguages(message.visitor_languages || [], message.target);
    showSetup(message.setup);
  }

  // First boot without a key: where staff go (the address, its QR code, a one-time code).
  function showSetup(setup) {
    document.getElementById("setup").hidden = !setup;
    if (!setup) return;
    const qr = document.getElementById("setup-qr");
    if (qr.dataset.url !== setup.url) {
      qr.innerHTML = setup.qr; // an SVG the box drew of its own address
      qr.dataset.url = setup.url;
    }
    document.getElementById("setup-url").textContent = setup.code ? `${setup.url}?setup=${setup.code}` : setup.url;
    document.getElementById("setup-code").textContent = setup.code;
    document.getElementById("setup-code-line").hidden = !setup.code;
    idle.hidden = true;
  }

  // A visitor picks the language to read and hear; the box goes back to the staff's after quiet.
  function showVisitorLanguages(codes, current) {
    const row = document.getElementById("visitor");
    row.hidden = !codes.length;
    row.replaceChildren(
      ...codes.map((code) => {
        const button = document.createElement("button");
        button.type = "button";
        button.className = code === current ? "visitor-language chosen" : "visitor-language";
        button.dataset.language = code;
        button.textContent = L.name(code);
        button.lang = L.tag(code);
        button.setAttribute("aria-pressed", String(code === current));
        button.addEventListener("click", () => {
          fetch("/api/visitor-language", {
            method: "POST",
            headers: { "Content-Type": "application/json" },
            body: JSON.stringify({ language: code }),
          }).catch(() => {}); // the screen follows the session's own word on the stream
        });
        return button;
      }),
    );
  }

  // Where speech (and pictures) go, in the visitor's languages; whether the camera is in use.
  function showNotice(lines, camera) {
    document.getElementById("camera-on").hidden = !camera;
    document.getElementById("notice-lines").replaceChildren(
      ...lines.map((line) => {
        const span = document.createElement("span");
        span.className = "notice-line";
        span.textContent = line.text;
        if (line.language) {
          span.lang = L.tag(line.language);
          span.dir = L.dir(line.language);
        }
        return span;
      }),
    );
    document.getElementById("notice").hidden = !lines.length && !camera;
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

  // Where an utterance goes: the one list, or (face to face) the half of the person who reads
  // its translation, i.e. the side whose language it is translated into.
  function containerFor(caption) {
    if (screen.mode !== "conversation") return captions;
    const reader = caption.translation
      ? caption.translation.language
      : caption.source && caption.source.language === screen.source ? screen.target : screen.source;
    return sides[reader === screen.source ? "a" : "b"].querySelector(".side-captions");
  }

  function upsert(caption) {
    const box = containerFor(caption);
    let node = document.querySelector(`[data-utterance="${CSS.escape(caption.utterance)}"]`);
    if (node && node.parentElement !== box) {
      node.remove(); // its translation showed which side reads it
      node = null;
    }
    if (!node) {
      node = document.createElement("section");
      node.className = "utterance";
      node.dataset.utterance = caption.utterance;
      const source = document.createElement("p");
      source.className = "source";
      const translation = document.createElement("p");
      translation.className = "translation";
      node.append(source, translation);
      box.append(node);
    }
    fill(node.querySelector(".source"), screen.source_captions ? caption.source : null, screen.source);
    fill(node.querySelector(".translation"), caption.translation, screen.target);
    const all = box.querySelectorAll(".utterance");
    all.forEach((n, i) => n.classList.toggle("older", i < all.length - 1));
    for (let i = 0; i < all.length - KEEP; i++) all[i].remove();
    idle.hidden = true;
  }

  function reset(state) {
    document.querySelectorAll(".utterance").forEach((n) => n.remove());
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

  // Hold to talk: pressed, the box translates from this side's language; released, it goes
  // back to choosing by itself (or to the direction the staff set).
  function direction(value) {
    fetch("/api/direction", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ direction: value }),
    }).catch(() => {}); // the banner already says when the box cannot be reached
  }
  faceToFace.querySelectorAll(".talk").forEach((button) => {
    const release = () => {
      if (!button.classList.contains("held")) return;
      button.classList.remove("held");
      direction("auto");
    };
    button.addEventListener("pointerdown", (event) => {
      button.setPointerCapture(event.pointerId);
      button.classList.add("held");
      direction(button.dataset.direction);
    });
    button.addEventListener("pointerup", release);
    button.addEventListener("pointercancel", release);
    button.addEventListener("lostpointercapture", release);
  });

  connect();
})();
