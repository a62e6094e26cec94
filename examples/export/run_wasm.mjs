// Runs a model exported by `tinycomp export --target wasm32` (name "model") in Node and prints what
// harness.c prints:   node run_wasm.mjs DIR/model.wasm INPUT.f32 [-i INPUT1.f32]... [-w WEIGHTS.bin] [-r REPEAT] [-s SEED -o OFFSET] BATCH...
// (one -i file per input after the first of a model of several inputs, in forward()'s order).
// Row sizes and scratch come from DIR/model.h. Input, output, scratch and weights live in the
// module's own memory from __heap_base up (grown as needed); the module imports nothing.
import { readFileSync } from "node:fs";

const args = process.argv.slice(2);
const opts = { w: null, r: 0, s: "0", o: "0" };
const positional = [], more = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "-i") more.push(args[++i]);
  else if (["-w", "-r", "-s", "-o"].includes(args[i])) opts[args[i].slice(1)] = args[++i];
  else positional.push(args[i]);
}
const [wasmPath, inputPath, ...batchArgs] = positional;
if (!wasmPath || !inputPath || !batchArgs.length) {
  console.error("usage: node run_wasm.mjs DIR/model.wasm INPUT.f32 [-w WEIGHTS.bin] [-r REPEAT] BATCH...");
  process.exit(2);
}
const header = readFileSync(wasmPath.replace(/\.wasm$/, ".h"), "utf8");
const macro = (name) => {
  const m = header.match(new RegExp(`#define MODEL_${name} (\\d+)`));
  return m ? Number(m[1]) : 0;
};
const inRow = macro("INPUT_ROW_FLOATS"), outRow = macro("OUTPUT_ROW_FLOATS");
const block = macro("ROW_BLOCK");
const inputs = macro("INPUTS") || 1;
if (more.length !== inputs - 1) {
  console.error(`this model takes ${inputs - 1} -i files; got ${more.length}`);
  process.exit(2);
}
// floats of each input after the first at `batch` rows: batched ones per row, shared ones whole
const moreFloats = more.map((_, k) => {
  const i = k + 1;
  if (macro(`INPUT${i}_BATCHED`)) return (batch) => batch * macro(`INPUT${i}_ROW_FLOATS`);
  const whole = [...Array(macro(`INPUT${i}_RANK`)).keys()].reduce((n, d) => n * macro(`INPUT${i}_DIM${d}`), 1);
  return () => whole;
});
// a training export (MODEL_TRAINING) takes its dropout stream last: seed and offset, as uint64
const stream = macro("TRAINING") ? [BigInt.asUintN(64, BigInt(opts.s)), BigInt.asUintN(64, BigInt(opts.o))] : [];
const scratchBytes = (batch) =>
  (block ? Math.min(batch, block) : batch) * macro("SCRATCH_BYTES_PER_ROW") + macro("SCRATCH_BYTES_FIXED");

const { instance } = await WebAssembly.instantiate(readFileSync(wasmPath), {});
const { memory, __heap_base, model_forward, model_bind_weights } = instance.exports;
// 64-byte alignment in plain arithmetic: JS bitwise operators wrap to int32, negative past 2 GiB
const align64 = (n) => Math.ceil(n / 64) * 64;
let top = align64(Number(__heap_base.value));
function alloc(bytes) {  // a bump allocator in the module's memory (wasm32: up to 4 GiB)
  const at = top;
  top = align64(top + bytes);
  const need = top - memory.buffer.byteLength;
  if (need > 0) memory.grow(Math.ceil(need / 65536));
  return at;
}
function place(bytes) {
  const at = alloc(bytes.length);
  new Uint8Array(memory.buffer, at, bytes.length).set(bytes);
  return at;
}

const input = readFileSync(inputPath);
const rows = Math.floor(input.length / (4 * inRow));
const x = place(input);
const moreData = more.map((path) => readFileSync(path));
const morePtrs = moreData.map((bytes) => place(bytes));
if (opts.w) {
  const rc = model_bind_weights(place(readFileSync(opts.w)));
  if (rc !== 0) { console.error(`model_bind_weights refused ${opts.w}: ${rc}`); process.exit(3); }
}
for (const batch of batchArgs.map(Number)) {
  if (batch > rows) { console.error(`batch ${batch}: ${inputPath} holds ${rows} rows`); process.exit(2); }
  for (let k = 0; k < more.length; k++) {
    if (moreData[k].length / 4 < moreFloats[k](batch)) {
      console.error(`batch ${batch}: ${more[k]} holds ${moreData[k].length / 4} floats, input ${k + 1} needs ${moreFloats[k](batch)}`);
      process.exit(2);
    }
  }
  const y = alloc(4 * batch * outRow), scratch = alloc(scratchBytes(batch));
  const rc = model_forward(x, ...morePtrs, y, BigInt(batch), scratch, ...stream);
  if (rc !== 0) { console.log(`error ${rc} at batch ${batch}`); process.exit(1); }
  const bits = new Uint32Array(memory.buffer, y, batch * outRow);
  console.log(`out ${batch} ` + Array.from(bits, (b) => b.toString(16).padStart(8, "0")).join(" "));
  if (Number(opts.r) > 0 && batch === 1) {
    const n = Number(opts.r), start = process.hrtime.bigint();
    for (let i = 0; i < n; i++) model_forward(x, ...morePtrs, y, 1n, scratch, ...stream);
    console.log(`us_per_call ${(Number(process.hrtime.bigint() - start) / 1e3 / n).toFixed(3)}`);
  }
}
console.log("done");
