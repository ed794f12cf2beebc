// The page of `jimunet serve`. It only draws: every number it shows comes from the server's
// JSON API (/api/model, /api/predict, /api/backward, /api/gradcheck, /api/step, /api/mnist,
// /api/testimage), and a drawing is sent as a PNG, so the preprocessing is jimunet's own (the
// same code as `jimunet predict`), never a copy in JS. Every word comes from i18n.js (t()).
"use strict";

const $ = (id) => document.getElementById(id);
const pad = $("pad");
const ctx = pad.getContext("2d");
const STROKE = 22;        // px on the 280 px pad: about MNIST's stroke once the digit is scaled to 20 px
const THROTTLE_MS = 120;  // at most one prediction per this long while drawing

let model = null;          // /api/model
let hasInk = false;
let drawing = false;
let last = null;
let timer = null;
let inFlight = false;
let pending = null;        // the newest request waiting while one is in flight
let predictions = 0;       // how many answers the page has shown
let wanted = 0;            // id of the newest thing asked for; body[data-shown] says which one is on screen
let lastPredict = null;    // [doc, source] of the answer on screen (re-rendered on a language switch)
let inputPixels = null;    // the pixels the model saw (sent back for the backward view)
let target = null;         // the target class of the backward view (null: the predicted one)
let lrs = [];              // the learning rate of each SGD step taken (the server takes them again)
let bwWanted = 0;          // id of the newest backward view asked for; body[data-bw] the one on screen
let bwDoc = null;          // the backward view on screen

// -- colours --------------------------------------------------------------------------------

const MAGMA = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
               [250, 193, 39], [252, 253, 191]];
const RDBU = [[33, 102, 172], [103, 169, 207], [209, 229, 240], [247, 247, 247], [253, 219, 199],
              [239, 138, 98], [178, 24, 43]];
const diverging = (v) => ramp(RDBU, 0.5 + v / 2);  // v in [-1, 1]: zero is white

function ramp(stops, t) {
  t = Math.min(1, Math.max(0, t)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(t));
  const f = t - i, a = stops[i], b = stops[i + 1];
  return [a[0] + f * (b[0] - a[0]), a[1] + f * (b[1] - a[1]), a[2] + f * (b[2] - a[2])];
}

// Paint `h` × `w` values `at(y, x)` into `canvas` with `color(v) -> [r, g, b]`.
function paintFn(canvas, h, w, at, color) {
  canvas.width = w; canvas.height = h;
  const c = canvas.getContext("2d");
  const img = c.createImageData(w, h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const [r, g, b] = color(at(y, x));
      const k = 4 * (y * w + x);
      img.data[k] = r; img.data[k + 1] = g; img.data[k + 2] = b; img.data[k + 3] = 255;
    }
  }
  c.putImageData(img, 0, 0);
}

function paint(canvas, rows, color) {
  paintFn(canvas, rows.length, rows[0].length, (y, x) => rows[y][x], color);
}

// Pixels (H × W grey, or H × W × 3 colour) onto a canvas.
function paintPixels(canvas, px) {
  if (Array.isArray(px[0][0])) paint(canvas, px, (v) => v);
  else paint(canvas, px, (v) => [v, v, v]);
}

// -- the drawing pad ------------------------------------------------------------------------

function clearPad() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pad.width, pad.height);
  hasInk = false;
}

function point(ev) {
  const r = pad.getBoundingClientRect();
  return [(ev.clientX - r.left) * pad.width / r.width, (ev.clientY - r.top) * pad.height / r.height];
}

function stroke(from, to) {
  ctx.strokeStyle = "#fff";
  ctx.lineWidth = STROKE;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(from[0], from[1]);
  ctx.lineTo(to[0], to[1]);
  ctx.stroke();
  hasInk = true;
}

const digitMode = () => document.body.dataset.mode === "digit";

pad.addEventListener("pointerdown", (ev) => {
  if (!digitMode()) return;
  ev.preventDefault();
  pad.setPointerCapture(ev.pointerId);
  drawing = true;
  last = point(ev);
  stroke(last, last);
  setStatus("");
  soon();
});
pad.addEventListener("pointermove", (ev) => {
  if (!drawing) return;
  const p = point(ev);
  stroke(last, p);
  last = p;
  soon();
});
for (const name of ["pointerup", "pointercancel"]) {
  pad.addEventListener(name, () => {
    if (!drawing) return;
    drawing = false;
    clearTimeout(timer); timer = null;
    predictDrawing();
  });
}

