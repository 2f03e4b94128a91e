/**
 * A minimal ONNX model writer for the benchmarks: hand-encoded protobuf, no
 * protobuf library and no Python.
 *
 * Only the fields the benchmarks need are written. Field numbers follow
 * onnx/onnx.proto3 (ModelProto, GraphProto, NodeProto, AttributeProto,
 * TensorProto, ValueInfoProto, TypeProto.Tensor, TensorShapeProto). Repeated
 * scalars are written unpacked (one tag per element), which every protobuf
 * parser accepts for proto2 and proto3 alike.
 *
 * Large initializers (hundreds of MB) are not copied while the message tree is
 * built: each message is a list of chunks plus its byte length, and the final
 * model is concatenated once.
 *
 * Building blocks are generic so later suites can build e.g. the com.microsoft
 * `MoE` op:
 *
 *   model({
 *     opsets: { '': 17, 'com.microsoft': 1 },
 *     graph: {
 *       nodes: [node('MoE', ['X', 'router_probs', 'W1', '', 'W2'], ['Y'], {
 *         k: 2, activation_type: 'swiglu', normalize_routing_weights: 1,
 *       }, { domain: 'com.microsoft' })],
 *       initializers: [floatTensor('W1', [E, 2 * F, H], w1), floatTensor('W2', [E, H, F], w2)],
 *       inputs: [valueInfo('X', ['M', H]), valueInfo('router_probs', ['M', E])],
 *       outputs: [valueInfo('Y', ['M', H])],
 *     },
 *   })
 *
 * (Attribute values: JS integers become INT, non-integers FLOAT, strings
 * STRING, arrays INTS/FLOATS/STRINGS; wrap with `attrFloat(1)` to force a
 * FLOAT whose value happens to be integral, `attrInt` / `attrInts` /
 * `attrFloats` likewise.)
 */
import { endianness } from 'node:os';

// ---------------------------------------------------------------------------
// protobuf wire encoding

/** An encoded protobuf fragment: chunks in order and their total length. */
export interface Bytes {
  parts: Uint8Array[];
  len: number;
}

const WT_VARINT = 0;
const WT_FIXED64 = 1;
const WT_LEN = 2;
const WT_FIXED32 = 5;

function bytesOf(parts: Uint8Array[]): Bytes {
  let len = 0;
  for (const p of parts) len += p.length;
  return { parts, len };
}

function concatBytes(list: Bytes[]): Bytes {
  const parts: Uint8Array[] = [];
  let len = 0;
  for (const b of list) {
    for (const p of b.parts) parts.push(p);
    len += b.len;
  }
  return { parts, len };
}

/**
 * ORT's `session.intra_op.allow_spinning` for every benchmark session: "0"
 * unless BENCH_ORT_SPIN says otherwise. With spinning on (ORT's default), its
 * idle intra-op workers keep spinning after each run and, on this 2-core
 * machine, take a core from whichever contender runs next: a 4.5 ms call of
 * ours measured 8.3 ms right after an ORT run (1×4096×4096, 2 threads), while
 * ORT's own times with spinning off were within noise of spinning on (5.06 vs
 * 4.49, 8.66 vs 8.30, 9.52 vs 9.66 ms at 1/16/128 tokens). Off, neither side
 * pays for the other's idle threads.
 */
export function ortSpin(): string {
  return process.env.BENCH_ORT_SPIN ?? '0';
}

/** Varint of a non-negative or negative int64 (negatives: 10-byte two's complement). */
export function varint(value: number | bigint): Uint8Array {
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) throw new RangeError(`varint: ${value} is not a safe integer`);
    if (value >= 0 && value < 2 ** 31) {
      const out: number[] = [];
      let v = value;
      while (v >= 0x80) {
        out.push((v & 0x7f) | 0x80);
        v >>>= 7;
      }
      out.push(v);
      return Uint8Array.from(out);
    }
    value = BigInt(value);
  }
  let v = BigInt.asUintN(64, value);
  const out: number[] = [];
  while (v >= 0x80n) {
    out.push(Number(v & 0x7fn) | 0x80);
    v >>= 7n;
  }
  out.push(Number(v));
  return Uint8Array.from(out);
}

