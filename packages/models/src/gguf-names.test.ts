import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { ModelError } from "./errors";
import { ggufArchitecture, ggufTensorName, isSkippedForGguf, permuteQkRows, qkPermuteHeads } from "./gguf-names";

describe("HF → llama.cpp tensor names", () => {
  it("maps every module of the supported architectures", () => {
    const cases: [string, string][] = [
      ["model.embed_tokens.weight", "token_embd.weight"],
      ["model.norm.weight", "output_norm.weight"],
      ["lm_head.weight", "output.weight"],
      ["model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight"],
      ["model.layers.11.self_attn.q_proj.weight", "blk.11.attn_q.weight"],
      ["model.layers.11.self_attn.q_proj.bias", "blk.11.attn_q.bias"],
      ["model.layers.2.self_attn.k_proj.weight", "blk.2.attn_k.weight"],
      ["model.layers.2.self_attn.v_proj.bias", "blk.2.attn_v.bias"],
      ["model.layers.2.self_attn.o_proj.weight", "blk.2.attn_output.weight"],
      ["model.layers.3.self_attn.q_norm.weight", "blk.3.attn_q_norm.weight"],
      ["model.layers.3.self_attn.k_norm.weight", "blk.3.attn_k_norm.weight"],
      ["model.layers.4.post_attention_layernorm.weight", "blk.4.ffn_norm.weight"],
      ["model.layers.4.mlp.gate_proj.weight", "blk.4.ffn_gate.weight"],
      ["model.layers.4.mlp.up_proj.weight", "blk.4.ffn_up.weight"],
      ["model.layers.4.mlp.down_proj.weight", "blk.4.ffn_down.weight"],
      // module paths without a suffix, as the LoRA export asks for them
      ["model.layers.5.self_attn.v_proj", "blk.5.attn_v"],
    ];
    for (const [hf, gguf] of cases) expect(ggufTensorName(hf), hf).toBe(gguf);
  });

  it("unknown names are a ModelError naming the tensor; rotary buffers are skipped", () => {
    for (const bad of ["model.layers.0.self_attn.rotary_emb.foo", "model.layers.x.mlp.up_proj.weight", "encoder.w"]) {
      try {
        ggufTensorName(bad);
        expect.unreachable(bad);
      } catch (e) {
        expect(e).toBeInstanceOf(ModelError);
        expect((e as ModelError).code).toBe("gguf_unmapped_tensor");
        expect((e as ModelError).message).toContain(bad);
      }
    }
    expect(isSkippedForGguf("model.layers.0.self_attn.rotary_emb.inv_freq")).toBe(true);
  });

  it("architectures: Llama and Mistral are llama.cpp's `llama`; Qwen2/3 their own", () => {
    expect(ggufArchitecture("LlamaForCausalLM")).toBe("llama");
    expect(ggufArchitecture("MistralForCausalLM")).toBe("llama");
    expect(ggufArchitecture("Qwen2ForCausalLM")).toBe("qwen2");
    expect(ggufArchitecture("Qwen3ForCausalLM")).toBe("qwen3");
  });

  it("q/k permutation: q over attention heads, k over kv heads, only for `llama`", () => {
    const h = { numHeads: 8, numKvHeads: 2 };
    expect(qkPermuteHeads("LlamaForCausalLM", "model.layers.0.self_attn.q_proj.weight", h)).toBe(8);
    expect(qkPermuteHeads("MistralForCausalLM", "model.layers.0.self_attn.k_proj.bias", h)).toBe(2);
    expect(qkPermuteHeads("LlamaForCausalLM", "model.layers.0.self_attn.v_proj.weight", h)).toBeNull();
    expect(qkPermuteHeads("Qwen2ForCausalLM", "model.layers.0.self_attn.q_proj.weight", h)).toBeNull();
    expect(qkPermuteHeads("LlamaForCausalLM", "model.layers.0.self_attn.k_proj", h)).toBe(2);
  });
});

describe("permuteQkRows", () => {
  it("is convert_hf_to_gguf's reshape(heads, 2, d/2, cols).swapaxes(1, 2) on a small case", () => {
    // 2 heads of dim 4, 1 column: rows [a0 a1 b0 b1 | c0 c1 d0 d1] → [a0 b0 a1 b1 | c0 d0 c1 d1]
    const x = Float32Array.from([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(Array.from(permuteQkRows(x, 8, 1, 2))).toEqual([0, 2, 1, 3, 4, 6, 5, 7]);
    const w = Float32Array.from({ length: 8 }, (_, i) => i); // 4 rows × 2 cols, one head
    expect(Array.from(permuteQkRows(w, 4, 2, 1))).toEqual([0, 1, 4, 5, 2, 3, 6, 7]);
  });

  /** rotate-half rope (transformers) on one head vector. */
  function ropeHalves(x: Float64Array, pos: number, theta: number): Float64Array {
    const d = x.length;
    const out = new Float64Array(d);
    for (let i = 0; i < d / 2; i++) {
      const a = pos * theta ** ((-2 * i) / d);
      out[i] = x[i] * Math.cos(a) - x[i + d / 2] * Math.sin(a);
      out[i + d / 2] = x[i + d / 2] * Math.cos(a) + x[i] * Math.sin(a);
    }
    return out;
  }
  /** Interleaved-pair rope (llama.cpp's LLAMA_ROPE_TYPE_NORM). */
  function ropePairs(x: Float64Array, pos: number, theta: number): Float64Array {
    const d = x.length;
    const out = new Float64Array(d);
    for (let i = 0; i < d / 2; i++) {
      const a = pos * theta ** ((-2 * i) / d);
      out[2 * i] = x[2 * i] * Math.cos(a) - x[2 * i + 1] * Math.sin(a);
      out[2 * i + 1] = x[2 * i + 1] * Math.cos(a) + x[2 * i] * Math.sin(a);
    }
    return out;
  }

  it("llama.cpp's pair rope on permuted rows = permuted transformers rope (so q·k scores agree)", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 4 }),
        fc.integer({ min: 1, max: 8 }).map((n) => 2 * n),
        fc.integer({ min: 0, max: 300 }),
        fc.array(fc.double({ min: -1, max: 1, noNaN: true }), { minLength: 64, maxLength: 64 }),
        (heads, d, pos, seed) => {
          const x = Float64Array.from({ length: heads * d }, (_, i) => seed[i % 64] + i / 100);
          const px = permuteQkRows(Float32Array.from(x), heads * d, 1, heads);
          for (let h = 0; h < heads; h++) {
            const hf = ropeHalves(Float64Array.from(Float32Array.from(x).subarray(h * d, (h + 1) * d)), pos, 10000);
            const cpp = ropePairs(Float64Array.from(px.subarray(h * d, (h + 1) * d)), pos, 10000);
            const expected = permuteQkRows(Float32Array.from(hf), d, 1, 1);
            for (let i = 0; i < d; i++) expect(cpp[i]).toBeCloseTo(expected[i], 5);
          }
        },
      ),
      { numRuns: 100 },
    );
  });

  it("is a bijection of rows and works on bf16 bit arrays; bad shapes are typed errors", () => {
    const n = 6 * 8;
    const bits = Uint16Array.from({ length: n * 3 }, (_, i) => i);
    const p = permuteQkRows(bits, n, 3, 6);
    expect(p).toBeInstanceOf(Uint16Array);
    expect([...p].sort((a, b) => a - b)).toEqual([...bits]);
    expect(() => permuteQkRows(new Float32Array(12), 12, 1, 4)).toThrow(ModelError); // head dim 3 is odd
  });
});
