// The playground at / (server/templates/playground.html): plain JavaScript, no framework, no build.
//
// It talks to this gateway's own API, same origin, with the key typed into "API key" (kept in
// sessionStorage, sent only as an Authorization: Bearer header, never in a URL):
//   GET /v1/models, GET /v1/models/{id}   the model picker and the chosen model's card (its
//                                          parameters; its size table, or the catalog's rows the
//                                          page carries in #catalog-models for pixel-limit models)
//   POST /v1/images/generations (JSON)    with no input images
//   POST /v1/images/edits (multipart)     with input images, each as an `image[]` part
// Both ask for `stream: true, partial_images: 2` where the model has them, and read the answer's
// server-sent events with fetch and a stream reader (EventSource cannot POST). The event names
// and fields are server/streaming.py's: `<prefix>.partial_image` {b64_json, partial_image_index},
// `<prefix>.completed` {b64_json, url?, output_format, effective, adjustments}, and `error`
// {error: {message, param, code}}. A 4xx before the stream starts is a JSON error answer.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const form = $("playground");
  const root = form.dataset.root || "";
  const catalog = JSON.parse($("catalog-models").textContent || "{}");
  const KEY_STORE = "imagegate.apiKey";
  // error.param -> the control it names (image parts are named image, image[] or images).
  const FIELD_FOR = {
    model: "model", prompt: "prompt", size: "size", aspect_ratio: "aspect-ratio", resolution: "resolution",
    n: "n", seed: "seed", output_format: "output-format", output_compression: "output-compression",
    image: "images", "image[]": "images", images: "images", mask: "mask-canvas",
  };
  // The fixed controls: parameter name -> element id (provider-specific ones are built per model).
  const CORE = {
    aspect_ratio: "aspect-ratio", resolution: "resolution", size: "size", n: "n", seed: "seed",
    output_format: "output-format", output_compression: "output-compression",
  };
  const FORMAT_TYPES = { png: "image/png", jpeg: "image/jpeg", jpg: "image/jpeg", webp: "image/webp" };
  const MASK_MAX_SIDE = 1024; // the mask canvas's longest side at most: painting stays quick on a big image

  let card = null; // the chosen model's card (GET /v1/models/{id})
  let inputFiles = []; // the input images, in order: with any, the request is an edit
  let masked = false; // whether anything is painted on the mask canvas
  let asked = null; // the request being answered: its size ({width, height} or null) and partial_images

  class ApiError extends Error {
    constructor(status, error) {
      super((error && error.message) || `The gateway answered HTTP ${status}.`);
      this.status = status;
      this.param = (error && error.param) || null;
    }
  }

  // --- the key and the API ---------------------------------------------------------------------

  function apiKey() {
    return $("api-key").value.trim();
  }

  function authHeaders() {
    const key = apiKey();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  async function errorOf(response) {
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    return new ApiError(response.status, body && body.error);
  }

  // One call to this gateway's API with the key: its JSON, or an ApiError with the API's message.
  async function getJSON(path, options = {}) {
    const response = await fetch(root + path, { ...options, headers: { ...authHeaders(), ...options.headers } });
    if (!response.ok) throw await errorOf(response);
    return response.json();
  }

  // Model ids may hold "/" (the route takes the rest of the path), so only each segment is escaped.
  function modelPath(id) {
    return id.split("/").map(encodeURIComponent).join("/");
  }

  // --- the model and its pickers ---------------------------------------------------------------

  async function loadModels() {
    if (!apiKey()) return;
    try {
      const list = await getJSON("/v1/models");
      const models = list.data.filter((m) => !m.alias_of); // each alias has its own card too
      const select = $("model");
      const chosen = select.value;
      select.replaceChildren();
      for (const m of models) {
        const option = new Option(`${m.name || m.id} (${m.id})${m.available ? "" : " · not served here"}`, m.id);
        select.add(option);
      }
      const ids = models.map((m) => m.id);
      const firstServed = models.find((m) => m.available);
      select.value = ids.includes(chosen) ? chosen : firstServed ? firstServed.id : ids[0] || "";
      clearErrors();
      await loadCard();
    } catch (err) {
      showError(err);
    }
  }

  async function loadCard() {
    const id = $("model").value;
    if (!id || !apiKey()) return;
    $("model-page").href = `${root}/models/${modelPath(id)}`;
    try {
      card = await getJSON(`/v1/models/${modelPath(id)}`);
    } catch (err) {
      card = null;
      showError(err);
      return;
    }
    fillResolutions();
    fillRatios();
    fillProviderOptions();
    updateMode();
  }

  function sizeRows() {
    if (card && card.sizes) return card.sizes;
    const entry = catalog[(card && (card.alias_of || card.id)) || $("model").value];
    return entry ? entry.sizes : [];
  }

  function defaults() {
    const entry = catalog[(card && (card.alias_of || card.id)) || $("model").value] || {};
    const param = (name) => card && card.parameters[name] && card.parameters[name].default;
    return {
      ratio: entry.default_aspect_ratio || param("aspect_ratio"),
      tier: (card && card.default_resolution) || entry.default_resolution || param("resolution"),
    };
  }

  function fillResolutions() {
    const select = $("resolution");
    const chosen = select.value;
    const tiers = card ? card.resolution_tiers : [...new Set(sizeRows().map((r) => r.resolution))];
    select.replaceChildren(...tiers.map((t) => new Option(t, t)));
    select.value = tiers.includes(chosen) ? chosen : defaults().tier;
  }

  // Each ratio's option shows the pixels it gives at the chosen tier: "16:9 (1376x768)".
  function fillRatios() {
    const select = $("aspect-ratio");
    const chosen = select.value;
    const tier = $("resolution").value;
    const rows = sizeRows().filter((r) => r.resolution === tier);
    const options = rows.map((r) => new Option(`${r.aspect_ratio} (${r.width}x${r.height})`, r.aspect_ratio));
    select.replaceChildren(...options);
    const ratios = rows.map((r) => r.aspect_ratio);
    const fallback = ratios.includes(defaults().ratio) ? defaults().ratio : ratios[0] || "";
    select.value = ratios.includes(chosen) ? chosen : fallback;
    showPickedSize();
  }

  function showPickedSize() {
    const [tier, ratio] = [$("resolution").value, $("aspect-ratio").value];
    const row = sizeRows().find((r) => r.resolution === tier && r.aspect_ratio === ratio);
    $("picked-size").textContent = row ? `${row.width}x${row.height}` : "";
  }

  function mode() {
    return inputFiles.length ? "edit" : "t2i";
  }

  // Before the card is read (no key yet), everything is sent and the gateway decides.
  function available(name) {
    if (!card) return true;
    const spec = card.parameters[name];
    return Boolean(spec) && spec[mode()] !== "not_available";
  }

  // Controls the model lacks in this mode are disabled (they would be refused or not applied).
  function updateMode() {
    $("mode").textContent = inputFiles.length
      ? `Edit, with ${inputFiles.length} input image${inputFiles.length > 1 ? "s" : ""}`
      : "Text to image";
    $("mask-panel").hidden = !inputFiles.length || !available("mask");
    if (!card) return;
    for (const [name, id] of Object.entries(CORE)) $(id).disabled = !available(name);
    const max = card.parameters.n && card.parameters.n.maximum;
    if (max) $("n").max = String(max);
    const formats = card.parameters.output_format && card.parameters.output_format.values;
    if (formats) {
      const select = $("output-format");
      const chosen = select.value;
      select.replaceChildren(new Option("model default", ""), ...formats.map((f) => new Option(f, f)));
      select.value = formats.includes(chosen) ? chosen : "";
    }
    for (const el of $("provider-fields").querySelectorAll("[data-param]")) el.disabled = !available(el.dataset.param);
  }

  // Parameters the catalog marks as one provider's (`provider`), offered only for models that have
  // them, and built only once opened (see the template for why).
  function providerParameters() {
    const specs = (card && card.parameters) || {};
    return Object.keys(specs).filter((n) => specs[n].provider && specs[n].type !== "file");
  }

  function fillProviderOptions() {
    const box = $("provider-fields");
    box.replaceChildren();
    const names = providerParameters();
    $("provider-options").hidden = names.length === 0;
    const open = $("provider-toggle").getAttribute("aria-expanded") === "true";
    box.hidden = !open;
    if (!open) return;
    for (const name of names) {
      const spec = card.parameters[name];
      const id = `opt-${name}`;
      const field = document.createElement("div");
      field.className = "field";
      const label = document.createElement("label");
      label.htmlFor = id;
      label.textContent = `${name} (${spec.provider})`;
      let control;
      if (spec.values || spec.type === "boolean") {
        control = document.createElement("select");
        const values = spec.values || ["true", "false"];
        control.replaceChildren(new Option("default", ""), ...values.map((v) => new Option(String(v), String(v))));
      } else {
        control = document.createElement("input");
        control.type = spec.type === "integer" || spec.type === "number" ? "number" : "text";
        if (spec.minimum !== undefined) control.min = String(spec.minimum);
        if (spec.maximum !== undefined) control.max = String(spec.maximum);
        if (spec.type === "number") control.step = "any";
      }
      control.id = id;
      control.dataset.param = name;
      control.dataset.type = spec.type;
      const hint = document.createElement("small");
      hint.className = "muted";
      hint.id = `${id}-hint`;
      hint.textContent = spec.description;
      control.setAttribute("aria-describedby", hint.id);
      field.append(label, control, hint);
      box.append(field);
    }
  }

  // --- input images ----------------------------------------------------------------------------

  function addFiles(files) {
    for (const file of files) if (file.type.startsWith("image/")) inputFiles.push(file);
    showInputs();
  }

  function showInputs() {
    const list = $("input-list");
    for (const img of list.querySelectorAll("img")) URL.revokeObjectURL(img.src);
    list.replaceChildren();
    inputFiles.forEach((file, index) => {
      const item = document.createElement("li");
      const img = document.createElement("img");
      img.src = URL.createObjectURL(file);
      img.alt = `Input image ${index + 1}: ${file.name}`;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = `Remove ${file.name}`;
      remove.addEventListener("click", () => {
        inputFiles.splice(index, 1);
        showInputs();
      });
      item.append(img, remove);
      list.append(item);
    });
    showMask();
    updateMode();
  }

  // --- the mask: painted on a canvas over the first input image --------------------------------

  function showMask() {
    const panel = $("mask-panel");
    const base = $("mask-base");
    if (base.src) URL.revokeObjectURL(base.src);
    masked = false;
    panel.hidden = !inputFiles.length;
    if (!inputFiles.length) {
      base.removeAttribute("src");
      return;
    }
    base.onload = () => {
      const canvas = $("mask-canvas");
      delete canvas.dataset.painted;
      // The canvas has the image's shape at its own pixels, or fewer for a big one (CSS scales it to
      // the image's box); maskBlob scales the mask back up to the image's size, which the API needs.
      const scale = Math.min(1, MASK_MAX_SIDE / Math.max(base.naturalWidth, base.naturalHeight));
      canvas.width = Math.max(1, Math.round(base.naturalWidth * scale));
      canvas.height = Math.max(1, Math.round(base.naturalHeight * scale));
      canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
      base.parentElement.classList.toggle("upscaled", base.naturalWidth < base.clientWidth);
    };
    base.src = URL.createObjectURL(inputFiles[0]);
  }

  // The pointer's client coordinates -> the canvas's own pixels (its box is scaled by CSS).
  function paint(event) {
    const canvas = $("mask-canvas");
    const box = canvas.getBoundingClientRect();
    const x = ((event.clientX - box.left) / box.width) * canvas.width;
    const y = ((event.clientY - box.top) / box.height) * canvas.height;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "rgba(0, 150, 255, 0.55)"; // only shown here; the mask sent is made from its alpha
    ctx.beginPath();
    ctx.arc(x, y, Math.max(canvas.width, canvas.height) / 20, 0, 2 * Math.PI);
    ctx.fill();
    masked = true;
    canvas.dataset.painted = "true";
  }

  // Opaque everywhere, transparent where painted: the edit may change only the transparent part.
  // At the first image's own size: the gateway refuses a mask of another size.
  function maskBlob() {
    const painted = $("mask-canvas");
    const drawn = document.createElement("canvas");
    drawn.width = painted.width;
    drawn.height = painted.height;
    // Pixel by pixel: the paint shown is translucent, but a painted pixel must be fully transparent in
    // the mask (a half-transparent one would ask for half an edit).
    const shown = painted.getContext("2d").getImageData(0, 0, drawn.width, drawn.height).data;
    const mask = drawn.getContext("2d").createImageData(drawn.width, drawn.height);
    for (let i = 3; i < shown.length; i += 4) mask.data[i] = shown[i] ? 0 : 255;
    drawn.getContext("2d").putImageData(mask, 0, 0);
    const base = $("mask-base");
    const out = document.createElement("canvas");
    out.width = base.naturalWidth || drawn.width;
    out.height = base.naturalHeight || drawn.height;
    const ctx = out.getContext("2d");
    ctx.imageSmoothingEnabled = false; // scaled up, each pixel stays painted or not: no half-transparent edge
    ctx.drawImage(drawn, 0, 0, out.width, out.height);
    return new Promise((resolve) => out.toBlob(resolve, "image/png"));
  }

  // A data URI is decoded here: the CSP's connect-src ('self') does not let fetch read data: URLs.
  async function blobOf(src) {
    if (src.startsWith("data:")) {
      const [head, b64] = src.split(",", 2);
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      return new Blob([bytes], { type: head.slice(5).split(";")[0] });
    }
    const response = await fetch(src);
    if (!response.ok) throw await errorOf(response);
    return response.blob();
  }

  async function useAsInput(src, name) {
    try {
      const blob = await blobOf(src);
      addFiles([new File([blob], name, { type: blob.type || "image/png" })]);
      $("status").textContent = `${name} added to the input images.`;
    } catch (err) {
      showError(err);
    }
  }

  // --- the request -----------------------------------------------------------------------------

  function number(id) {
    const value = $(id).value.trim();
    return value === "" ? undefined : Number(value);
  }

  function parameters() {
    const p = { model: $("model").value, prompt: $("prompt").value };
    const size = $("size").value.trim();
    if (size && available("size")) p.size = size;
    else {
      if (available("aspect_ratio") && $("aspect-ratio").value) p.aspect_ratio = $("aspect-ratio").value;
      if (available("resolution") && $("resolution").value) p.resolution = $("resolution").value;
    }
    for (const [name, id] of [["n", "n"], ["seed", "seed"], ["output_compression", "output-compression"]]) {
      if (available(name) && number(id) !== undefined) p[name] = number(id);
    }
    if (available("output_format") && $("output-format").value) p.output_format = $("output-format").value;
    for (const el of $("provider-fields").querySelectorAll("[data-param]")) {
      if (el.disabled || el.value === "") continue;
      const type = el.dataset.type;
      if (type === "boolean") p[el.dataset.param] = el.value === "true";
      else if (type === "integer" || type === "number") p[el.dataset.param] = Number(el.value);
      else p[el.dataset.param] = el.value;
    }
    if (available("stream")) p.stream = true;
    if (p.stream && available("partial_images")) p.partial_images = 2;
    return p;
  }

  async function request(p) {
    lastSent = p; // for announceAnswer
    if (!inputFiles.length) {
      return fetch(`${root}/v1/images/generations`, {
        method: "POST",
        headers: { ...authHeaders(), "Content-Type": "application/json" },
        body: JSON.stringify(p),
      });
    }
    const body = new FormData();
    for (const [name, value] of Object.entries(p)) body.append(name, String(value));
    for (const file of inputFiles) body.append("image[]", file, file.name || "image.png");
    if (masked && available("mask")) body.append("mask", await maskBlob(), "mask.png");
    return fetch(`${root}/v1/images/edits`, { method: "POST", headers: authHeaders(), body });
  }

  // The size the request asks for, which the final image will (nearly always) have: a free WxH, else
  // the picked ratio and tier's row; null when the model decides (pixel limits and no size given).
  function askedSize(p) {
    const free = /^(\d+)x(\d+)$/.exec(p.size || "");
    if (free) return { width: Number(free[1]), height: Number(free[2]) };
    const row = sizeRows().find((r) => r.resolution === p.resolution && r.aspect_ratio === p.aspect_ratio);
    return row ? { width: row.width, height: row.height } : null;
  }

  async function generate(event) {
    event.preventDefault();
    clearErrors();
    clearResults();
    const button = $("generate");
    button.disabled = true;
    $("status").textContent = inputFiles.length ? "Editing…" : "Generating…";
    try {
      const p = parameters();
      asked = { size: askedSize(p), partials: p.partial_images };
      const response = await request(p);
      if (!response.ok) throw await errorOf(response);
      if ((response.headers.get("content-type") || "").startsWith("text/event-stream")) await readStream(response);
      else showAnswer(await response.json());
      $("status").textContent = "Done.";
      announceAnswer();
    } catch (err) {
      $("status").textContent = "";
      showError(err);
    } finally {
      button.disabled = false;
    }
  }

  // Server-sent events: blocks separated by a blank line, `event:` and `data:` lines, `:` comments.
  async function readStream(response) {
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let finals = 0;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r/g, "");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (!data.length) continue;
        const payload = JSON.parse(data.join("\n"));
        if (name === "error") throw new ApiError(400, payload.error);
        if (name.endsWith(".partial_image")) showPreview(payload);
        else if (name.endsWith(".completed")) {
          $("previews").hidden = true; // the final image takes the preview's place
          showImage(resultSource(payload.url, payload.b64_json, payload.output_format), finals++, payload.output_format);
          showEffective(payload.effective, payload.adjustments);
        }
      }
    }
    if (!finals) throw new ApiError(502, { message: "The stream ended without an image." });
  }

  function showAnswer(answer) {
    answer.data.forEach((item, index) => {
      showImage(resultSource(item.url, item.b64_json, answer.output_format), index, answer.output_format);
    });
    showEffective(answer.effective, answer.adjustments);
  }

  function dataURI(b64, format) {
    return `data:${FORMAT_TYPES[format] || "image/png"};base64,${b64}`;
  }

  // What a result img shows: its URL when that is this origin's; a URL elsewhere (results presigned
  // in S3, an IMAGEGATE_PUBLIC_URL on another host) is outside the page's CSP (img-src 'self'), so
  // the answer's own base64 is shown instead where it came with it.
  function resultSource(url, b64, format) {
    const ours = url && new URL(url, location.href).origin === location.origin;
    return ours || (url && !b64) ? url : dataURI(b64, format);
  }

  // --- showing the answer ----------------------------------------------------------------------

  function clearResults() {
    $("previews").hidden = true;
    $("preview-image").removeAttribute("src");
    $("results").replaceChildren();
    $("effective").replaceChildren();
    $("adjustments").replaceChildren();
    $("effective-panel").hidden = true;
  }

  // One preview image, its src replaced by each partial, in the box the final image will take: the
  // asked size's shape, no wider than the image itself (a result is shown at most at its own width).
  function showPreview(event) {
    const img = $("preview-image");
    const size = asked && asked.size;
    img.style.aspectRatio = size ? `${size.width} / ${size.height}` : "";
    img.style.maxWidth = size ? `${size.width}px` : "";
    img.src = dataURI(event.b64_json, event.output_format);
    const of = asked && asked.partials ? ` of ${asked.partials}` : "";
    const caption = `Preview ${Number(event.partial_image_index) + 1}${of}`;
    img.alt = caption;
    $("preview-caption").textContent = `${caption}, while the image is made`;
    $("previews").hidden = false;
  }

  function showImage(src, index, format) {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.src = src;
    img.alt = `Result ${index + 1}`;
    img.className = "result";
    const name = `imagegate-${index + 1}.${format === "jpeg" ? "jpg" : format || "png"}`;
    const download = document.createElement("a");
    download.href = src;
    download.download = name;
    download.textContent = `Download result ${index + 1}`;
    const reuse = document.createElement("button");
    reuse.type = "button";
    reuse.textContent = `Use result ${index + 1} as input`;
    reuse.addEventListener("click", () => useAsInput(src, name));
    const caption = document.createElement("figcaption");
    caption.append(download, " ", reuse);
    figure.append(img, caption);
    $("results").append(figure);
  }

  function showEffective(effective, adjustments) {
    if (!effective) return;
    $("effective-panel").hidden = false;
    $("effective-size").textContent = `${effective.width}x${effective.height}`;
    const list = $("effective");
    list.replaceChildren();
    for (const [name, value] of Object.entries(effective)) {
      const dt = document.createElement("dt");
      dt.textContent = name;
      const dd = document.createElement("dd");
      dd.textContent = value === null ? "none" : String(value);
      list.append(dt, dd);
    }
    const adjusted = $("adjustments");
    adjusted.replaceChildren();
    for (const a of adjustments || []) {
      const li = document.createElement("li");
      li.textContent = `${a.param}: asked ${a.requested}, applied ${a.applied}`;
      adjusted.append(li);
    }
    if (!adjusted.children.length) {
      adjusted.append(Object.assign(document.createElement("li"), { textContent: "None: everything as asked." }));
    }
  }

  // --- errors: the API's message, next to the field it names -----------------------------------

  function clearErrors() {
    for (const el of form.querySelectorAll(".field-error[data-for]")) el.remove();
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
    $("form-error").hidden = true;
    $("form-error").textContent = "";
  }

  function fieldOf(err) {
    const named = err.param && (FIELD_FOR[err.param] || `opt-${err.param}`);
    if (named && $(named)) return $(named);
    return err.status === 401 ? $("api-key") : null;
  }

  function showError(err) {
    const message = err instanceof ApiError ? err.message : `The request failed: ${err.message || err}`;
    const field = err instanceof ApiError ? fieldOf(err) : null;
    if (!field) {
      $("form-error").textContent = message;
      $("form-error").hidden = false;
      return;
    }
    const earlier = $(`${field.id}-error`); // the model list and a request may both fail on a wrong key
    if (earlier) earlier.remove();
    const note = document.createElement("p");
    note.className = "field-error";
    note.setAttribute("role", "alert");
    note.dataset.for = field.id;
    note.id = `${field.id}-error`;
    note.textContent = message;
    field.closest(".field").append(note);
    field.setAttribute("aria-invalid", "true");
    field.setAttribute("aria-errormessage", note.id);
  }

  // --- the hook playground-panels.js uses (copy as code, recent results, jobs, usage) -----------

  // What the Generate button would send, and an "imagegate:answered" event on document after each
  // answer shown (its parameters, result image srcs and effective size).
  window.imagegatePlayground = {
    root,
    apiKey,
    authHeaders,
    getJSON,
    resultSource,
    parameters,
    useAsInput,
    inputFiles: () => inputFiles.slice(),
    maskSent: () => masked && available("mask"),
    maskBlob,
  };

  let lastSent = null; // the parameters of the last request sent (request() keeps them)

  function announceAnswer() {
    const images = [...$("results").querySelectorAll("img")].map((img) => img.src);
    const detail = { parameters: lastSent, images, size: $("effective-size").textContent };
    document.dispatchEvent(new CustomEvent("imagegate:answered", { detail }));
  }

  // --- wiring ----------------------------------------------------------------------------------

  $("api-key").value = sessionStorage.getItem(KEY_STORE) || "";
  $("api-key").addEventListener("input", () => sessionStorage.setItem(KEY_STORE, apiKey()));
  $("api-key").addEventListener("change", loadModels);
  $("model").addEventListener("change", loadCard);
  $("resolution").addEventListener("change", fillRatios);
  const canvas = $("mask-canvas");
  canvas.addEventListener("pointerdown", (e) => {
    canvas.setPointerCapture(e.pointerId);
    paint(e);
  });
  canvas.addEventListener("pointermove", (e) => {
    if (canvas.hasPointerCapture(e.pointerId)) paint(e);
  });
  $("mask-clear").addEventListener("click", () => {
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
    masked = false;
    delete canvas.dataset.painted;
  });
  $("provider-toggle").addEventListener("click", () => {
    const open = $("provider-toggle").getAttribute("aria-expanded") !== "true";
    $("provider-toggle").setAttribute("aria-expanded", String(open));
    $("provider-toggle").textContent = open ? "Hide this model's own options" : "Show this model's own options";
    fillProviderOptions();
    updateMode();
  });
  $("aspect-ratio").addEventListener("change", showPickedSize);
  $("images").addEventListener("change", () => {
    addFiles($("images").files);
    $("images").value = "";
  });
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("dragging");
    addFiles(e.dataTransfer.files);
  });
  form.addEventListener("submit", generate);
  showPickedSize();
  loadModels();
})();