function soon() {
  if (timer === null) timer = setTimeout(() => { timer = null; predictDrawing(); }, THROTTLE_MS);
}

function predictDrawing() {
  if (!hasInk) return;
  const id = ++wanted;
  pad.toBlob((blob) => request({ body: blob, type: "image/png", source: ["src.drawing", {}], id }), "image/png");
}

// One request at a time; while one is out, only the newest waiting one is kept.
async function request(job) {
  if (inFlight) { pending = job; return; }
  inFlight = true;
  try {
    const res = await fetch("/api/predict?activations=1", {
      method: "POST", headers: { "Content-Type": job.type }, body: job.body });
    const doc = await res.json();
    if (!res.ok) throw new Error(doc.error || res.statusText);
    lastPredict = [doc, job.source];
    render(doc, job.source);
    if (!drawing && !pending) newInput(doc);
  } catch (err) {
    setStatus(String(err.message || err), true);
  } finally {
    document.body.dataset.shown = String(job.id);
    inFlight = false;
    if (pending) { const next = pending; pending = null; request(next); }
  }
}

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

// -- test images and pictures ---------------------------------------------------------------

async function loadTest(query) {
  const id = ++wanted;
  setStatus(t(query.startsWith("mistake") ? "status.mistakes" : "status.loading"));
  try {
    const res = await fetch((digitMode() ? "/api/mnist?" : "/api/testimage?") + query);
    const doc = await res.json();
    if (!res.ok) throw new Error(doc.error || res.statusText);
    $("index").value = doc.index;
    // Show it on the pad (scaled up, hard pixels); the model gets the exact pixels as JSON.
    const tmp = document.createElement("canvas");
    paintPixels(tmp, doc.pixels);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(tmp, 0, 0, pad.width, pad.height);
    hasInk = true;
    const label = doc.class_name !== undefined ? doc.class_name : doc.label;
    const source = doc.predicted !== undefined
      ? ["src.mistake", { i: doc.index, label, n: doc.mistakes }]
      : [digitMode() ? "src.test" : "src.testimage", { i: doc.index, label }];
    request({ body: JSON.stringify({ pixels: doc.pixels, activations: true }), type: "application/json",
              source, id });
  } catch (err) {
    setStatus(String(err.message || err), true);
    document.body.dataset.shown = String(id);
  }
}

