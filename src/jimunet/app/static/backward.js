// The backward view of `jimunet serve`: the loss against a target class, every block's dL/dY,
// dL/dX and dL/dW as tiles (blue negative, white zero, red positive), a finite-difference check
// of any clicked cell (/api/gradcheck) and SGD steps (/api/step). The server keeps no state: each
// request carries the image, the target and the learning rate of every step taken so far.
"use strict";

const GRAD_TILE = 56;  // CSS px of a gradient tile's side (maps of 20 px and more)

function bwRequest(path, extra) {
  const body = { pixels: inputPixels, target, steps: lrs.length, lr: lrs, ...extra };
  return fetch(path, { method: "POST", headers: { "Content-Type": "application/json" },
                       body: JSON.stringify(body) }).then(async (res) => {
    const doc = await res.json();
    if (!res.ok) throw new Error(doc.error || res.statusText);
    return doc;
  });
}

// A new image: the view starts again from the trained weights, target = the predicted class.
function newInput(doc) {
  if (!model || !model.backward) return;
  inputPixels = doc.input.pixels;
  target = null;
  lrs = [];
  refreshBackward();
}

async function refreshBackward(path = "/api/backward") {
  if (!inputPixels) return;
  const id = ++bwWanted;
  try {
    const doc = await bwRequest(path, {});
    if (id !== bwWanted) return;
    if (target === null) target = doc.target;
    bwDoc = doc;
    renderBackward(doc);
  } catch (err) {
    $("check").textContent = String(err.message || err);
  } finally {
    if (id === bwWanted) document.body.dataset.bw = String(id);
  }
}

function setupTargets() {
  const box = $("targets");
  box.textContent = "";
  model.class_names.forEach((name, k) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "target";
    b.dataset.class = String(k);
    b.dataset.raw = "";
    b.textContent = name;
    b.addEventListener("click", () => {
      if (!inputPixels) return;
      target = k;
      lrs = [];
      refreshBackward();
    });
    box.appendChild(b);
  });
}

$("step").addEventListener("click", () => {
  const lr = Number($("lr").value);
  if (!inputPixels || !(lr > 0)) return;
  lrs.push(lr);
  refreshBackward("/api/step");
});
$("reset").addEventListener("click", () => { lrs = []; $("step-line").textContent = ""; refreshBackward(); });

// -- painting gradients ---------------------------------------------------------------------

// Tiles of one gradient (`grads[j]` of the answer): one per channel, or one strip for a vector.
function gradTiles(g, j) {
  const grid = document.createElement("div");
  grid.className = "grid";
  if (g.layout === "vector") {
    const n = g.data.length, w = Math.min(n, 64), h = Math.ceil(n / w);
    const cv = document.createElement("canvas");
    cv.dataset.grad = String(j);
    cv.dataset.cols = String(w);
    paintFn(cv, h, w, (y, x) => (y * w + x < n ? g.data[y * w + x] : 0), diverging);
    const width = Math.min(w * 5, 320);
    cv.style.width = width + "px";
    cv.style.height = Math.max(h * width / w, 5) + "px";
    grid.appendChild(cv);
    return grid;
  }
  const side = g.shape[0] >= 20 ? GRAD_TILE : 42;
  grid.style.gridTemplateColumns = `repeat(auto-fill, ${side}px)`;
  g.data.forEach((channel, c) => {
    const cv = document.createElement("canvas");
    cv.dataset.grad = String(j);
    cv.dataset.channel = String(c);
    paint(cv, channel, diverging);
    cv.style.width = cv.style.height = side + "px";
    grid.appendChild(cv);
  });
  return grid;
}

