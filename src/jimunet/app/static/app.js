// The page of `jimunet serve`. It only draws: every number it shows comes from the server's
// JSON API (/api/model, /api/predict, /api/mnist), and the drawing is sent as a PNG, so the
// preprocessing is jimunet's own (the same code as `jimunet predict`), never a copy in JS.
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

// -- colours --------------------------------------------------------------------------------

const MAGMA = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
               [250, 193, 39], [252, 253, 191]];
const RDBU = [[33, 102, 172], [103, 169, 207], [209, 229, 240], [247, 247, 247], [253, 219, 199],
              [239, 138, 98], [178, 24, 43]];

function ramp(stops, t) {
  t = Math.min(1, Math.max(0, t)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(t));
  const f = t - i, a = stops[i], b = stops[i + 1];
  return [a[0] + f * (b[0] - a[0]), a[1] + f * (b[1] - a[1]), a[2] + f * (b[2] - a[2])];
}

// Paint a 2-D array (rows of numbers) into `canvas` with `color(v) -> [r, g, b]`.
function paint(canvas, rows, color) {
  const h = rows.length, w = rows[0].length;
  canvas.width = w; canvas.height = h;
  const c = canvas.getContext("2d");
  const img = c.createImageData(w, h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const [r, g, b] = color(rows[y][x]);
      const k = 4 * (y * w + x);
      img.data[k] = r; img.data[k + 1] = g; img.data[k + 2] = b; img.data[k + 3] = 255;
    }
  }
  c.putImageData(img, 0, 0);
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