function tag(field: number, wireType: number): Uint8Array {
  return varint((field << 3) | wireType);
}

/** Field `field` as a varint (int32, int64, enum, bool). */
export function fVarint(field: number, value: number | bigint): Bytes {
  return bytesOf([tag(field, WT_VARINT), varint(value)]);
}

/** Field `field` as a float (fixed32, little-endian). */
export function fFloat(field: number, value: number): Bytes {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setFloat32(0, value, true);
  return bytesOf([tag(field, WT_FIXED32), b]);
}

/** Field `field` as a double (fixed64, little-endian). */
export function fDouble(field: number, value: number): Bytes {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setFloat64(0, value, true);
  return bytesOf([tag(field, WT_FIXED64), b]);
}

/** Field `field` as length-delimited raw bytes (no copy of `data`). */
export function fBytes(field: number, data: Uint8Array): Bytes {
  return bytesOf([tag(field, WT_LEN), varint(data.length), data]);
}

/** Field `field` as a UTF-8 string. */
export function fString(field: number, s: string): Bytes {
  return fBytes(field, new TextEncoder().encode(s));
}

/** Field `field` as an embedded message. */
export function fMessage(field: number, msg: Bytes): Bytes {
  const head = [tag(field, WT_LEN), varint(msg.len)];
  return { parts: [...head, ...msg.parts], len: head[0].length + head[1].length + msg.len };
}

/** Flattens an encoded message into one buffer. */
export function finish(msg: Bytes): Uint8Array {
  const out = new Uint8Array(msg.len);
  let o = 0;
  for (const p of msg.parts) {
    out.set(p, o);
    o += p.length;
  }
  if (o !== msg.len) throw new Error(`onnx: internal length mismatch (${o} != ${msg.len})`);
  return out;
}

// ---------------------------------------------------------------------------
// ONNX enums

/** TensorProto.DataType values. */
export const DataType = {
  FLOAT: 1,
  UINT8: 2,
  INT8: 3,
  UINT16: 4,
  INT16: 5,
  INT32: 6,
  INT64: 7,
  STRING: 8,
  BOOL: 9,
  FLOAT16: 10,
  DOUBLE: 11,
  UINT32: 12,
  UINT64: 13,
  BFLOAT16: 16,
} as const;

/** AttributeProto.AttributeType values. */
const AttrType = { FLOAT: 1, INT: 2, STRING: 3, TENSOR: 4, FLOATS: 6, INTS: 7, STRINGS: 8 } as const;

// ---------------------------------------------------------------------------
// TensorProto

export interface TensorSpec {
  name: string;
  dims: readonly number[];
  dataType: number;
  /** Little-endian element bytes (TensorProto.raw_data). */
  raw: Uint8Array;
}

function assertLittleEndian(): void {
  if (endianness() !== 'LE') throw new Error('onnx: raw_data is written from host memory; big-endian hosts are not supported');
}

