// The admin page: offers only what the chosen model accepts (its languages and voices follow the
// model, text-only targets force captions, voices follow the target), sends only what changed as
// PATCH /api/config, and shows the box's answer in words. The box validates everything again:
// its refusal is shown as is.
"use strict";

(() => {
  const L = TOLK_LANGUAGES;
  const $ = (id) => document.getElementById(id);
  const STATUS_EVERY_MS = 3000;
  let report = null; // GET /api/languages: every model's tables
  let table = null; // the chosen model's: { languages, voices, detects_source, ... }
  let config = null; // GET /api/config, as last loaded or saved
  let devices = null; // GET /api/devices
  let modeChoice = "audio"; // what staff chose; a text-only target overrides it only while chosen

  class Problem extends Error {
    constructor(title, lines) {
      super(title);
      this.lines = lines || [];
    }
  }

  async function api(method, path, body) {
    const init = { method, headers: {}, credentials: "same-origin" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new Problem("The box did not answer", [String(err)]);
    }
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (response.status === 401) {
      throw new Problem("The control token is missing or wrong", [
        "Open /admin?token=YOUR-TOKEN with the box's control token, then try again.",
      ]);
    }
    if (!response.ok) {
      const title = data && data.error ? data.error[0].toUpperCase() + data.error.slice(1) : `HTTP ${response.status}`;
      throw new Problem(title, (data && data.problems) || []);
    }
    return data;
  }

  function showMessage(kind, title, lines) {
    const box = $("message");
    box.className = `message ${kind}`;
    box.replaceChildren();
    const strong = document.createElement("strong");
    strong.textContent = title;
    box.append(strong);
    if (lines && lines.length) {
      const list = document.createElement("ul");
      for (const line of lines) {
        const item = document.createElement("li");
        item.textContent = line;
        list.append(item);
      }
      box.append(list);
    }
    box.hidden = false;
  }

  function showProblem(err) {
    if (err instanceof Problem) showMessage("error", err.message, err.lines);
    else showMessage("error", "Something went wrong on this page", [String(err)]);
  }

  // --- choices -------------------------------------------------------------------------------

  function language(code) {
    return table.languages.find((l) => l.code === code);
  }

  function option(value, text, title) {
    const o = document.createElement("option");
    o.value = value;
    o.textContent = text;
    if (title) o.title = title;
    return o;
  }

  function languageLabel(l) {
    const native = L.name(l.code);
    return native && native !== l.name ? `${l.name} — ${native}` : l.name;
  }

  function fillModels() {
    $("model").replaceChildren(...report.models.map((m) => option(m.name, `${m.label} (${m.name})`)));
  }

  // The model's own tables: languages and voices follow it; what was chosen stays where it can.
  function useModel(name) {
    const keep = { source: $("source").value, target: $("target").value };
    table = report.models.find((m) => m.name === name) || report.models.find((m) => m.name === report.model);
    fillLanguages();
    const has = (select, value) => [...select.options].some((o) => o.value === value);
    $("source").value = has($("source"), keep.source) ? keep.source : $("source").options[0].value;
    $("target").value = has($("target"), keep.target) ? keep.target : "en";
    const spoken = table.languages.filter((l) => l.audio).length;
    const heard = table.detects_source ? "finds the spoken language itself" : "must be told the spoken language";
    $("model-note").textContent =
      `${table.label}: ${table.languages.length} languages, ${spoken} spoken; ${heard}; ` +
      `${table.audio_in_tokens_per_s} audio tokens per second in, ${table.audio_out_tokens_per_s} out.`;
    followTarget();
  }

  function fillLanguages() {
    const source = $("source");
    const heard = table.languages.filter((l) => l.source).map((l) => option(l.code, languageLabel(l)));
    if (table.detects_source) heard.unshift(option("auto", "Any language (the model finds it)"));
    source.replaceChildren(...heard);
    const target = $("target");
    const spoken = document.createElement("optgroup");
    spoken.label = "Speech and captions";
    const written = document.createElement("optgroup");
    written.label = "Captions only";
    for (const l of table.languages) (l.audio ? spoken : written).append(option(l.code, languageLabel(l)));
    target.replaceChildren(spoken, written);
  }

  function fillDeviceSelect(select, found, current, labels) {
    const values = [...found];
    if (current && !values.includes(current)) values.push(current);
    select.replaceChildren(
      ...values.map((v) => {
        let text = labels && labels[v] ? labels[v] : v;
        if (v === current && !found.includes(v)) text += " (not found now)";
        return option(v, text);
      }),
    );
    select.value = current;
  }

  function fillDevices() {
    const d = devices || { capture: ["default"], playback: ["default"], cameras: [], picamera2: false };
    fillDeviceSelect($("capture-device"), d.capture, config.audio.capture_device);
    fillDeviceSelect($("playback-device"), d.playback, config.audio.playback_device);
    const cams = ["none", ...d.cameras.map((c) => c.source)];
    const labels = { none: "Off", picamera2: "Raspberry Pi camera" };
    for (const c of d.cameras) labels[c.source] = c.name ? `${c.name} (${c.source.slice(5)})` : c.source.slice(5);
    if (d.picamera2) cams.push("picamera2");
    fillDeviceSelect($("camera"), cams, config.camera.source, labels);
  }

  // Whatever the target allows: speech or not, and which voices.
  function followTarget() {
    const l = language($("target").value) || table.languages[0];
    const mode = $("mode");
    const note = $("mode-note");
    mode.querySelector('option[value="audio"]').disabled = !l.audio;
    mode.value = l.audio ? modeChoice : "text";
    if (!l.audio) note.textContent = `${l.name} is shown as captions only: the service cannot speak it.`;
    note.hidden = l.audio;
    mode.disabled = !l.audio;
    const voice = $("voice");
    const chosen = voice.value;
    const auto = l.default_voice ? `Automatic (${l.default_voice})` : "None (captions only)";
    voice.replaceChildren(
      option("", auto),
      ...l.voices.map((name) => {
        const v = table.voices.find((x) => x.name === name);
        return option(name, name, v ? v.description : "");
      }),
    );
    voice.value = l.voices.includes(chosen) ? chosen : "";
    voice.disabled = !l.audio || mode.value === "text";
  }

  function fillForm() {
    const model = $("model");
    if (![...model.options].some((o) => o.value === config.service.model)) {
      model.append(option(config.service.model, config.service.model)); // a dated snapshot
    }
    model.value = config.service.model;
    useModel(report.models.some((m) => m.name === model.value) ? model.value : report.model);
    $("source").value = config.languages.source;
    $("target").value = config.languages.target;
    // Conversation mode ([languages] mode) and its direction ([languages] direction) in one choice.
    const sides = config.languages;
    $("conversation").value = sides.mode === "conversation" ? sides.direction || "auto" : "one-way";
    $("voice").replaceChildren(option(config.output.voice || "", config.output.voice || ""));
    $("voice").value = config.output.voice || "";
    const mods = config.output.modalities;
    modeChoice = mods && !mods.includes("audio") ? "text" : "audio";
    followTarget();
    const volume = Math.round((config.audio.volume ?? 1) * 100);
    $("volume").value = volume;
    $("volume-value").textContent = `${volume} %`;
    fillDevices();
  }

  // --- saving --------------------------------------------------------------------------------

  function changes() {
    const body = {};
    const put = (section, key, value, current) => {
      if (JSON.stringify(value) !== JSON.stringify(current ?? null)) (body[section] ||= {})[key] = value;
    };
    const l = language($("target").value) || table.languages[0];
    put("service", "model", $("model").value, config.service.model);
    put("languages", "source", $("source").value, config.languages.source);
    put("languages", "target", $("target").value, config.languages.target);
    const conversation = $("conversation").value;
    put("languages", "mode", conversation === "one-way" ? "one-way" : "conversation", config.languages.mode);
    if (conversation !== "one-way") put("languages", "direction", conversation, config.languages.direction);
    // Captions only is stored only where the target could speak; otherwise "automatic" already
    // means captions, and stays right when someone later picks a target that speaks.
    put("output", "modalities", l.audio && $("mode").value === "text" ? ["text"] : null, config.output.modalities);
    put("output", "voice", $("voice").value || null, config.output.voice);
    put("audio", "capture_device", $("capture-device").value, config.audio.capture_device);
    put("audio", "playback_device", $("playback-device").value, config.audio.playback_device);
    if (config.audio.volume !== undefined) {
      const volume = Number($("volume").value) / 100;
      if (Math.abs(volume - config.audio.volume) > 0.001) (body.audio ||= {}).volume = volume;
    }
    put("camera", "source", $("camera").value, config.camera.source);
    return body;
  }

  function describe(body) {
    const lines = [];
    for (const [section, keys] of Object.entries(body)) {
      for (const [key, value] of Object.entries(keys)) {
        lines.push(`${section}.${key} = ${value === null ? "automatic" : JSON.stringify(value)}`);
      }
    }
    return lines;
  }

  async function save(event) {
    event.preventDefault();
    const body = changes();
    if (!Object.keys(body).length) {
      showMessage("ok", "Nothing to change", []);
      return;
    }
    $("save").disabled = true;
    try {
      config = await api("PATCH", "/api/config", body);
      fillForm();
      showMessage("ok", "Saved", describe(body));
    } catch (err) {
      showProblem(err); // the box changed nothing: the form keeps the edits to correct them
    } finally {
      $("save").disabled = false;
    }
  }

  // The key goes to the box once and is never shown again: the field is cleared either way.
  async function saveKey(event) {
    event.preventDefault();
    const field = $("api-key");
    const key = field.value.trim();
    field.value = "";
    try {
      await api("PUT", "/api/key", { api_key: key });
      showMessage("ok", "Key saved", ["The session connects with it now."]);
    } catch (err) {
      showProblem(err);
    }
    refreshStatus();
  }

  async function forgetKey() {
    try {
      await api("DELETE", "/api/key");
      showMessage("ok", "Key forgotten", []);
    } catch (err) {
      showProblem(err);
    }
    refreshStatus();
  }

  function showKey(c) {
    const set = c.api_key === "set";
    $("key-state").textContent = set
      ? `A key is set (${c.api_key_from}).`
      : "No key is set: the box cannot reach the translation service.";
    const installer = set && c.api_key_from !== "entered on the admin page";
    $("forget-key").disabled = !set || installer;
    $("save-key").disabled = installer;
    if (installer) $("key-state").textContent += " It was set when the box was installed; change it there.";
  }

  async function command(path, done) {
    try {
      await api("POST", path);
      showMessage("ok", done, []);
    } catch (err) {
      showProblem(err);
    }
  }

  // --- status --------------------------------------------------------------------------------

  const number = (n) => Math.round(n).toLocaleString("en");

  async function refreshStatus() {
    let s;
    try {
      s = await api("GET", "/api/status");
    } catch (err) {
      $("health").textContent = "Unreachable";
      $("health").className = "pill bad";
      return;
    }
    showKey(s.config);
    $("health").textContent = s.health.ok ? "All working" : "Needs attention";
    $("health").className = `pill ${s.health.ok ? "ok" : "bad"}`;
    $("reasons").replaceChildren(
      ...s.health.reasons.map((r) => {
        const li = document.createElement("li");
        li.textContent = r;
        return li;
      }),
    );
    const session = s.session;
    const why = session.last_error || session.detail;
    $("session-state").textContent = why ? `${session.state} — ${why}` : session.state;
    const u = s.usage;
    if (!u) {
      $("usage").textContent = "nothing used yet";
      $("rate").textContent = "0 tokens per hour";
    } else {
      const tin = u.input_audio_tokens + u.input_text_tokens + u.image_tokens_estimate;
      const tout = u.output_audio_tokens + u.output_text_tokens;
      $("usage").textContent =
        `${number(u.audio_seconds_sent)} s of audio sent; ${number(tin)} tokens in, ${number(tout)} out`;
      const cost = u.cost_per_hour === null ? "" : ` ≈ ${u.cost_per_hour.toFixed(2)} at the configured price`;
      $("rate").textContent = `${number(u.tokens_per_hour)} tokens per hour${cost}`;
    }
    $("processes").replaceChildren(
      ...Object.values(s.processes).map((p) => {
        const tr = document.createElement("tr");
        for (const [text, cls] of [[p.name, ""], [p.up ? p.state : "down", p.up ? "" : "down"], [p.status, ""]]) {
          const td = document.createElement("td");
          td.textContent = text;
          if (cls) td.className = cls;
          tr.append(td);
        }
        return tr;
      }),
    );
  }

  // --- start ---------------------------------------------------------------------------------

  async function load() {
    try {
      [report, config] = await Promise.all([api("GET", "/api/languages"), api("GET", "/api/config")]);
    } catch (err) {
      showProblem(err);
      return;
    }
    fillModels();
    fillForm();
    document.body.dataset.ready = "true";
    try {
      devices = await api("GET", "/api/devices");
      fillDevices();
      if (devices.problems.length) showMessage("error", "Some devices could not be listed", devices.problems);
    } catch (err) {
      showProblem(err);
    }
  }

  $("model").addEventListener("change", () => useModel($("model").value));
  $("target").addEventListener("change", followTarget);
  $("mode").addEventListener("change", () => {
    modeChoice = $("mode").value;
    followTarget();
  });
  $("volume").addEventListener("input", () => {
    $("volume-value").textContent = `${$("volume").value} %`;
  });
  $("settings").addEventListener("submit", save);
  $("key-form").addEventListener("submit", saveKey);
  $("forget-key").addEventListener("click", forgetKey);
  $("revert").addEventListener("click", () => {
    fillForm();
    $("message").hidden = true;
  });
  $("speaker-test").addEventListener("click", () => command("/api/speaker-test", "Test tone sent to the speaker"));
  $("mute").addEventListener("click", () => command("/api/mute", "Microphone muted"));
  $("unmute").addEventListener("click", () => command("/api/unmute", "Microphone unmuted"));
  $("restart").addEventListener("click", () => command("/api/session/restart", "Session restarting"));

  load();
  refreshStatus();
  setInterval(refreshStatus, STATUS_EVERY_MS);
})();