function sendPicture(file) {
  if (!file) return;
  const id = ++wanted;
  const url = URL.createObjectURL(file);
  const img = new Image();
  img.onload = () => {
    clearPad();  // the whole picture, its shape kept (the model's crop is under "What the model sees")
    const k = Math.min(pad.width / img.width, pad.height / img.height);
    const w = img.width * k, h = img.height * k;
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(img, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    URL.revokeObjectURL(url);
  };
  img.src = url;
  request({ body: file, type: file.type || "application/octet-stream", source: ["src.picture", { name: file.name }],
            id });
}

$("load").addEventListener("click", () => loadTest("index=" + encodeURIComponent($("index").value)));
$("index").addEventListener("keydown", (ev) => { if (ev.key === "Enter") $("load").click(); });
$("mistake").addEventListener("click", () => loadTest("mistake=1"));
$("file").addEventListener("change", () => sendPicture($("file").files[0]));
for (const el of [$("drop"), pad]) {
  el.addEventListener("dragover", (ev) => { ev.preventDefault(); });
  el.addEventListener("drop", (ev) => {
    ev.preventDefault();
    if (!digitMode() && ev.dataTransfer.files.length) sendPicture(ev.dataTransfer.files[0]);
  });
}
$("clear").addEventListener("click", () => {
  clearPad();
  pending = null;
  lastPredict = null;
  $("prediction").textContent = "–";
  renderBars(new Array(model ? model.class_names.length : 10).fill(0), -1);
  setStatus(t("status.draw"));
});

// -- showing an answer ----------------------------------------------------------------------

const fmt = (n) => Number(n).toLocaleString("en-US");
const shape = (s) => s.join("×");
const className = (k) => (model ? model.class_names[k] : String(k));

function renderBars(probs, top) {
  const box = $("probs");
  const names = probs.map((_, k) => className(k)).join("\n");
  if (box.dataset.names !== names) {  // (re)built for the model's classes
    box.dataset.names = names;
    box.textContent = "";
    probs.forEach((_, k) => {
      const row = document.createElement("div");
      row.className = "bar";
      row.dataset.class = String(k);
      row.innerHTML = '<span class="name" data-raw></span><div class="track"><div class="fill"></div></div>' +
                      '<span class="pct"></span>';
      row.querySelector(".name").textContent = className(k);
      box.appendChild(row);
    });
  }
  probs.forEach((p, k) => {
    const row = box.children[k];
    row.classList.toggle("top", k === top);
    row.querySelector(".fill").style.width = (100 * p).toFixed(1) + "%";
    row.querySelector(".pct").textContent = top < 0 ? "" : (100 * p).toFixed(1) + "%";
  });
}

function render(doc, source) {
  const top = doc.predicted;
  $("prediction").textContent = className(top);
  renderBars(doc.probabilities, top);
  paintPixels($("seen"), doc.input.pixels);
  (doc.feature_maps || []).forEach((fm, b) => {
    const tiles = document.querySelectorAll(`#maps canvas[data-block="${b}"]`);
    const lo = Math.min(0, fm.min), hi = Math.max(Math.abs(fm.min), Math.abs(fm.max)) || 1;
    const color = lo >= 0 ? (v) => ramp(MAGMA, v / hi) : (v) => ramp(RDBU, 0.5 + v / (2 * hi));
    fm.data.forEach((channel, c) => { if (tiles[c]) paint(tiles[c], channel, color); });
    const range = document.querySelector(`#maps .range[data-block="${b}"]`);
    if (range) range.textContent = t("maps.range", { shape: shape(fm.shape), min: fm.min.toPrecision(3),
                                                      max: fm.max.toPrecision(3) });
  });
  for (const rec of doc.blocks) {
    const cell = document.querySelector(`#blocks td.range[data-layer="${rec.index}"]`);
    if (cell) {
      let s = `${rec.min.toPrecision(3)} … ${rec.max.toPrecision(3)}`;
      if (rec.zero_fraction !== null) s += " " + t("table.zero", { p: (100 * rec.zero_fraction).toFixed(0) });
      cell.textContent = s;
    }
  }
  const p = doc.probabilities[top];
  setStatus(`${t(source[0], source[1])}: ${className(top)} (${(100 * p).toFixed(1)}%)`);
  predictions += 1;
  document.body.dataset.predictions = String(predictions);
  document.body.dataset.top = String(top);
}

// -- the model: block facts, filters, summary -----------------------------------------------

function gemmText(d) {
  if (!d.gemm) return "";
  const [[m, k], [, n]] = d.gemm;
  return `(${m} × ${k}) · (${k} × ${n}) → ${m} × ${n}`;
}

function algorithmText(d) {
  if (d.algorithm === "winograd") {
    return `Winograd F(${d.tile.join("×")}, ${d.kernel.join("×")})`;
  }
  return d.im2col ? `im2col ${d.im2col[0]} × ${d.im2col[1]}` : "";
}

function facts(rec) {
  const d = rec.details, lines = [`${t("facts.shape")}${shape(rec.input_shape)} → ${shape(rec.output_shape)}`];
  if (rec.kind === "Conv2D") {
    const [[tp, b], [l, r]] = d.padding;
    lines.push(t("facts.padding", { t: tp, b, l, r, shape: shape(d.padded_shape) }));
    lines.push(`im2col   ${d.im2col[0]} × ${d.im2col[1]}  ` +
               t("facts.im2col", { p: `${rec.output_shape[0]}·${rec.output_shape[1]}`,
                                   w: `${d.kernel[0]}·${d.kernel[1]}·${rec.input_shape[2]}` }));
    lines.push(`GEMM     ${gemmText(d)}`);
    lines.push(`${t("facts.algorithm")}${algorithmText(d)}`);
  }
  if (rec.params) lines.push(`${t("facts.params")}${fmt(rec.params)}`);
  lines.push(`FLOPs    ${fmt(rec.flops)}`);
  return lines.join("\n");
}

function tileGrid(container, count, size, block) {
  container.style.gridTemplateColumns = `repeat(auto-fill, ${size}px)`;
  for (let c = 0; c < count; c++) {
    const cv = document.createElement("canvas");
    cv.width = 1; cv.height = 1;
    cv.style.width = cv.style.height = size + "px";
    cv.dataset.channel = String(c);
    if (block !== undefined) { cv.dataset.block = String(block); cv.className = "fmap"; }
    container.appendChild(cv);
  }
}

function modelLine() {
  const info = model, m = info.metadata;
  const bits = [t("model.file", { path: info.path }), t("model.params", { n: fmt(info.summary.total_params) }),
                t("model.flops", { n: fmt(info.summary.total_flops) })];
  if (m.epoch !== undefined) bits.push(t("model.epochs", { n: m.epoch }));
  if (m.val_error !== undefined) bits.push(t("model.valerror", { e: Number(m.val_error).toFixed(2) }));
  $("model-line").textContent = bits.join(" · ");
}

function setupMaps(info) {
  const maps = $("maps");
  maps.textContent = "";
  info.conv_blocks.forEach((cb, b) => {
    const rec = info.blocks[cb.conv];
    const el = document.createElement("div");
    el.className = "block";
    el.innerHTML = `<div><h3 data-raw></h3><pre class="facts"></pre><p class="note range" data-block="${b}"></p></div>` +
                   `<div class="grid"></div>`;
    el.querySelector("h3").textContent = `[${cb.conv}] ${cb.label}`;
    el.querySelector("pre").textContent = facts(rec);
    const channels = info.blocks[cb.shown].output_shape[2];
    const side = info.blocks[cb.shown].output_shape[0];
    tileGrid(el.querySelector(".grid"), channels, side >= 20 ? 56 : 42, b);
    maps.appendChild(el);
  });
}

function setupTable(info) {
  const body = document.querySelector("#blocks tbody");
  body.textContent = "";
  for (const rec of info.blocks) {
    const tr = document.createElement("tr");
    const d = rec.details;
    let how = d.algorithm ? algorithmText(d) + "; " : "";
    how += gemmText(d);
    if (d.window) how = t("table.window", { w: d.window.join("×"), s: d.stride.join("×") });
    const cells = [rec.index, rec.name, `${shape(rec.input_shape)} → ${shape(rec.output_shape)}`, how,
                   rec.params ? fmt(rec.params) : "", fmt(rec.flops)];
    cells.forEach((v, i) => {
      const td = document.createElement("td");
      td.textContent = v;
      if (i === 1) td.dataset.raw = "";
      if (i >= 4) td.className = "num";
      tr.appendChild(td);
    });
    const range = document.createElement("td");
    range.className = "range";
    range.dataset.layer = String(rec.index);
    tr.appendChild(range);
    body.appendChild(tr);
  }
}

function setupModel(info) {
  model = info;
  document.body.dataset.mode = info.digit_model ? "digit" : "picture";
  if (!info.digit_model) {
    $("index").removeAttribute("max");
    setStatus(t("status.picture"));
  }
  modelLine();
  setupMaps(info);
  if (info.filters) {
    const f = info.filters, box = $("filters");
    tileGrid(box, f.data.length, 40);
    const hi = Math.max(...f.data.flat(2).map(Math.abs)) || 1;
    f.data.forEach((k, c) => paint(box.children[c], k, (v) => ramp(RDBU, 0.5 + v / (2 * hi))));
  } else {
    $("filters-panel").hidden = true;
  }
  setupTable(info);
  $("backward-panel").hidden = !info.backward;
  $("summary").textContent = info.summary.text;
  renderBars(new Array(info.class_names.length).fill(0), -1);
  setupTargets();
  document.body.dataset.model = "ready";
}

// A language switch: every text the page made itself is made again.
function rerender() {
  if (!model) return;
  modelLine();
  setupMaps(model);
  setupTable(model);
  if (lastPredict) render(...lastPredict);
  if (bwDoc) renderBackward(bwDoc);
  if (lastCheck) showCheck(lastCheck);
}

clearPad();
renderBars(new Array(10).fill(0), -1);
applyLanguage();
fetch("/api/model").then((r) => r.json()).then(setupModel).catch((err) => {
  $("model-line").textContent = t("model.error", { e: String(err) });
});