function rawView(a: ArrayBufferView): Uint8Array {
  assertLittleEndian();
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function checkDims(name: string, dims: readonly number[], n: number): void {
  let count = 1;
  for (const d of dims) {
    if (!Number.isInteger(d) || d < 0) throw new RangeError(`onnx: tensor '${name}' has a bad dim ${d}`);
    count *= d;
  }
  if (count !== n) throw new RangeError(`onnx: tensor '${name}' dims [${dims}] need ${count} elements, got ${n}`);
}

/** A float32 initializer (the data is referenced, not copied, until `finish`). */
export function floatTensor(name: string, dims: readonly number[], data: Float32Array): TensorSpec {
  checkDims(name, dims, data.length);
  return { name, dims, dataType: DataType.FLOAT, raw: rawView(data) };
}

/** An int64 initializer. */
export function int64Tensor(name: string, dims: readonly number[], data: BigInt64Array | readonly number[]): TensorSpec {
  const arr = data instanceof BigInt64Array ? data : BigInt64Array.from(data, (v) => BigInt(v));
  checkDims(name, dims, arr.length);
  return { name, dims, dataType: DataType.INT64, raw: rawView(arr) };
}

/** An int32 initializer. */
export function int32Tensor(name: string, dims: readonly number[], data: Int32Array | readonly number[]): TensorSpec {
  const arr = data instanceof Int32Array ? data : Int32Array.from(data);
  checkDims(name, dims, arr.length);
  return { name, dims, dataType: DataType.INT32, raw: rawView(arr) };
}

/** An initializer of any type given its little-endian bytes. */
export function rawTensor(name: string, dims: readonly number[], dataType: number, raw: Uint8Array): TensorSpec {
  return { name, dims, dataType, raw };
}

export function encodeTensor(t: TensorSpec): Bytes {
  // TensorProto: dims = 1, data_type = 2, name = 8, raw_data = 9
  return concatBytes([
    ...t.dims.map((d) => fVarint(1, d)),
    fVarint(2, t.dataType),
    fString(8, t.name),
    fBytes(9, t.raw),
  ]);
}

// ---------------------------------------------------------------------------
// ValueInfoProto

/** A dimension: a fixed size, or a symbolic name such as 'M'. */
export type Dim = number | string;

export interface ValueInfoSpec {
  name: string;
  elemType: number;
  /** Omit for a tensor of unknown rank. */
  shape?: readonly Dim[];
}

/** A graph input/output (float32 unless `elemType` says otherwise). */
export function valueInfo(name: string, shape?: readonly Dim[], elemType: number = DataType.FLOAT): ValueInfoSpec {
  return { name, elemType, shape };
}

export function encodeValueInfo(v: ValueInfoSpec): Bytes {
  // TensorShapeProto.Dimension: dim_value = 1, dim_param = 2
  // TensorShapeProto: dim = 1
  // TypeProto.Tensor: elem_type = 1, shape = 2
  // TypeProto: tensor_type = 1
  // ValueInfoProto: name = 1, type = 2
  const tensorFields: Bytes[] = [fVarint(1, v.elemType)];
  if (v.shape) {
    const dims = v.shape.map((d) => fMessage(1, typeof d === 'number' ? fVarint(1, d) : fString(2, d)));
    tensorFields.push(fMessage(2, concatBytes(dims)));
  }
  const typeProto = fMessage(1, concatBytes(tensorFields));
  return concatBytes([fString(1, v.name), fMessage(2, typeProto)]);
}

// ---------------------------------------------------------------------------
// AttributeProto / NodeProto

/** Forces an attribute's ONNX type where the JS value would be ambiguous. */
export interface TypedAttr {
  type: 'int' | 'float' | 'string' | 'ints' | 'floats' | 'strings' | 'tensor';
  value: number | string | readonly number[] | readonly string[] | TensorSpec;
}

export type AttrValue = number | bigint | string | readonly number[] | readonly string[] | TypedAttr;

export const attrInt = (v: number): TypedAttr => ({ type: 'int', value: v });
export const attrFloat = (v: number): TypedAttr => ({ type: 'float', value: v });
export const attrInts = (v: readonly number[]): TypedAttr => ({ type: 'ints', value: v });
export const attrFloats = (v: readonly number[]): TypedAttr => ({ type: 'floats', value: v });
export const attrTensor = (t: TensorSpec): TypedAttr => ({ type: 'tensor', value: t });

function isTyped(v: AttrValue): v is TypedAttr {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && 'type' in v;
}

export function encodeAttribute(name: string, value: AttrValue): Bytes {
  // AttributeProto: name = 1, f = 2, i = 3, s = 4, t = 5, floats = 7, ints = 8, strings = 9, type = 20
  let typed: TypedAttr;
  if (isTyped(value)) typed = value;
  else if (typeof value === 'bigint') typed = { type: 'int', value: Number(value) };
  else if (typeof value === 'number') typed = { type: Number.isInteger(value) ? 'int' : 'float', value };
  else if (typeof value === 'string') typed = { type: 'string', value };
  else if (Array.isArray(value) && value.every((x) => typeof x === 'string')) typed = { type: 'strings', value };
  else if (Array.isArray(value) && value.every((x) => typeof x === 'number')) {
    typed = { type: (value as number[]).every(Number.isInteger) ? 'ints' : 'floats', value };
  } else throw new TypeError(`onnx: attribute '${name}' has an unsupported value`);

  const fields: Bytes[] = [fString(1, name)];
  switch (typed.type) {
    case 'int':
      fields.push(fVarint(3, typed.value as number), fVarint(20, AttrType.INT));
      break;
    case 'float':
      fields.push(fFloat(2, typed.value as number), fVarint(20, AttrType.FLOAT));
      break;
    case 'string':
      fields.push(fString(4, typed.value as string), fVarint(20, AttrType.STRING));
      break;
    case 'ints':
      for (const x of typed.value as number[]) fields.push(fVarint(8, x));
      fields.push(fVarint(20, AttrType.INTS));
      break;
    case 'floats':
      for (const x of typed.value as number[]) fields.push(fFloat(7, x));
      fields.push(fVarint(20, AttrType.FLOATS));
      break;
    case 'strings':
      for (const x of typed.value as string[]) fields.push(fString(9, x));
      fields.push(fVarint(20, AttrType.STRINGS));
      break;
    case 'tensor':
      fields.push(fMessage(5, encodeTensor(typed.value as TensorSpec)), fVarint(20, AttrType.TENSOR));
      break;
  }
  return concatBytes(fields);
}

export interface NodeSpec {
  opType: string;
  inputs: readonly string[];
  outputs: readonly string[];
  attributes: Record<string, AttrValue>;
  domain: string;
  name: string;
}

/**
 * A node. Use '' for an omitted optional input (ONNX convention). Attribute
 * types are inferred from the JS value (see the file comment).
 */
export function node(
  opType: string,
  inputs: readonly string[],
  outputs: readonly string[],
  attributes: Record<string, AttrValue> = {},
  opts: { domain?: string; name?: string } = {},
): NodeSpec {
  return { opType, inputs, outputs, attributes, domain: opts.domain ?? '', name: opts.name ?? `${opType}_${outputs[0] ?? ''}` };
}

export function encodeNode(n: NodeSpec): Bytes {
  // NodeProto: input = 1, output = 2, name = 3, op_type = 4, attribute = 5, domain = 7
  const fields: Bytes[] = [
    ...n.inputs.map((s) => fString(1, s)),
    ...n.outputs.map((s) => fString(2, s)),
    fString(3, n.name),
    fString(4, n.opType),
    ...Object.entries(n.attributes).map(([k, v]) => fMessage(5, encodeAttribute(k, v))),
  ];
  if (n.domain) fields.push(fString(7, n.domain));
  return concatBytes(fields);
}

// ---------------------------------------------------------------------------
// GraphProto / ModelProto

export interface GraphSpec {
  name?: string;
  nodes: readonly NodeSpec[];
  initializers?: readonly TensorSpec[];
  inputs: readonly ValueInfoSpec[];
  outputs: readonly ValueInfoSpec[];
}

export function encodeGraph(g: GraphSpec): Bytes {
  // GraphProto: node = 1, name = 2, initializer = 5, input = 11, output = 12
  return concatBytes([
    ...g.nodes.map((n) => fMessage(1, encodeNode(n))),
    fString(2, g.name ?? 'graph'),
    ...(g.initializers ?? []).map((t) => fMessage(5, encodeTensor(t))),
    ...g.inputs.map((v) => fMessage(11, encodeValueInfo(v))),
    ...g.outputs.map((v) => fMessage(12, encodeValueInfo(v))),
  ]);
}

export interface ModelSpec {
  graph: GraphSpec;
  /** Opset per domain; '' is the default ai.onnx domain. Default { '': 17 }. */
  opsets?: Record<string, number>;
  /** Default 8 (ONNX 1.13+, read by every onnxruntime since 1.14). */
  irVersion?: number;
  producerName?: string;
}

/** Encodes a whole model into the bytes `InferenceSession.create` accepts. */
export function model(m: ModelSpec): Uint8Array {
  // ModelProto: ir_version = 1, producer_name = 2, graph = 7, opset_import = 8
  // OperatorSetIdProto: domain = 1, version = 2
  const opsets = m.opsets ?? { '': 17 };
  const fields: Bytes[] = [fVarint(1, m.irVersion ?? 8), fString(2, m.producerName ?? 'sparsekit-bench')];
  fields.push(fMessage(7, encodeGraph(m.graph)));
  for (const [domain, version] of Object.entries(opsets)) {
    fields.push(fMessage(8, concatBytes([fString(1, domain), fVarint(2, version)])));
  }
  return finish(concatBytes(fields));
}

// ---------------------------------------------------------------------------
// models used by the benchmarks

/** Transposes W: [N, K] (PyTorch layout) into B: [K, N]. */
export function transpose(W: Float32Array, N: number, K: number): Float32Array {
  if (W.length !== N * K) throw new RangeError(`transpose: W has ${W.length} elements, expected ${N}·${K}`);
  const B = new Float32Array(K * N);
  // blocked so neither side strides through memory one element per cache line
  const T = 64;
  for (let n0 = 0; n0 < N; n0 += T) {
    const n1 = Math.min(N, n0 + T);
    for (let k0 = 0; k0 < K; k0 += T) {
      const k1 = Math.min(K, k0 + T);
      for (let n = n0; n < n1; n++) {
        const row = n * K;
        for (let k = k0; k < k1; k++) B[k * N + n] = W[row + k];
      }
    }
  }
  return B;
}

export interface MatMulModelOptions {
  /** Rows of X: a fixed size or a symbolic name. Default 'M' (symbolic). */
  M?: Dim;
  /** If true, `B` is already [K, N] and is used as is (no transpose). */
  preTransposed?: boolean;
}

/**
 * `Y[M, N] = X[M, K] · B[K, N]` with B an initializer named 'B', so ORT can
 * prepack it once at session creation. Pass `W` in PyTorch layout [N, K] (the
 * layout `linear` takes); it is transposed here. Without `W`, B is zeros.
 * Inputs: 'X' [M, K]; output: 'Y' [M, N].
 */
export function matmulModel(K: number, N: number, W?: Float32Array, opts: MatMulModelOptions = {}): Uint8Array {
  const B = W ? (opts.preTransposed ? W : transpose(W, N, K)) : new Float32Array(K * N);
  const M = opts.M ?? 'M';
  return model({
    graph: {
      name: 'matmul',
      nodes: [node('MatMul', ['X', 'B'], ['Y'])],
      initializers: [floatTensor('B', [K, N], B)],
      inputs: [valueInfo('X', [M, K])],
      outputs: [valueInfo('Y', [M, N])],
    },
  });
}

// ---------------------------------------------------------------------------
// com.microsoft MoE (the anchor of the experts and moe suites)

/*
 * What onnxruntime-node 1.30's CPU `MoE` kernel expects for SwiGLU experts
 * (found by running a tiny model, E 4, hidden 6, inter 5, 7 tokens, k 2,
 * against a float64 JS reference of Mixtral's block; relative errors below):
 *
 * - `activation_type: 'swiglu'` needs `swiglu_fusion: 1` — with the default 0
 *   or with 2 (concatenated) session creation throws "CPU MoE only supports
 *   interleaved SwiGLU format. Please set swiglu_fusion=1." Inputs fc3_* are
 *   rejected ("FC3 is not implemented for CPU MoE"), so gate and up both live
 *   in fc1.
 * - fc1 is `[E, 2·inter, hidden]` with the gate and up projections
 *   interleaved ROW BY ROW: row 2f is gate row f (Mixtral w1, gate_proj), row
 *   2f+1 is up row f (w3, up_proj). Error 1.3e-7 with that order; 5.5e-1 with
 *   up first; 1.1–1.3 with either concatenated order ([gate; up] or [up; gate]).
 *   fc2 is `[E, hidden, inter]` (w2 / down_proj as stored).
 * - The activation is `gate·σ(α·gate)·(up + β)` with gate clamped above and
 *   up clamped to ±limit; the defaults α = 1 (activation_alpha), β = 0
 *   (activation_beta), limit = +∞ (swiglu_limit) give exactly Mixtral's
 *   `silu(gate)·up` (error 1.4e-7 even with gate values far above 7, so no
 *   clamp is applied by default). GPT-OSS's variant is α 1.702, β 1, limit 7
 *   (error 7.8e-1 against the Mixtral reference).
 * - router_probs are logits: ORT softmaxes them over all experts, takes the
 *   top k, and with normalize_routing_weights = 1 divides by their sum —
 *   Mixtral's routing (softmax, top-2, renormalised).
 */

/**
 * Interleaves gate and up stacks `[E, F, H]` into ORT's fused SwiGLU fc1
 * `[E, 2F, H]`: row 2f = gate row f, row 2f+1 = up row f (see above).
 */
export function interleaveGateUp(gate: Float32Array, up: Float32Array, E: number, F: number, H: number): Float32Array {
  const n = E * F * H;
  if (gate.length !== n || up.length !== n) throw new RangeError(`interleaveGateUp: gate/up need ${E}·${F}·${H} elements`);
  const out = new Float32Array(2 * n);
  for (let e = 0; e < E; e++)
    for (let f = 0; f < F; f++) {
      const src = (e * F + f) * H;
      const dst = (e * 2 * F + 2 * f) * H;
      out.set(gate.subarray(src, src + H), dst);
      out.set(up.subarray(src, src + H), dst + H);
    }
  return out;
}

export interface MoEModelOptions {
  /** Hidden size H. */
  hidden: number;
  /** Expert intermediate size F (fc1 has 2F rows: SwiGLU). */
  inter: number;
  experts: number;
  k: number;
  /** `[E, F, H]` gate (w1) and up (w3) stacks, checkpoint layout. */
  gate: Float32Array;
  up: Float32Array;
  /** `[E, H, F]` down (w2) stack. */
  down: Float32Array;
  /**
   * `[E, H]` router weight (PyTorch layout). Given: the model computes
   * `router_probs = X·Wrᵀ` itself (MatMul node) and takes only 'X'.
   * Omitted: the logits are the model's second input 'router_probs' [M, E].
   */
  router?: Float32Array;
  /** Default 1 (Mixtral). */
  normalizeRoutingWeights?: number;
}

/**
 * com.microsoft `MoE` with SwiGLU experts in the layout ORT's CPU kernel reads
 * (see above). Inputs 'X' [M, H] (and 'router_probs' [M, E] unless `router`
 * is given); output 'Y' [M, H].
 */
export function moeModel(o: MoEModelOptions): Uint8Array {
  const { hidden: H, inter: F, experts: E, k } = o;
  const W1 = interleaveGateUp(o.gate, o.up, E, F, H);
  const nodes: NodeSpec[] = [];
  const initializers: TensorSpec[] = [floatTensor('W1', [E, 2 * F, H], W1), floatTensor('W2', [E, H, F], o.down)];
  const inputs: ValueInfoSpec[] = [valueInfo('X', ['M', H])];
  if (o.router) {
    nodes.push(node('MatMul', ['X', 'Wr'], ['router_probs']));
    initializers.push(floatTensor('Wr', [H, E], transpose(o.router, E, H)));
  } else {
    inputs.push(valueInfo('router_probs', ['M', E]));
  }
  nodes.push(
    node(
      'MoE',
      ['X', 'router_probs', 'W1', '', 'W2'],
      ['Y'],
      { k, activation_type: 'swiglu', swiglu_fusion: 1, normalize_routing_weights: o.normalizeRoutingWeights ?? 1 },
      { domain: 'com.microsoft' },
    ),
  );
  return model({
    opsets: { '': 17, 'com.microsoft': 1 },
    graph: { name: 'moe', nodes, initializers, inputs, outputs: [valueInfo('Y', ['M', H])] },
  });
}