pad.addEventListener("pointerdown", (ev) => {
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
  pad.toBlob((blob) => request({ body: blob, type: "image/png", source: "your drawing", id }), "image/png");
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
    render(doc, job.source);
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

// -- MNIST test images ----------------------------------------------------------------------

async function loadTest(query) {
  const id = ++wanted;
  setStatus(query.startsWith("mistake") ? "running the model over the test images to find its mistakes " +
            "(the first time loads MNIST: a few seconds)…" : "loading…");
  try {
    const res = await fetch("/api/mnist?" + query);
    const doc = await res.json();
    if (!res.ok) throw new Error(doc.error || res.statusText);
    $("index").value = doc.index;
    // Show it on the pad (scaled up, hard pixels); the model gets the exact pixels as JSON.
    const tmp = document.createElement("canvas");
    paint(tmp, doc.pixels, (v) => [v, v, v]);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(tmp, 0, 0, pad.width, pad.height);
    hasInk = true;
    let what = `MNIST test image ${doc.index}, label ${doc.label}`;
    if (doc.predicted !== undefined) what += ` (one of this model's ${doc.mistakes} mistakes)`;
    request({ body: JSON.stringify({ pixels: doc.pixels, activations: true }), type: "application/json",
              source: what, id });
  } catch (err) {
    setStatus(String(err.message || err), true);
    document.body.dataset.shown = String(id);
  }
}

$("load").addEventListener("click", () => loadTest("index=" + encodeURIComponent($("index").value)));
$("index").addEventListener("keydown", (ev) => { if (ev.key === "Enter") $("load").click(); });
$("mistake").addEventListener("click", () => loadTest("mistake=1"));
$("clear").addEventListener("click", () => {
  clearPad();
  pending = null;
  $("prediction").textContent = "–";
  renderBars(new Array(10).fill(0), -1);
  setStatus("Draw a digit in the black square.");
});

// -- showing an answer ----------------------------------------------------------------------

const fmt = (n) => Number(n).toLocaleString("en-US");
const shape = (s) => s.join("×");

function renderBars(probs, top) {
  const box = $("probs");
  if (!box.children.length) {
    for (let k = 0; k < 10; k++) {
      box.insertAdjacentHTML("beforeend",
        `<div class="bar" data-class="${k}"><span>${k}</span><div class="track"><div class="fill"></div></div>` +
        `<span class="pct"></span></div>`);
    }
  }
  probs.forEach((p, k) => {
    const row = box.children[k];
    row.classList.toggle("top", k === top);
    row.querySelector(".fill").style.width = (100 * p).toFixed(1) + "%";
    row.querySelector(".pct").textContent = top < 0 ? "" : (100 * p).toFixed(1) + "%";
  });
}

function render(doc, source) {
  $("prediction").textContent = String(doc.top);
  renderBars(doc.probabilities, doc.top);
  paint($("seen"), doc.input.pixels, (v) => [v, v, v]);
  (doc.feature_maps || []).forEach((fm, b) => {
    const tiles = document.querySelectorAll(`#maps canvas[data-block="${b}"]`);
    const lo = Math.min(0, fm.min), hi = Math.max(Math.abs(fm.min), Math.abs(fm.max)) || 1;
    const color = lo >= 0 ? (v) => ramp(MAGMA, v / hi) : (v) => ramp(RDBU, 0.5 + v / (2 * hi));
    fm.data.forEach((channel, c) => { if (tiles[c]) paint(tiles[c], channel, color); });
    const range = document.querySelector(`#maps .range[data-block="${b}"]`);
    if (range) range.textContent = `output ${shape(fm.shape)}, min ${fm.min.toPrecision(3)}, max ${fm.max.toPrecision(3)}`;
  });
  for (const rec of doc.blocks) {
    const cell = document.querySelector(`#blocks td.range[data-layer="${rec.index}"]`);
    if (cell) {
      let t = `${rec.min.toPrecision(3)} … ${rec.max.toPrecision(3)}`;
      if (rec.zero_fraction !== null) t += ` (${(100 * rec.zero_fraction).toFixed(0)}% zero)`;
      cell.textContent = t;
    }
  }
  const p = doc.probabilities[doc.top];
  setStatus(`${source}: ${doc.top} (${(100 * p).toFixed(1)}%)`);
  predictions += 1;
  document.body.dataset.predictions = String(predictions);
  document.body.dataset.top = String(doc.top);
}

// -- the model: block facts, filters, summary -----------------------------------------------

function gemmText(d) {
  if (!d.gemm) return "";
  const [[m, k], [, n]] = d.gemm;
  return `(${m} × ${k}) · (${k} × ${n}) → ${m} × ${n}`;
}

function facts(rec) {
  const d = rec.details, lines = [`shape    ${shape(rec.input_shape)} → ${shape(rec.output_shape)}`];
  if (rec.kind === "Conv2D") {
    const [[t, b], [l, r]] = d.padding;
    lines.push(`padding  top ${t}, bottom ${b}, left ${l}, right ${r} → ${shape(d.padded_shape)}`);
    lines.push(`im2col   ${d.im2col[0]} × ${d.im2col[1]}  (${rec.output_shape[0]}·${rec.output_shape[1]} ` +
               `positions × ${d.kernel[0]}·${d.kernel[1]}·${rec.input_shape[2]} window values)`);
    lines.push(`GEMM     ${gemmText(d)}`);
  }
  if (rec.params) lines.push(`params   ${fmt(rec.params)}`);
  lines.push(`FLOPs    ${fmt(rec.flops)}`);
  return lines.join("\n");
}

function tileGrid(container, count, size, block) {
  const cols = count <= 8 ? count : 8;
  container.style.gridTemplateColumns = `repeat(${cols}, ${size}px)`;
  for (let c = 0; c < count; c++) {
    const cv = document.createElement("canvas");
    cv.width = 1; cv.height = 1;
    cv.style.width = cv.style.height = size + "px";
    cv.title = `channel ${c}`;
    if (block !== undefined) { cv.dataset.block = String(block); cv.className = "fmap"; }
    container.appendChild(cv);
  }
}

function setupModel(info) {
  model = info;
  const m = info.metadata, bits = [`model ${info.path}`, `${fmt(info.summary.total_params)} parameters`,
                                   `${fmt(info.summary.total_flops)} FLOPs per image`];
  if (m.epoch !== undefined) bits.push(`trained ${m.epoch} epoch${m.epoch === 1 ? "" : "s"}`);
  if (m.val_error !== undefined) bits.push(`validation error ${Number(m.val_error).toFixed(2)}%`);
  $("model-line").textContent = bits.join(" · ");

  const maps = $("maps");
  info.conv_blocks.forEach((cb, b) => {
    const rec = info.blocks[cb.conv];
    const el = document.createElement("div");
    el.className = "block";
    el.innerHTML = `<div><h3></h3><pre class="facts"></pre><p class="note range" data-block="${b}"></p></div>` +
                   `<div class="grid"></div>`;
    el.querySelector("h3").textContent = `[${cb.conv}] ${cb.label}`;
    el.querySelector("pre").textContent = facts(rec);
    const channels = info.blocks[cb.shown].output_shape[2];
    const side = info.blocks[cb.shown].output_shape[0];
    tileGrid(el.querySelector(".grid"), channels, side >= 20 ? 56 : 42, b);
    maps.appendChild(el);
  });

  if (info.filters) {
    const f = info.filters, box = $("filters");
    tileGrid(box, f.data.length, 40);
    const hi = Math.max(...f.data.flat(2).map(Math.abs)) || 1;
    f.data.forEach((k, c) => paint(box.children[c], k, (v) => ramp(RDBU, 0.5 + v / (2 * hi))));
  } else {
    $("filters-panel").hidden = true;
  }

  const body = document.querySelector("#blocks tbody");
  for (const rec of info.blocks) {
    const tr = document.createElement("tr");
    const d = rec.details;
    let how = d.im2col ? `im2col ${d.im2col[0]} × ${d.im2col[1]}; ` : "";
    how += gemmText(d);
    if (d.window) how = `window ${d.window.join("×")}, stride ${d.stride.join("×")}`;
    const cells = [rec.index, rec.name, `${shape(rec.input_shape)} → ${shape(rec.output_shape)}`, how,
                   rec.params ? fmt(rec.params) : "", fmt(rec.flops)];
    cells.forEach((v, i) => {
      const td = document.createElement("td");
      td.textContent = v;
      if (i >= 4) td.className = "num";
      tr.appendChild(td);
    });
    const range = document.createElement("td");
    range.className = "range";
    range.dataset.layer = String(rec.index);
    tr.appendChild(range);
    body.appendChild(tr);
  }
  $("summary").textContent = info.summary.text;
  document.body.dataset.model = "ready";
}

clearPad();
renderBars(new Array(10).fill(0), -1);
fetch("/api/model").then((r) => r.json()).then(setupModel).catch((err) => {
  $("model-line").textContent = "cannot load the model: " + err;
});
