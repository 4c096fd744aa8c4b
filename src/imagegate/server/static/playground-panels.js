// The playground's panels (templates/playground.html), beside the form playground.js runs: plain
// JavaScript, no framework, no build, loaded after playground.js and driven by its hook
// (window.imagegatePlayground: the parameters the Generate button would send, the input files, the
// key; an "imagegate:answered" event on document after each answer shown).
//
//   Copy as curl / Python / Node   the request the Generate button would send, as code that reads
//                                  the key from $IMAGEGATE_API_KEY (never the key itself)
//   Recent results                 this browser's last results, in localStorage, each with a small
//                                  thumbnail made on a canvas (it outlives the result URL)
//   Jobs                           GET /v1/images/jobs (the key's, newest first); POST .../cancel
//   Today's usage                  GET /v1/usage?start=<UTC midnight>&group_by=model (a key sees
//                                  only its own rows)
//
// A failed call shows the API's message in its own section (role=alert); a refused key (401) is
// already shown next to the API key field by playground.js, so here it is plain text, not a second
// alert. Nothing is left to throw: every async path ends in a catch.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const pg = window.imagegatePlayground;
  if (!pg) return; // playground.js did not run: nothing to attach to
  const api = `${window.location.origin}${pg.root}/v1`;
  // A gateway without keys answers without one: known once an answer came with no key typed. Until
  // then no key means no call (a keyed gateway would only answer 401).
  let openGateway = false;
  const canAsk = () => Boolean(pg.apiKey()) || openGateway;

  // An error in a section: the API's message as an alert, or, for a refused key, as plain text
  // (the API key field already carries that alert).
  function showSectionError(name, err) {
    const box = $(`${name}-error`);
    const note = $(`${name}-note`);
    const message = err && err.message ? err.message : String(err);
    if (err && err.status === 401) {
      box.hidden = true;
      box.textContent = "";
      note.textContent = `${message} See the API key field.`;
      return;
    }
    box.textContent = message;
    box.hidden = false;
  }

  // aria-busy on a section while any of its calls is under way (screen readers wait for it to settle).
  const inFlight = {};

  async function busyWhile(name, work) {
    inFlight[name] = (inFlight[name] || 0) + 1;
    $(name).setAttribute("aria-busy", "true");
    try {
      return await work();
    } finally {
      inFlight[name] -= 1;
      $(name).setAttribute("aria-busy", String(inFlight[name] > 0));
    }
  }

  function clearSectionError(name) {
    $(`${name}-error`).hidden = true;
    $(`${name}-error`).textContent = "";
    $(`${name}-note`).textContent = "";
  }

  // --- copy as code ----------------------------------------------------------------------------

  // The openai SDKs' own arguments (OpenAI's Images API reference); any other parameter is the
  // gateway's, sent in Python's `extra_body` (the Node SDK sends unknown keys in the body as they are).
  const SDK_GENERATE = new Set([
    "model", "prompt", "n", "size", "quality", "background", "moderation", "output_format",
    "output_compression", "partial_images", "stream", "response_format", "style", "user",
  ]);
  const SDK_EDIT = new Set([
    "model", "prompt", "n", "size", "quality", "background", "input_fidelity", "output_format",
    "output_compression", "partial_images", "stream", "response_format", "user",
  ]);

  function shellQuote(text) {
    return `'${String(text).replace(/'/g, "'\\''")}'`;
  }

  // JSON strings and numbers are Python literals too; true/false/null are spelled differently.
  function pyValue(value) {
    if (value === true) return "True";
    if (value === false) return "False";
    if (value === null || value === undefined) return "None";
    return JSON.stringify(value);
  }

  function jsKey(name) {
    return /^[A-Za-z_$][\w$]*$/.test(name) ? name : JSON.stringify(name);
  }

  function fileNames() {
    return pg.inputFiles().map((file, index) => file.name || `image-${index + 1}.png`);
  }

  function curlCode(p, edit, names, mask) {
    const lines = [`curl -X POST ${api}/images/${edit ? "edits" : "generations"}`, '-H "Authorization: Bearer $IMAGEGATE_API_KEY"'];
    if (p.stream) lines.push("--no-buffer"); // print each server-sent event as it comes
    if (!edit) {
      lines.push('-H "Content-Type: application/json"', `-d ${shellQuote(JSON.stringify(p, null, 2))}`);
    } else {
      // --form-string: a value starting with @ or < is text, not a file to read (curl's -F rule).
      for (const [name, value] of Object.entries(p)) lines.push(`--form-string ${shellQuote(`${name}=${value}`)}`);
      const file = (name) => `"${name.replace(/["\\]/g, "\\$&")}"`; // curl -F's quoted file name
      for (const name of names) lines.push(`-F ${shellQuote(`image[]=@${file(name)}`)}`);
      if (mask) lines.push(`-F ${shellQuote(`mask=@${file("mask.png")}`)}`);
    }
    return lines.join(" \\\n  ");
  }

  function pythonCode(p, edit, names, mask) {
    const known = edit ? SDK_EDIT : SDK_GENERATE;
    const args = [];
    if (edit) {
      args.push(`image=[${names.map((n) => `open(${JSON.stringify(n)}, "rb")`).join(", ")}]`);
      if (mask) args.push('mask=open("mask.png", "rb")');
    }
    const extra = Object.entries(p).filter(([name]) => !known.has(name));
    for (const [name, value] of Object.entries(p)) if (known.has(name)) args.push(`${name}=${pyValue(value)}`);
    if (extra.length) args.push(`extra_body={${extra.map(([n, v]) => `${JSON.stringify(n)}: ${pyValue(v)}`).join(", ")}}`);
    const event = edit ? "image_edit.completed" : "image_generation.completed";
    const handle = p.stream
      ? [
          "saved = 0",
          "for event in result:",
          `    if event.type == "${event}":  # partial images come first`,
          "        saved += 1",
          '        name = f"imagegate-{saved}.{event.output_format}"',
          '        with open(name, "wb") as out:',
          "            out.write(base64.b64decode(event.b64_json))",
          "        print(name, event.size)",
        ]
      : [
          "for index, image in enumerate(result.data, 1):",
          "    if image.url:",
          "        print(image.url)",
          "    else:",
          '        name = f"imagegate-{index}.{result.output_format or \'png\'}"',
          '        with open(name, "wb") as out:',
          "            out.write(base64.b64decode(image.b64_json))",
          "        print(name)",
        ];
    return [
      "import base64",
      "import os",
      "",
      "from openai import OpenAI",
      "",
      `client = OpenAI(base_url=${JSON.stringify(api)}, api_key=os.environ["IMAGEGATE_API_KEY"])`,
      `result = client.images.${edit ? "edit" : "generate"}(`,
      ...args.map((a) => `    ${a},`),
      ")",
      ...handle,
      "",
    ].join("\n");
  }

  function nodeCode(p, edit, names, mask) {
    const fields = [];
    if (edit) {
      fields.push(`image: [${names.map((n) => `fs.createReadStream(${JSON.stringify(n)})`).join(", ")}]`);
      if (mask) fields.push('mask: fs.createReadStream("mask.png")');
    }
    for (const [name, value] of Object.entries(p)) fields.push(`${jsKey(name)}: ${JSON.stringify(value)}`);
    const event = edit ? "image_edit.completed" : "image_generation.completed";
    const handle = p.stream
      ? [
          "let saved = 0;",
          "for await (const event of result) {",
          `  if (event.type === "${event}") { // partial images come first`,
          "    const name = `imagegate-${++saved}.${event.output_format}`;",
          '    fs.writeFileSync(name, Buffer.from(event.b64_json, "base64"));',
          "    console.log(name, event.size);",
          "  }",
          "}",
        ]
      : [
          "result.data.forEach((image, index) => {",
          "  if (image.url) return console.log(image.url);",
          "  const name = `imagegate-${index + 1}.${result.output_format || \"png\"}`;",
          '  fs.writeFileSync(name, Buffer.from(image.b64_json, "base64"));',
          "  console.log(name);",
          "});",
        ];
    return [
      'import fs from "node:fs";',
      'import OpenAI from "openai";',
      "",
      `const client = new OpenAI({ baseURL: ${JSON.stringify(api)}, apiKey: process.env.IMAGEGATE_API_KEY });`,
      `const result = await client.images.${edit ? "edit" : "generate"}({`,
      ...fields.map((f) => `  ${f},`),
      "});",
      ...handle,
      "",
    ].join("\n");
  }

  const WRITERS = { curl: curlCode, python: pythonCode, node: nodeCode };
  const LANGUAGES = { curl: "curl", python: "Python", node: "Node" };
  let maskURL = null;

  // Exactly what playground.js would send now: its parameters, its input files (by name), its mask.
  function codeFor(lang) {
    const names = fileNames();
    const edit = names.length > 0;
    const mask = edit && pg.maskSent();
    return { code: WRITERS[lang](pg.parameters(), edit, names, mask), names, mask };
  }

  async function showMaskLink(hint) {
    if (maskURL) URL.revokeObjectURL(maskURL);
    maskURL = URL.createObjectURL(await pg.maskBlob());
    const link = document.createElement("a");
    link.href = maskURL;
    link.download = "mask.png";
    link.textContent = "Download mask.png";
    hint.append(" The painted mask is read from mask.png: ", link, ".");
  }

  async function copyCode(lang) {
    const status = $("copy-status");
    try {
      const { code, names, mask } = codeFor(lang);
      $("code-panel").hidden = false;
      $("code-shown").value = code;
      $("code-shown").dataset.lang = lang;
      const hint = $("code-hint");
      hint.textContent = "Set IMAGEGATE_API_KEY to your key first.";
      if (names.length) hint.append(` Run it where the input files are: ${names.join(", ")}.`);
      if (mask) await showMaskLink(hint);
      try {
        await navigator.clipboard.writeText(code);
        status.textContent = `Copied the ${LANGUAGES[lang]} code to the clipboard.`;
      } catch (_) {
        // No clipboard permission (or no secure context): the code is shown, selected, to copy by hand.
        status.textContent = `The clipboard is not available here: the ${LANGUAGES[lang]} code is selected below, copy it.`;
        $("code-shown").focus();
        $("code-shown").select();
      }
    } catch (err) {
      status.textContent = `Could not build the code: ${err.message || err}`;
    }
  }

  // --- recent results (this browser's, in localStorage) ----------------------------------------

  const RECENT_STORE = "imagegate.recent";
  const RECENT_MAX = 12;
  const THUMB_PX = 160;
  const answers = new Map(); // result URL -> whether it still answered (checked once per page load)

  function readRecent() {
    try {
      const list = JSON.parse(localStorage.getItem(RECENT_STORE) || "[]");
      return Array.isArray(list) ? list.filter((r) => r && typeof r === "object") : [];
    } catch (_) {
      return []; // storage disabled, or not our JSON
    }
  }

  // Newest first, at most RECENT_MAX; when the storage is full the oldest go until it fits.
  function writeRecent(list) {
    let kept = list.slice(0, RECENT_MAX);
    for (;;) {
      try {
        localStorage.setItem(RECENT_STORE, JSON.stringify(kept));
        return kept;
      } catch (err) {
        if (!kept.length) throw err;
        kept = kept.slice(0, -1); // QuotaExceededError: drop the oldest and try again
      }
    }
  }

  // A small JPEG of the image, drawn on a canvas: result URLs expire, this does not. Same-origin
  // URLs and data URIs leave the canvas readable.
  async function thumbnail(src) {
    const img = new Image();
    img.src = src;
    await img.decode();
    const scale = Math.min(1, THUMB_PX / Math.max(img.naturalWidth, img.naturalHeight));
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(img.naturalWidth * scale));
    canvas.height = Math.max(1, Math.round(img.naturalHeight * scale));
    canvas.getContext("2d").drawImage(img, 0, 0, canvas.width, canvas.height);
    return canvas.toDataURL("image/jpeg", 0.8);
  }

  async function remember(detail) {
    try {
      const p = detail.parameters || {};
      const records = [];
      for (const src of detail.images) {
        let thumb = null;
        try {
          thumb = await thumbnail(src);
        } catch (_) {
          thumb = null; // undecodable: kept without a thumbnail
        }
        records.push({
          url: src.startsWith("data:") ? null : src, // a data URI is the image itself: too big to keep
          thumb,
          prompt: p.prompt || "",
          model: p.model || "",
          size: detail.size || "",
          time: Date.now(),
        });
      }
      writeRecent([...records.reverse(), ...readRecent()]);
      $("recent-status").textContent = "";
    } catch (err) {
      $("recent-status").textContent = `Not kept in this browser: ${err.message || err}`;
    }
    await showRecent();
  }

  function sameOrigin(url) {
    try {
      return new URL(url, window.location.href).origin === window.location.origin;
    } catch (_) {
      return false;
    }
  }

  // Whether a result URL still answers (HEAD; other origins are not asked: the CSP stops it).
  async function stillAnswers(url) {
    if (!answers.has(url)) {
      answers.set(
        url,
        sameOrigin(url)
          ? fetch(url, { method: "HEAD" }).then((r) => r.ok, () => false)
          : Promise.resolve(false),
      );
    }
    return answers.get(url);
  }

  function recentItem(record, index) {
    const item = document.createElement("li");
    const img = document.createElement("img");
    img.src = record.thumb || record.url || "";
    img.alt = `Recent result ${index + 1}: ${record.prompt}`;
    img.width = THUMB_PX;
    const prompt = document.createElement("p");
    prompt.className = "prompt";
    prompt.textContent = record.prompt;
    prompt.title = record.prompt; // cut to three lines: the whole prompt on hover
    const facts = document.createElement("p");
    facts.className = "muted";
    const when = new Date(record.time).toLocaleString();
    facts.textContent = [record.model, record.size, when].filter(Boolean).join(" · ");
    item.append(img, prompt, facts);
    if (record.url) {
      const actions = document.createElement("p");
      actions.className = "muted";
      actions.textContent = "Checking the result URL…";
      item.append(actions);
      stillAnswers(record.url).then((ok) => {
        actions.replaceChildren();
        if (!ok) {
          if (!record.thumb) img.remove(); // nothing left to show
          actions.textContent = record.thumb ? "Its URL has expired: only this thumbnail is left." : "Its URL has expired.";
          return;
        }
        const use = document.createElement("button");
        use.type = "button";
        use.textContent = `Use recent result ${index + 1} as input`;
        const name = new URL(record.url, window.location.href).pathname.split("/").pop() || `recent-${index + 1}.png`;
        use.addEventListener("click", () => pg.useAsInput(record.url, name));
        const open = document.createElement("a");
        open.href = record.url;
        open.textContent = `Open recent result ${index + 1}`;
        actions.append(use, " ", open);
      });
    }
    return item;
  }

  async function showRecent() {
    const list = readRecent();
    $("recent-list").replaceChildren(...list.map(recentItem));
    $("recent-empty").hidden = list.length > 0;
    $("recent-clear").disabled = list.length === 0;
  }

  function clearRecent() {
    try {
      localStorage.removeItem(RECENT_STORE);
      $("recent-status").textContent = "Recent results cleared.";
    } catch (err) {
      $("recent-status").textContent = `Could not clear: ${err.message || err}`;
    }
    showRecent();
  }

  // --- the key's jobs --------------------------------------------------------------------------

  const JOBS_SHOWN = 10;
  const PENDING = new Set(["queued", "in_progress"]);
  const POLL_MS = 2000;
  let jobsTimer = null;
  let endedJobs = null; // ids seen ended (null: none read yet)

  function jobImages(job) {
    const result = job.result;
    if (!result || !Array.isArray(result.data)) return [];
    return result.data.map((item, index) => {
      const img = document.createElement("img");
      img.src = pg.resultSource(item.url, item.b64_json, result.output_format);
      img.alt = `Job ${job.id} image ${index + 1}`;
      return img;
    });
  }

  function jobItem(job) {
    const item = document.createElement("li");
    item.dataset.job = job.id;
    item.dataset.status = job.status;
    const head = document.createElement("p");
    const id = document.createElement("code");
    id.textContent = job.id;
    const status = document.createElement("strong");
    status.className = `job-status job-${job.status}`;
    status.textContent = job.status;
    const created = job.created_at ? new Date(job.created_at * 1000).toLocaleString() : "";
    head.append(status, " ", id, ` · ${job.model || ""}${created ? ` · ${created}` : ""}`);
    item.append(head);
    if (job.error && job.error.message) {
      const error = document.createElement("p");
      error.textContent = job.error.message;
      item.append(error);
    }
    const images = jobImages(job);
    if (images.length) {
      const box = document.createElement("div");
      box.className = "thumbs";
      box.append(...images);
      item.append(box);
    }
    if (PENDING.has(job.status)) {
      const cancel = document.createElement("button");
      cancel.type = "button";
      cancel.textContent = `Cancel ${job.id}`;
      cancel.addEventListener("click", () => cancelJob(job.id, cancel));
      item.append(cancel);
    }
    return item;
  }

  let jobsRead = 0; // the latest read wins: an earlier one still in flight is dropped
  // A refused cancel's message stays until the user acts again (another cancel, "Refresh jobs"):
  // the background reads that follow (polling, a read already in flight) must not wipe it.
  let cancelRefused = false;

  async function refreshJobs() {
    clearTimeout(jobsTimer);
    const read = ++jobsRead;
    if (!canAsk()) {
      clearSectionError("jobs");
      $("jobs-list").replaceChildren();
      $("jobs-note").textContent = "Enter an API key to see its jobs.";
      return;
    }
    await busyWhile("jobs", () => readJobs(read));
  }

  async function readJobs(read) {
    try {
      const page = await pg.getJSON(`/v1/images/jobs?limit=${JOBS_SHOWN}`);
      if (read !== jobsRead) return;
      if (!cancelRefused) clearSectionError("jobs");
      $("jobs-list").replaceChildren(...page.data.map(jobItem));
      if (!page.data.length) $("jobs-note").textContent = "No jobs yet.";
      // A job that ended since the last read has added to today's usage; one still running is read
      // again until it ends.
      const ended = page.data.filter((job) => !PENDING.has(job.status)).map((job) => job.id);
      if (endedJobs && ended.some((id) => !endedJobs.has(id))) refreshUsage();
      endedJobs = new Set([...(endedJobs || []), ...ended]);
      if (ended.length < page.data.length) jobsTimer = setTimeout(refreshJobs, POLL_MS);
    } catch (err) {
      if (read !== jobsRead) return;
      $("jobs-list").replaceChildren();
      showSectionError("jobs", err);
    }
  }

  async function cancelJob(id, button) {
    button.disabled = true;
    cancelRefused = false;
    clearSectionError("jobs");
    try {
      await busyWhile("jobs", () => pg.getJSON(`/v1/images/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" }));
    } catch (err) {
      cancelRefused = true;
      showSectionError("jobs", err);
    }
    await refreshJobs(); // the list as it is now: a job that ended elsewhere loses its Cancel button
  }

  // --- today's usage ---------------------------------------------------------------------------

  const USAGE_AGAIN_MS = 1500;

  function utcMidnight() {
    const now = new Date();
    return Math.floor(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate()) / 1000);
  }

  function money(row) {
    return `${Number(Number(row.cost).toFixed(6))} ${row.currency}`; // 0.134 USD: at most six decimals
  }

  function usageRow(label, row, cell) {
    const tr = document.createElement("tr");
    const head = document.createElement("th");
    head.scope = "row";
    head.textContent = label;
    tr.append(head);
    for (const value of [row.requests, row.images, money(row)]) {
      const td = document.createElement(cell);
      td.textContent = String(value);
      tr.append(td);
    }
    return tr;
  }

  let usageRead = 0;

  async function refreshUsage() {
    const table = $("usage-table");
    const read = ++usageRead;
    if (!canAsk()) {
      clearSectionError("usage");
      table.hidden = true;
      $("usage-note").textContent = "Enter an API key to see its usage.";
      return;
    }
    try {
      const usage = await busyWhile("usage", () => pg.getJSON(`/v1/usage?start=${utcMidnight()}&group_by=model`));
      if (read !== usageRead) return;
      clearSectionError("usage");
      table.tBodies[0].replaceChildren(...usage.data.map((row) => usageRow(row.model, row, "td")));
      table.tFoot.replaceChildren(usageRow("Total", usage.total, "td"));
      table.hidden = false;
      if (!usage.data.length) $("usage-note").textContent = "Nothing yet today.";
    } catch (err) {
      if (read !== usageRead) return;
      table.hidden = true;
      showSectionError("usage", err);
    }
  }

  // --- wiring ----------------------------------------------------------------------------------

  for (const button of document.querySelectorAll("#copy-code [data-lang]")) {
    button.addEventListener("click", () => copyCode(button.dataset.lang));
  }
  $("recent-clear").addEventListener("click", clearRecent);
  $("jobs-refresh").addEventListener("click", () => {
    cancelRefused = false;
    refreshJobs();
  });
  $("usage-refresh").addEventListener("click", refreshUsage);
  $("api-key").addEventListener("change", () => {
    endedJobs = null; // another key: other jobs
    refreshJobs();
    refreshUsage();
  });
  document.addEventListener("imagegate:answered", (event) => {
    if (!pg.apiKey()) openGateway = true;
    remember(event.detail);
    refreshJobs();
    refreshUsage();
    // Usage is written off the request path (a journal moved into the database every 0.2 s, see
    // the README): read it once more a little later, for the answer just shown.
    setTimeout(refreshUsage, USAGE_AGAIN_MS);
  });
  showRecent();
  refreshJobs();
  refreshUsage();
})();