// dL/dW: for Conv2D one tile per output channel holding its input channels' kernels in a grid;
// for Dense the matrix (outputs × inputs), for one image the outer product of X and dY.
function weightTiles(wg, block) {
  const grid = document.createElement("div");
  grid.className = "grid";
  if (wg.layout === "outer(x, dy)") {
    const [nin, nout] = wg.shape;
    const cv = document.createElement("canvas");
    cv.dataset.wblock = String(block);
    paintFn(cv, nout, nin, (y, x) => wg.x[x] * wg.dy[y], diverging);
    cv.className = "matrix";
    cv.style.height = Math.min(Math.max(nout, 10) * 2, 160) + "px";
    grid.appendChild(cv);
    return grid;
  }
  const [kh, kw, cin] = wg.shape;
  const cols = Math.ceil(Math.sqrt(cin)), rows = Math.ceil(cin / cols);
  const side = cin === 1 ? 40 : 64;
  grid.style.gridTemplateColumns = `repeat(auto-fill, ${side}px)`;
  wg.data.forEach((kernels, co) => {
    const cv = document.createElement("canvas");
    cv.dataset.wblock = String(block);
    cv.dataset.channel = String(co);
    cv.dataset.cols = String(cols);
    paintFn(cv, rows * kh, cols * kw, (y, x) => {
      const ci = Math.floor(y / kh) * cols + Math.floor(x / kw);
      return ci < cin ? kernels[ci][y % kh][x % kw] : 0;
    }, diverging);
    cv.style.width = side + "px";
    cv.style.height = (side * rows * kh / (cols * kw)) + "px";
    grid.appendChild(cv);
  });
  return grid;
}

function labelled(key, vars, node) {
  const wrap = document.createElement("div");
  wrap.className = "gradbox";
  const p = document.createElement("p");
  p.className = "note";
  p.textContent = t(key, vars);
  wrap.append(p, node);
  return wrap;
}

function renderBackward(doc) {
  $("loss").textContent = doc.loss.toPrecision(5);
  $("ptarget").textContent = (100 * doc.probabilities[doc.target]).toFixed(2) + "%";
  $("steps").textContent = String(doc.steps);
  for (const b of document.querySelectorAll("#targets .target")) {
    b.classList.toggle("on", Number(b.dataset.class) === doc.target);
    b.classList.toggle("pred", Number(b.dataset.class) === doc.predicted);
  }
  if (doc.losses) {
    const before = doc.probabilities_before[doc.target];
    $("step-line").textContent = t("bw.stepline", {
      n: doc.steps, before: (100 * before).toFixed(2), after: (100 * doc.probabilities[doc.target]).toFixed(2),
      moves: doc.weights_moved.map((m) => `[${m.block}] ${m.relative_change.toExponential(2)}`).join(", ") });
  } else if (!doc.steps) {
    $("step-line").textContent = "";
  }
  document.body.dataset.ptarget = String(doc.probabilities[doc.target]);
  const box = $("bw-blocks");
  box.textContent = "";
  const loss = document.createElement("div");
  loss.className = "bwblock";
  loss.innerHTML = '<h3></h3><p class="formula"></p><p class="formula"></p>';
  loss.querySelector("h3").textContent = t("bw.lossblock", { target: className(doc.target) });
  loss.querySelectorAll(".formula")[0].textContent = t("bw.forward") + " " + t("f.loss.fw");
  loss.querySelectorAll(".formula")[1].textContent = t("bw.backward") + " " + t("f.loss.bw");
  box.appendChild(loss);
  for (const rec of [...doc.blocks].reverse()) {
    const el = document.createElement("div");
    el.className = "bwblock";
    el.dataset.block = String(rec.index);
    el.innerHTML = '<h3 data-raw></h3><p class="algo note"></p><p class="formula fw"></p><p class="formula bw"></p>' +
                   '<div class="grads"></div>';
    el.querySelector("h3").textContent = `[${rec.index}] ${rec.name}`;
    const algo = rec.algorithm;
    el.querySelector(".algo").textContent = algo ? t("bw.algorithm", {
      a: algo.name === "winograd" ? `Winograd F(${algo.tile.join("×")}, ${rec.weight_grad.shape.slice(0, 2).join("×")})`
                                  : "im2col" }) : "";
    if (rec.forward) {
      const vars = { m: algo && algo.tile ? algo.tile.join("×") : "", k: rec.weight_grad ? rec.weight_grad.shape.slice(0, 2).join("×") : "" };
      const fw = has("f." + rec.formula_key + ".fw") ? t("f." + rec.formula_key + ".fw", vars) : rec.forward;
      const bw = has("f." + rec.formula_key + ".bw") ? t("f." + rec.formula_key + ".bw", vars) : rec.backward;
      el.querySelector(".fw").textContent = t("bw.forward") + " " + fw;
      el.querySelector(".bw").textContent = t("bw.backward") + " " + bw;
    }
    const grads = el.querySelector(".grads");
    const dy = doc.grads[rec.grad_output], dx = doc.grads[rec.grad_input];
    grads.appendChild(labelled("bw.dy", { shape: shape(dy.shape), s: dy.scale.toExponential(2) },
                               gradTiles(dy, rec.grad_output)));
    grads.appendChild(labelled("bw.dx", { shape: shape(dx.shape), s: dx.scale.toExponential(2) },
                               gradTiles(dx, rec.grad_input)));
    if (rec.weight_grad) {
      grads.appendChild(labelled("bw.dw", { shape: shape(rec.weight_grad.shape),
                                             s: rec.weight_grad.scale.toExponential(2) },
                                 weightTiles(rec.weight_grad, rec.index)));
    }
    box.appendChild(el);
  }
}

// -- clicking a cell: which number it is, then /api/gradcheck --------------------------------

function cellOf(cv, ev) {
  const r = cv.getBoundingClientRect();
  const x = Math.min(cv.width - 1, Math.floor((ev.clientX - r.left) * cv.width / r.width));
  const y = Math.min(cv.height - 1, Math.floor((ev.clientY - r.top) * cv.height / r.height));
  return [y, x];
}

function clickedIndex(cv, ev) {
  const [y, x] = cellOf(cv, ev);
  const nblocks = bwDoc.blocks.length;
  if (cv.dataset.wblock !== undefined) {
    const block = Number(cv.dataset.wblock), wg = bwDoc.blocks[block].weight_grad;
    if (wg.layout === "outer(x, dy)") return { block, tensor: "weight", index: [x, y] };
    const [kh, kw, cin] = wg.shape, cols = Number(cv.dataset.cols);
    const ci = Math.floor(y / kh) * cols + Math.floor(x / kw);
    if (ci >= cin) return null;
    return { block, tensor: "weight", index: [y % kh, x % kw, ci, Number(cv.dataset.channel)] };
  }
  const j = Number(cv.dataset.grad), g = bwDoc.grads[j];
  let index;
  if (g.layout === "vector") {
    const flat = y * Number(cv.dataset.cols) + x;
    if (flat >= g.data.length) return null;
    index = g.shape.length === 1 ? [flat] : unravel(flat, g.shape);
  } else {
    index = [y, x, Number(cv.dataset.channel)];
  }
  return j < nblocks ? { block: j, tensor: "input", index } : { block: nblocks - 1, tensor: "output", index };
}

function unravel(flat, dims) {
  const out = [];
  for (let k = dims.length - 1; k >= 0; k--) { out.unshift(flat % dims[k]); flat = Math.floor(flat / dims[k]); }
  return out;
}

let checks = 0;
let lastCheck = null;  // the check on screen (written again on a language switch)

async function gradcheck(cell) {
  const box = $("check");
  box.textContent = t("bw.checking");
  try {
    lastCheck = await bwRequest("/api/gradcheck", cell);
    showCheck(lastCheck);
  } catch (err) {
    box.textContent = String(err.message || err);
  } finally {
    checks += 1;
    document.body.dataset.checks = String(checks);
  }
}

function showCheck(doc) {
  const box = $("check");
  {
    const what = t("bw.tensor." + doc.tensor);
    box.textContent = t("bw.checked", {
      what, block: doc.block, index: doc.index.join(", "), a: doc.analytic.toPrecision(10),
      n: doc.numeric.toPrecision(10), e: doc.relative_error.toExponential(2) }) +
      (doc.kink ? " " + t("bw.kink", { l: doc.one_sided[0].toPrecision(6), r: doc.one_sided[1].toPrecision(6) }) : "");
    box.dataset.kink = String(doc.kink);
    box.dataset.analytic = String(doc.analytic);
    box.dataset.numeric = String(doc.numeric);
    box.dataset.error = String(doc.relative_error);
    box.dataset.tensor = doc.tensor;
  }
}

$("bw-blocks").addEventListener("click", (ev) => {
  const cv = ev.target;
  if (!bwDoc || cv.tagName !== "CANVAS") return;
  const cell = clickedIndex(cv, ev);
  if (cell) gradcheck(cell);
});
